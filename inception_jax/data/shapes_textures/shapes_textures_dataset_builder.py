"""TFDS builder of `shapes_textures`: a 10-class image problem generated locally, with no download.

Registered as "shapes_textures" when `inception_jax.data` is imported; read it like any TFDS dataset.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import ClassVar

import tensorflow_datasets as tfds

from inception_jax.data.shapes_textures import render

_SPLIT_INDEX = {"train": 0, "validation": 1}  # part of each image's random stream: splits never share an image
_CHUNK = 128  # images per worker task: large enough to amortise pickling, small enough for a smooth progress bar


@dataclasses.dataclass
class ShapesTexturesConfig(tfds.core.BuilderConfig):
    """Split sizes and resolution; the images of an index are the same in every config of the same size/seed."""

    image_size: int = 96
    train_examples: int = 16_000
    validation_examples: int = 2_000
    seed: int = 0
    jpeg_quality: int = 92
    difficulty: str = "standard"  # render.DIFFICULTIES; "easy" for minute-long CPU runs


def _render_chunk(args: tuple[int, int, int, int, int, int, str]) -> list[tuple[int, int, bytes]]:
    seed, split_index, start, stop, size, quality, difficulty = args
    out = []
    for index in range(start, stop):
        label = index % len(render.CLASS_NAMES)  # exactly balanced; tfds shuffles the order on disk
        image = render.render_image(render.example_rng(seed, split_index, index), label, size, difficulty)
        out.append((index, label, render.encode_jpeg(image, quality)))
    return out


def _jax_is_running() -> bool:
    jax_bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(jax_bridge is not None and jax_bridge.backends_are_initialized())


def _worker_pool_size() -> int:
    """Worker processes for generation: 0 = generate in this process (slower: docs/performance.md §6.3)."""
    # fork (not spawn) so that workers start in milliseconds and never re-import the caller's __main__; they only
    # run numpy/PIL. Not after JAX has started its thread pools (JAX warns that fork may deadlock), and not off
    # Linux (fork is unsafe on macOS).
    cpus = os.cpu_count() or 1
    if sys.platform != "linux" or cpus < 2 or _jax_is_running():
        return 0
    return min(2, cpus)


class Builder(tfds.core.GeneratorBasedBuilder):
    """shapes_textures: 10 balanced classes of 96x96 RGB images, generated locally (no network;
    how long: docs/performance.md §6.3).

    Classes: disc, ring, square, triangle, plus, star, crescent (solid shapes told apart by their outline) and
    stripes, checker, dots (a disc/square/hexagon region told apart by the pattern inside). Each image draws its
    nuisances independently: a smooth random background (a 2x2..4x4 random colour grid upsampled), 0-3 thin lines
    and 0-2 small quadrilaterals of clutter, an object colour at RGB distance >= 120 from the background under it
    (texture classes: a second colour >= 120 from the first), circumradius 22-45 % of the side, uniform position
    and rotation, Gaussian pixel noise with sigma uniform in [0, 10]. Every class is invariant to flips and
    rotations, so Inception augmentation never changes a label (but a small distorted-box crop can cut the object
    out: area_range=(0.25, 1.0) suits this dataset better than ImageNet's 0.05). Stored as JPEG (quality 92) in
    array_record: 68 MB for the default config.

    Measured on the validation split (`python -m inception_jax.data.shapes_textures.baselines`, 2 CPU cores):
      chance                                                       10.0 %
      linear, ridge least squares on standardised 32x32x3 pixels    13.6 %
      linear, softmax regression on the same pixels                 13.7 %
      small CNN, 4 strided 3x3 convs (32-64-128-128), 48x48 input   20 % after 1 epoch, 40 % after 4,
        Adam 1e-3, batch 128, flips                                  74.5 % after 10 epochs (5 min), still rising
    The tiny Inception-ResNet-v2 of the benchmarks (width 0.125, blocks (2, 2, 2), 96 px, Adam 1e-3, batch 64,
    bn_momentum 0.99) reaches 18-27 % after 90 s (~1 epoch, train loss 2.56 -> 1.8-2.0) with residual blocks; its
    plain twin (use_residual=False) is still at chance then (train loss 2.63 -> 2.31).

    Configs: "default" (16,000 train / 2,000 validation) and "tiny" (480 / 120, for tests). Image i of a split is
    the same in every config and on every machine: its random stream is seeded by (seed, split, i).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version: 10 classes, 96x96 JPEG, train/validation."}
    BUILDER_CONFIGS: ClassVar[list[ShapesTexturesConfig]] = [
        ShapesTexturesConfig(name="default", description="16,000 train / 2,000 validation images, 96x96."),
        ShapesTexturesConfig(name="tiny", description="480 train / 120 validation images, 96x96 (tests).",
                             train_examples=480, validation_examples=120),
        ShapesTexturesConfig(name="easy", description="16,000 / 2,000 images, 96x96, flat backgrounds, no clutter, "
                             "low noise: learnable in a few hundred CPU steps (the main job's ablation).",
                             difficulty="easy"),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=list(render.CLASS_NAMES)),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # nothing to download
        cfg = self.builder_config
        sizes = {"train": cfg.train_examples, "validation": cfg.validation_examples}
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        tasks = [(cfg.seed, _SPLIT_INDEX[split], start, min(start + _CHUNK, num_examples), cfg.image_size,
                  cfg.jpeg_quality, cfg.difficulty) for start in range(0, num_examples, _CHUNK)]
        workers = _worker_pool_size()
        if workers == 0 or len(tasks) == 1:
            chunks = map(_render_chunk, tasks)
            for chunk in chunks:
                yield from ((index, {"image": jpeg, "label": label}) for index, label, jpeg in chunk)
            return
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for chunk in pool.imap(_render_chunk, tasks):
                yield from ((index, {"image": jpeg, "label": label}) for index, label, jpeg in chunk)
