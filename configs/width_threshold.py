"""Is there a filter count past which unscaled residual networks die, at CPU scale? Unscaled (residual scale 1.0)
and scaled (0.1) networks at five C-stage filter counts and three learning rates, several seeds.

    python -m inception_jax.main --config=configs/width_threshold.py                  # 60 runs, CPU
    python -m inception_jax.main --config=configs/width_threshold.py:seeds=3,seed_offset=10

The network and recipe are the main job's (configs/ablation_scale.py: the paper's IR-v2 at width 0.125, blocks
(1, 2, 2), 75 px, shapes_textures/easy, SGD with momentum 0.9, constant learning rate, batch 32) for 300 steps;
deaths in the main job come in the first 100. The filter count is the C stage's width, set through Reduction-B's
conv branches as the main job does: 160 (the least the B stage's 144 leave room for) to 2560, doubling. The
paper saw residual Inception networks die past about 1000 filters unless their residuals were scaled by 0.1-0.3.
What it showed, and how long it took, is in README.md ("The width threshold"); its verdict table in docs/dying.md §5.
Arguments: seeds (default 2), seed_offset (default 0; seeds are seed_offset, seed_offset + 1, ...).
"""

import os

from inception_jax.config_files import config_module, parse_arg

ABLATION = config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ablation_scale.py"))

WIDTHS = (160, 320, 640, 1280, 2560)
LEARNING_RATES = (0.03, 0.05, 0.1)
SCALES = (1.0, 0.1)


def _args(arg):
    return parse_arg(arg, seeds=(2, int, 1), seed_offset=(0, int))


def get_config(arg: str | None = None):
    _args(arg)
    c = ABLATION.get_config("preset=cpu")
    # Pinned here, not inherited: the main job's recipe may change, this sweep's results were made with these.
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 0
    c.train.num_steps = 300
    c.cpu_threads = 0  # its table (docs/dying.md §5) was computed with every core per run, one run after the other
    c.train.probe_every_steps = 25
    c.train.eval_every_steps = 150
    c.train.checkpoint_every_steps = 300
    c.report.thresholds = (0.2, 0.3, 0.4)
    return c


def get_sweep(arg: str | None = None) -> list[tuple[str, dict]]:
    """Rows: learning rate x filter count x scale x seed, in that order (rows sharing a program run together)."""
    args = _args(arg)
    rows = []
    for lr in LEARNING_RATES:
        for width in WIDTHS:
            filters = ABLATION.deepest_width_filters(width, "cpu")
            for scale in SCALES:
                for seed in range(args.seed_offset, args.seed_offset + args.seeds):
                    overrides = {"train.learning_rate": lr, "model.residual_scale": scale, "seed": seed}
                    if filters:
                        overrides["model.filters"] = filters
                    rows.append((f"lr{lr:g}_w{width}_scale{scale:g}_seed{seed}", overrides))
    return rows
