"""What a family file declares about one network, and the spatial arithmetic shared by all of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from inception_jax.models.blocks import Branch

MIN_IMAGE_SIZE = 75  # docs/architecture.md §1.3: 74 fails at Reduction-B (grid 2 < 3)
MIN_IMAGE_SIZE_AUX = 107  # §1.3: the aux head needs the 17-grid to be >= 5


def min_image_size(aux_head: bool) -> int:
    """The smallest input side a network takes: the one rule every check of an image size uses."""
    return MIN_IMAGE_SIZE_AUX if aux_head else MIN_IMAGE_SIZE


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One network of the paper as data. Filter counts are a flat dotted table (`block_b.b1_1`, `stem.mixed4a.b0_0`,
    `reduction_a.b0_0`, ...); every residual-stream width is derived from the concatenations, never stored."""

    name: str
    stem: tuple
    block_a: tuple[Branch, ...]
    reduction_a: tuple[Branch, ...]
    block_b: tuple[Branch, ...]
    reduction_b: tuple[Branch, ...]
    block_c: tuple[Branch, ...]
    filters: Mapping[str, int]
    block_counts: tuple[int, int, int]
    residual: bool  # Inception-ResNet family (the residual knobs apply)
    residual_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    final_block_linear: bool = False  # released IR-v2: the last C block has scale 1.0 and no ReLU (§1.6)
    final_conv: bool = False  # released IR-v2: CBR(1536, 1x1) before pooling
    has_aux_head: bool = False  # slim defines one for Inception-v4 and released IR-v2 only
    scale_range_note: str = ""


def spatial_sizes(size: int) -> tuple[int, int, int, int, int, int, int]:
    """The grid pipeline of §1.3: input -> s1, s2, s3, s4, the "35" grid, the "17" grid, the "8" grid."""
    s1 = (size - 3) // 2 + 1
    s2 = s1 - 2
    s3 = (s2 - 3) // 2 + 1
    s4 = s3 - 2
    s5 = (s4 - 3) // 2 + 1
    s6 = (s5 - 3) // 2 + 1
    s7 = (s6 - 3) // 2 + 1
    return s1, s2, s3, s4, s5, s6, s7


def grid_17(image_size: int) -> int:
    """The side of the "17" grid (the B blocks' and the aux head's input) for an input of `image_size`."""
    return spatial_sizes(image_size)[5]


def aux_kernel_size(image_size: int) -> int:
    """slim's aux conv kernel is the pooled 17-grid's size: (grid17 - 5) // 3 + 1 (5 at 299, 1 at 107)."""
    return (grid_17(image_size) - 5) // 3 + 1
