"""TFDS builders shipped inside the package; importing this module registers them with tfds by name."""

from inception_jax.datasets import shapes_textures

# Datasets this package can generate on demand: the pipeline prepares them itself when a data dir lacks them.
EMBEDDED_DATASETS: frozenset[str] = frozenset({"shapes_textures"})

__all__ = ["EMBEDDED_DATASETS", "shapes_textures"]
