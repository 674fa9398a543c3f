"""The embedded `shapes_textures` dataset (importing this package registers its TFDS builder)."""

from inception_jax.data.shapes_textures.render import CLASS_NAMES
from inception_jax.data.shapes_textures.shapes_textures_dataset_builder import Builder, ShapesTexturesConfig

__all__ = ["CLASS_NAMES", "Builder", "ShapesTexturesConfig"]
