"""One run with the paper's recipe (docs/architecture.md §6.3) on the embedded dataset, at a CPU-friendly size.

    python -m inception_jax.main --config=configs/default.py --workdir=/tmp/default
    python -m inception_jax.main --config=configs/default.py:tiny --workdir=/tmp/tiny     # tests: seconds

Trains inception_resnet_v2_paper at width 0.125, blocks (2, 2, 2), 96 px, batch 32, 300 steps on
shapes_textures: about 2 minutes on 2 CPU cores once the dataset is prepared.
`tiny` is 20 steps of a 75 px width-0.0625 network, batch 8 (about a minute, mostly compiling).
Override anything with --config.key=value, e.g. --config.model.residual_scale=0.1.
"""

from inception_jax.config_files import parse_arg
from inception_jax.configuration import base_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, size=("default", ("default", "tiny")))
    c = base_config()
    c.model.name = "inception_resnet_v2_paper"
    c.model.width_multiplier = 0.125
    c.model.block_counts = (2, 2, 2)
    c.model.bn_momentum = 0.99  # short runs: the paper's 0.9997 never lets running statistics converge (§1.2)
    c.data.image_size = 96
    c.train.batch_size = 32
    c.train.num_steps = 300
    c.train.eval_every_steps = 100
    c.train.ema_decay = 0.99
    if args.size == "tiny":
        c.model.width_multiplier = 0.0625
        c.data.image_size = 75
        c.train.batch_size = 8
        c.train.num_steps = 20
        c.train.eval_every_steps = 10
        c.train.probe_every_steps = 10
        c.train.checkpoint_every_steps = 10
        c.train.eval_batch_size = 64
    return c
