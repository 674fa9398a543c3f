"""Pretrained-weight converters into our networks (docs/architecture.md §8): timm state dicts and Keras
InceptionResNetV2. They return an `ImportedModel` (options + variables in the requested layout); `model_io.save_model`
turns it into an exported model directory. Heavy frameworks (torch, keras) are imported only when used."""

from inception_jax.pretrained.importers.common import ImportedModel, ImportMismatchError, spec_modules
from inception_jax.pretrained.importers.keras import import_keras, keras_file_classes, load_keras_model
from inception_jax.pretrained.importers.timm import TIMM_MODELS, import_timm, load_timm_state_dict, timm_unit_map

__all__ = [
    "TIMM_MODELS", "ImportMismatchError", "ImportedModel", "import_keras", "import_timm", "keras_file_classes",
    "load_keras_model", "load_timm_state_dict", "spec_modules", "timm_unit_map",
]
