"""Inception-v4 and Inception-ResNet networks in Flax NNX (docs/architecture.md is the ground truth)."""

from inception_jax.models.architecture import MIN_IMAGE_SIZE, MIN_IMAGE_SIZE_AUX, grid_17, spatial_sizes
from inception_jax.models.layout import convert_layout, count_params
from inception_jax.models.network import (
    InceptionNet,
    ModelOutput,
    block_values,
    build_model,
    create_model,
    stage_widths,
)
from inception_jax.models.options import KNOB_DEFAULTS, VALUE_KNOBS, ModelOptions, model_options, program_options
from inception_jax.models.registry import MODEL_NAMES, get_architecture

__all__ = [
    "KNOB_DEFAULTS", "MIN_IMAGE_SIZE", "MIN_IMAGE_SIZE_AUX", "MODEL_NAMES", "VALUE_KNOBS", "InceptionNet",
    "ModelOptions", "ModelOutput", "block_values", "build_model", "convert_layout", "count_params", "create_model",
    "get_architecture", "grid_17", "model_options", "program_options", "spatial_sizes", "stage_widths",
]
