"""Model ids -> architectures: the table every constructor and check looks a model id up in."""

from __future__ import annotations

from inception_jax.models.architecture import Architecture
from inception_jax.models.inception_resnet_v1 import INCEPTION_RESNET_V1
from inception_jax.models.inception_resnet_v2 import INCEPTION_RESNET_V2, INCEPTION_RESNET_V2_PAPER
from inception_jax.models.inception_v4 import INCEPTION_V4
from inception_jax.validation import did_you_mean

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (INCEPTION_V4, INCEPTION_RESNET_V1, INCEPTION_RESNET_V2_PAPER, INCEPTION_RESNET_V2)
}
MODEL_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model id {name!r}{did_you_mean(name, MODEL_NAMES, n=2)}; valid ids: "
                         f"{list(MODEL_NAMES)}")
    return ARCHITECTURES[name]
