"""Inception-ResNet-v2 in its two variants (docs/architecture.md §4).

* `inception_resnet_v2_paper` (§4.1): the paper's figures, widths derived from the concatenations (B 1152,
  C 2144; the figure labels 1154 / 2048 are typos, §4.1.1), v4 stem, 5 / 10 / 5 blocks, every block with ReLU.
* `inception_resnet_v2` (§4.2): the released slim / timm / Keras network: plain stem + Mixed_5b, 10 / 20 / 10
  blocks, the last C block linear with scale 1.0, then `final_conv` CBR(1536, 1x1).
The residual-block branches, Reduction-A's (k, l, m, n) and Reduction-B are identical in both (§4.3).
"""

from inception_jax.models.architecture import Architecture
from inception_jax.models.blocks import AvgPool, MaxPool, MixedSpec, conv
from inception_jax.models.inception_v4 import REDUCTION_A, V4_STEM, V4_STEM_FILTERS

BLOCK35 = (  # IR-A (§4.1.3 / §4.2.3)
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", 3)),
    (conv("b2_0", 1), conv("b2_1", 3), conv("b2_2", 3)),
)
BLOCK17 = (  # IR-B
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", (1, 7)), conv("b1_2", (7, 1))),
)
REDUCTION_B = (  # Mixed_7a
    (conv("b0_0", 1), conv("b0_1", 3, 2, "VALID")),
    (conv("b1_0", 1), conv("b1_1", 3, 2, "VALID")),
    (conv("b2_0", 1), conv("b2_1", 3), conv("b2_2", 3, 2, "VALID")),
    (MaxPool(),),
)
BLOCK8 = (  # IR-C
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", (1, 3)), conv("b1_2", (3, 1))),
)
BLOCK_FILTERS = {
    "block_a.b0_0": 32, "block_a.b1_0": 32, "block_a.b1_1": 32,
    "block_a.b2_0": 32, "block_a.b2_1": 48, "block_a.b2_2": 64,
    "reduction_a.b0_0": 384, "reduction_a.b1_0": 256, "reduction_a.b1_1": 256, "reduction_a.b1_2": 384,
    "block_b.b0_0": 192, "block_b.b1_0": 128, "block_b.b1_1": 160, "block_b.b1_2": 192,
    "reduction_b.b0_0": 256, "reduction_b.b0_1": 384, "reduction_b.b1_0": 256, "reduction_b.b1_1": 288,
    "reduction_b.b2_0": 256, "reduction_b.b2_1": 288, "reduction_b.b2_2": 320,
    "block_c.b0_0": 192, "block_c.b1_0": 192, "block_c.b1_1": 224, "block_c.b1_2": 256,
}

INCEPTION_RESNET_V2_PAPER = Architecture(
    name="inception_resnet_v2_paper",
    stem=V4_STEM,
    block_a=BLOCK35,
    reduction_a=REDUCTION_A,
    block_b=BLOCK17,
    reduction_b=REDUCTION_B,
    block_c=BLOCK8,
    filters={**V4_STEM_FILTERS, **BLOCK_FILTERS},
    block_counts=(5, 10, 5),
    residual=True,
    residual_scale=(0.17, 0.10, 0.20),
)

RELEASED_STEM = (  # §4.2.1 rows 1-8
    conv("conv1a", 3, 2, "VALID"),
    conv("conv2a", 3, 1, "VALID"),
    conv("conv2b", 3),
    MaxPool(),
    conv("conv3b", 1, 1, "VALID"),
    conv("conv4a", 3, 1, "VALID"),
    MaxPool(),
    MixedSpec("mixed5b", (  # §4.2.2, an Inception-v3-style module
        (conv("b0_0", 1),),
        (conv("b1_0", 1), conv("b1_1", 5)),
        (conv("b2_0", 1), conv("b2_1", 3), conv("b2_2", 3)),
        (AvgPool(), conv("b3_1", 1)),
    )),
)

INCEPTION_RESNET_V2 = Architecture(
    name="inception_resnet_v2",
    stem=RELEASED_STEM,
    block_a=BLOCK35,
    reduction_a=REDUCTION_A,
    block_b=BLOCK17,
    reduction_b=REDUCTION_B,
    block_c=BLOCK8,
    filters={
        "stem.conv1a": 32, "stem.conv2a": 32, "stem.conv2b": 64, "stem.conv3b": 80, "stem.conv4a": 192,
        "stem.mixed5b.b0_0": 96, "stem.mixed5b.b1_0": 48, "stem.mixed5b.b1_1": 64,
        "stem.mixed5b.b2_0": 64, "stem.mixed5b.b2_1": 96, "stem.mixed5b.b2_2": 96, "stem.mixed5b.b3_1": 64,
        **BLOCK_FILTERS,
        "final_conv": 1536,
        "aux.conv1": 128, "aux.conv2": 768,
    },
    block_counts=(10, 20, 10),
    residual=True,
    residual_scale=(0.17, 0.10, 0.20),
    final_block_linear=True,
    final_conv=True,
    has_aux_head=True,
)
