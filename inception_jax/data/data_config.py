"""DataConfig: what a run reads and how it preprocesses it, validated on construction; the one home of the data
defaults (configuration.base_config copies them into `config.data`). Light to import: no TFDS, no grain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from inception_jax.data import eval_crops, preprocessing
from inception_jax.models.architecture import MIN_IMAGE_SIZE


class DataError(ValueError):
    """Bad dataset, split, size or record; the message names the value, where it came from and what is valid."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to preprocess it. Every field is validated on construction."""

    name: str = "shapes_textures"  # TFDS name ('name/config:version' allowed); the embedded one is generated
    data_dir: str | None = None  # None -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    train_split: str = "train"  # TFDS split spec; slices such as 'train[:90%]' work
    eval_split: str = "validation"
    image_size: int = 299  # model input side (square); >= 75, the smallest input the networks accept
    augment: str = "inception"  # "inception" (distorted box crop + flip) | "flip" | "none"
    color_distort: bool = False  # slim distort_color (brightness, saturation, hue, contrast)
    area_range: tuple[float, float] = (0.05, 1.0)  # distorted box: fraction of the image area
    aspect_range: tuple[float, float] = (0.75, 4 / 3)  # distorted box: width / height
    eval_crops: str = "single"  # "single" | "12" | "144" (docs/architecture.md §6.4)
    central_fraction: float = 0.875  # single crop: fraction of each side kept; 12 crops: S / fraction scale
    num_threads: int = 2  # threads preparing batches in the background
    prefetch_batches: int = 4  # batches prepared ahead of the consumer
    cache_mb: int = 1024  # decoded images kept for later reads in this process, per split (image_cache); 0: off

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> DataError:
            return DataError(f"DataConfig.{field}={getattr(self, field)!r} (config key data.{field}) {why}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", "must be a TFDS dataset name such as 'shapes_textures', 'imagenet2012', 'cifar10'")
        for field in ("train_split", "eval_split"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise bad(field, "must be a split name such as 'train' or 'validation'")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool):
            raise bad("image_size", "must be an int")
        if self.image_size < MIN_IMAGE_SIZE:
            raise bad("image_size", f"is below {MIN_IMAGE_SIZE}, the smallest input the Inception networks accept "
                                    f"(docs/architecture.md §1.3)")
        if self.augment not in preprocessing.AUGMENTATIONS:
            raise bad("augment", f"is not one of {list(preprocessing.AUGMENTATIONS)}")
        if self.eval_crops not in eval_crops.PROTOCOLS:
            raise bad("eval_crops", f"is not one of {list(eval_crops.PROTOCOLS)}")
        for field, low, high in (("area_range", 0.0, 1.0), ("aspect_range", 0.0, float("inf"))):
            value = getattr(self, field)
            if (not isinstance(value, tuple) or len(value) != 2
                    or not all(isinstance(v, int | float) for v in value)
                    or not low < value[0] <= value[1] <= high):
                raise bad(field, f"must be (min, max) with {low} < min <= max <= {high}")
        if not isinstance(self.central_fraction, int | float) or not 0.0 < self.central_fraction <= 1.0:
            raise bad("central_fraction", "must be in (0, 1]")
        for field, low in (("num_threads", 1), ("prefetch_batches", 1), ("cache_mb", 0)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise bad(field, f"must be an int >= {low}")

    @classmethod
    def from_config(cls, cfg: Any) -> DataConfig:
        """From an ml_collections ConfigDict (or mapping): `config.data`, or a whole config that has `data`."""
        values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        fields = {f.name for f in dataclasses.fields(cls)}
        if "data" in values and isinstance(values["data"], Mapping) and not fields & set(values):
            values = dict(values["data"])
        unknown = sorted(set(values) - fields)
        if unknown:
            raise DataError(f"unknown config key(s) {['data.' + k for k in unknown]}; DataConfig fields: "
                            f"{sorted(fields)}")
        for key in ("area_range", "aspect_range"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def num_eval_crops(self) -> int:
        return eval_crops.NUM_CROPS[self.eval_crops]
