"""Inception-ResNet-v1, the paper's version (docs/architecture.md §3; paper Figs 10-15, Table 1).

Not released by Google; facenet's variant (§3.9) differs in the head and an extra linear C block.
Default residual scales A 0.17, B 0.10, C 0.20 (slim/facenet constants; the paper gives 0.1-0.3).
"""

from inception_jax.models.architecture import Architecture
from inception_jax.models.blocks import MaxPool, conv
from inception_jax.models.inception_v4 import REDUCTION_A

STEM = (  # §3.2
    conv("conv1a", 3, 2, "VALID"),
    conv("conv2a", 3, 1, "VALID"),
    conv("conv2b", 3),
    MaxPool(),
    conv("conv3b", 1, 1, "VALID"),
    conv("conv4a", 3, 1, "VALID"),
    conv("conv4b", 3, 2, "VALID"),
)
BLOCK_A = (  # §3.3, C = 256
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", 3)),
    (conv("b2_0", 1), conv("b2_1", 3), conv("b2_2", 3)),
)
BLOCK_B = (  # §3.5, C = 896
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", (1, 7)), conv("b1_2", (7, 1))),
)
REDUCTION_B = (  # §3.6
    (conv("b0_0", 1), conv("b0_1", 3, 2, "VALID")),
    (conv("b1_0", 1), conv("b1_1", 3, 2, "VALID")),
    (conv("b2_0", 1), conv("b2_1", 3), conv("b2_2", 3, 2, "VALID")),
    (MaxPool(),),
)
BLOCK_C = (  # §3.7, C = 1792
    (conv("b0_0", 1),),
    (conv("b1_0", 1), conv("b1_1", (1, 3)), conv("b1_2", (3, 1))),
)

INCEPTION_RESNET_V1 = Architecture(
    name="inception_resnet_v1",
    stem=STEM,
    block_a=BLOCK_A,
    reduction_a=REDUCTION_A,
    block_b=BLOCK_B,
    reduction_b=REDUCTION_B,
    block_c=BLOCK_C,
    filters={
        "stem.conv1a": 32, "stem.conv2a": 32, "stem.conv2b": 64, "stem.conv3b": 80, "stem.conv4a": 192,
        "stem.conv4b": 256,
        "block_a.b0_0": 32, "block_a.b1_0": 32, "block_a.b1_1": 32,
        "block_a.b2_0": 32, "block_a.b2_1": 32, "block_a.b2_2": 32,
        "reduction_a.b0_0": 384, "reduction_a.b1_0": 192, "reduction_a.b1_1": 192, "reduction_a.b1_2": 256,
        "block_b.b0_0": 128, "block_b.b1_0": 128, "block_b.b1_1": 128, "block_b.b1_2": 128,
        "reduction_b.b0_0": 256, "reduction_b.b0_1": 384, "reduction_b.b1_0": 256, "reduction_b.b1_1": 256,
        "reduction_b.b2_0": 256, "reduction_b.b2_1": 256, "reduction_b.b2_2": 256,
        "block_c.b0_0": 192, "block_c.b1_0": 192, "block_c.b1_1": 192, "block_c.b1_2": 192,
    },
    block_counts=(5, 10, 5),
    residual=True,
    residual_scale=(0.17, 0.10, 0.20),
)
