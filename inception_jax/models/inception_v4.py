"""Inception-v4 (docs/architecture.md §2; paper Figs 3-9, slim `inception_v4.py`, timm `inception_v4`).

Kernel order of factorized convs is slim's (§2.9): `(1, 7)` is kh = 1, kw = 7.
"""

from inception_jax.models.architecture import Architecture
from inception_jax.models.blocks import AvgPool, Fork, MaxPool, MixedSpec, conv

# §2.2, shared with the paper's IR-v2 (§4.1). Mixed_3a: pool first; Mixed_5a: conv first.
V4_STEM = (
    conv("conv1a", 3, 2, "VALID"),
    conv("conv2a", 3, 1, "VALID"),
    conv("conv2b", 3),
    MixedSpec("mixed3a", ((MaxPool(),), (conv("b1_0", 3, 2, "VALID"),))),
    MixedSpec("mixed4a", (
        (conv("b0_0", 1), conv("b0_1", 3, 1, "VALID")),
        (conv("b1_0", 1), conv("b1_1", (1, 7)), conv("b1_2", (7, 1)), conv("b1_3", 3, 1, "VALID")),
    )),
    MixedSpec("mixed5a", ((conv("b0_0", 3, 2, "VALID"),), (MaxPool(),))),
)
V4_STEM_FILTERS = {
    "stem.conv1a": 32, "stem.conv2a": 32, "stem.conv2b": 64, "stem.mixed3a.b1_0": 96,
    "stem.mixed4a.b0_0": 64, "stem.mixed4a.b0_1": 96,
    "stem.mixed4a.b1_0": 64, "stem.mixed4a.b1_1": 64, "stem.mixed4a.b1_2": 64, "stem.mixed4a.b1_3": 96,
    "stem.mixed5a.b0_0": 192,
}

# §2.4, generic over (k, l, m, n) = (b1_0, b1_1, b1_2, b0_0).
REDUCTION_A = (
    (conv("b0_0", 3, 2, "VALID"),),
    (conv("b1_0", 1), conv("b1_1", 3), conv("b1_2", 3, 2, "VALID")),
    (MaxPool(),),
)

BLOCK_A = (  # §2.3
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", 3)),
    (conv("b2_0", 1), conv("b2_1", 3), conv("b2_2", 3)),
    (AvgPool(), conv("b3_1", 1)),
)
BLOCK_B = (  # §2.5
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", (1, 7)), conv("b1_2", (7, 1))),
    (conv("b2_0", 1), conv("b2_1", (7, 1)), conv("b2_2", (1, 7)), conv("b2_3", (7, 1)), conv("b2_4", (1, 7))),
    (AvgPool(), conv("b3_1", 1)),
)
REDUCTION_B = (  # §2.6
    (conv("b0_0", 1), conv("b0_1", 3, 2, "VALID")),
    (conv("b1_0", 1), conv("b1_1", (1, 7)), conv("b1_2", (7, 1)), conv("b1_3", 3, 2, "VALID")),
    (MaxPool(),),
)
BLOCK_C = (  # §2.7: flat concat order b0, b1_1a, b1_1b, b2_3a, b2_3b, b3_1
    (conv("b0_0", 1),),
    (conv("b1_0", 1), Fork((conv("b1_1a", (1, 3)), conv("b1_1b", (3, 1))))),
    (conv("b2_0", 1), conv("b2_1", (3, 1)), conv("b2_2", (1, 3)),
     Fork((conv("b2_3a", (1, 3)), conv("b2_3b", (3, 1))))),
    (AvgPool(), conv("b3_1", 1)),
)

INCEPTION_V4 = Architecture(
    name="inception_v4",
    stem=V4_STEM,
    block_a=BLOCK_A,
    reduction_a=REDUCTION_A,
    block_b=BLOCK_B,
    reduction_b=REDUCTION_B,
    block_c=BLOCK_C,
    filters={
        **V4_STEM_FILTERS,
        "block_a.b0_0": 96, "block_a.b1_0": 64, "block_a.b1_1": 96,
        "block_a.b2_0": 64, "block_a.b2_1": 96, "block_a.b2_2": 96, "block_a.b3_1": 96,
        "reduction_a.b0_0": 384, "reduction_a.b1_0": 192, "reduction_a.b1_1": 224, "reduction_a.b1_2": 256,
        "block_b.b0_0": 384, "block_b.b1_0": 192, "block_b.b1_1": 224, "block_b.b1_2": 256,
        "block_b.b2_0": 192, "block_b.b2_1": 192, "block_b.b2_2": 224, "block_b.b2_3": 224, "block_b.b2_4": 256,
        "block_b.b3_1": 128,
        "reduction_b.b0_0": 192, "reduction_b.b0_1": 192,
        "reduction_b.b1_0": 256, "reduction_b.b1_1": 256, "reduction_b.b1_2": 320, "reduction_b.b1_3": 320,
        "block_c.b0_0": 256, "block_c.b1_0": 384, "block_c.b1_1a": 256, "block_c.b1_1b": 256,
        "block_c.b2_0": 384, "block_c.b2_1": 448, "block_c.b2_2": 512, "block_c.b2_3a": 256, "block_c.b2_3b": 256,
        "block_c.b3_1": 256,
        "aux.conv1": 128, "aux.conv2": 768,
    },
    block_counts=(4, 7, 3),
    residual=False,
    has_aux_head=True,
)
