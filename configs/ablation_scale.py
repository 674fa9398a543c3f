"""The main job: residual vs plain, and the residual-scaling constant, across filter counts.

    python -m inception_jax.main --config=configs/ablation_scale.py                        # the default: CPU
    python -m inception_jax.main --config=configs/ablation_scale.py:seed_offset=10         # other seeds
    python -m inception_jax.main --config=configs/ablation_scale.py:preset=cpu_long       # every variant
    python -m inception_jax.main --config=configs/ablation_scale.py:preset=gpu            # one GPU, imagenette
    python -m inception_jax.main --config=configs/ablation_scale.py:preset=imagenet       # paper scale, a pod
    python -m inception_jax.main --config=configs/ablation_scale.py --row=w640_scale1_seed0  # one row
    python -m inception_jax.main --config=configs/ablation_scale.py --print_commands       # every row's command
    python -m inception_jax.main --config=configs/ablation_scale.py --export_csv=my.csv    # edit, then --rows_csv=

Every run is the real Inception-ResNet-v2 of the paper (its blocks, reductions and stem) at reduced width, depth
and image size. The swept "filter count" is the width of the deepest residual stage (the C blocks, where the
paper saw residual nets die once it passed 1000): the branches stay narrow and Reduction-B's three conv
branches are widened, so the residual stream, every up-projection and the pre-pool layer get wider.

Presets: `cpu` (the default; filter counts 160 and 640; plain, unscaled and scale 0.3; 5 seeds; 450 steps;
30 runs, two at a time on one core each, in under 10 minutes on 2 cores, measured in README.md "The main job"),
`cpu_long` (160 and 1280 filters: the narrowest and past the paper's 1000; plain, scale 1.0, 0.3, 0.1 and a
learnable scale from 1.0; 3 seeds; the default's recipe), `gpu` and `imagenet` (the paper's recipe at 299 px),
`tiny` (tests). At this learning rate unscaled networks are damaged or die at both CPU-scale widths;
configs/width_threshold.py maps where the threshold sits at lower, constant ones.
Arguments: preset, seeds (an integer >= 1; default per preset), seed_offset (the first seed; default 0).
"""

import functools

from inception_jax.config_files import parse_arg
from inception_jax.configuration import base_config, model_knobs
from inception_jax.models import model_options, stage_widths

MODEL = "inception_resnet_v2_paper"
PRESETS = ("cpu", "cpu_long", "gpu", "imagenet", "tiny")


def _args(arg):
    # seeds: None takes the preset's count.
    return parse_arg(arg, preset=("cpu", PRESETS), seeds=(None, int, 1), seed_offset=(0, int))


def get_config(arg: str | None = None):
    args = _args(arg)
    c = base_config()
    c.model.name = MODEL
    c.model.width_multiplier = 0.125
    c.model.block_counts = (1, 2, 2)
    c.model.bn_momentum = 0.95  # short runs: running statistics must follow the weights (docs/architecture.md §1.2)
    c.model.dropout_rate = 0.0
    c.data.name = "shapes_textures/easy"  # learnable in a few hundred CPU steps (the standard config is not)
    c.data.augment = "flip"
    c.data.image_size = 75  # the smallest input the networks take: grids 7 / 3 / 1
    c.data.eval_split = "validation[:500]"  # evaluated often: convergence curves at a CPU price
    # Precise BN: statistics recomputed from 8 training batches before each evaluation. The running averages lag
    # weights that move this fast (docs/dying.md §5, "The main job's budget").
    c.train.precise_bn_batches = 8
    c.report.thresholds = (0.2, 0.3, 0.4, 0.5, 0.6)
    # The effect shows with plain SGD-momentum and no gradient clipping (the paper's clipping hides it). A short
    # warm-up to a high rate, then a cosine decay: scale 0.3 learns in 450 steps in most seeds while unscaled
    # networks are still damaged or killed by the high rate (docs/dying.md §5, "The 5-seed default").
    c.train.optimizer = "sgd"
    c.train.momentum = 0.9
    c.train.learning_rate = 0.1
    c.train.warmup_steps = 50
    c.train.lr_schedule = "cosine"
    c.train.weight_decay = 0.0
    c.train.grad_clip_norm = 0.0
    c.train.label_smoothing = 0.0
    c.train.batch_size = 32
    # 450 steps: what 30 runs (5 seeds a cell) fit in 10 minutes two at a time; one seed does not pin one outcome,
    # hence 5 seeds and claims with intervals (docs/dying.md §5, "The 5-seed default").
    c.train.num_steps = 450
    c.train.ema_decay = 0.0
    c.train.eval_batch_size = 500
    c.train.eval_every_steps = 75  # 6 evaluations: the curves' points, each with the statistics pass
    c.train.checkpoint_every_steps = 300
    c.train.probe_every_steps = 100
    c.train.log_dense_steps = 1000
    # One XLA:CPU thread per run: a row's numbers are then the same alone, beside other rows or resumed, and rows
    # train side by side, one per core: more runs per minute (docs/performance.md §6.4).
    c.cpu_threads = 1
    if args.preset == "tiny":  # tests: the whole sweep in about a minute of compute
        c.model.block_counts = (1, 1, 1)
        c.data.image_size = 75
        c.data.name = "shapes_textures/tiny"
        c.train.batch_size = 8
        c.train.num_steps = 4
        c.train.learning_rate = 0.05
        c.train.warmup_steps = 0
        c.train.eval_every_steps = 2
        c.data.eval_split = "validation"
        c.train.eval_batch_size = 40
        c.train.checkpoint_every_steps = 2
        c.train.probe_every_steps = 2
    elif args.preset in ("gpu", "imagenet"):
        c.data.name = "imagenette" if args.preset == "gpu" else "imagenet2012"
        c.data.eval_split = "validation"
        c.data.augment = "inception"
        c.data.image_size = 299
        c.model.width_multiplier = 1.0
        c.model.block_counts = (5, 10, 5)
        c.model.bn_momentum = 0.9997 if args.preset == "imagenet" else 0.99
        c.model.dropout_rate = 0.2
        c.train.optimizer = "rmsprop"  # the paper's recipe (docs/architecture.md §6)
        c.train.learning_rate = 0.045
        c.train.lr_schedule = "staircase"
        c.train.weight_decay = 4e-5
        c.train.grad_clip_norm = 2.0
        c.train.label_smoothing = 0.1
        c.train.ema_decay = 0.9999
        c.train.batch_size = 64 if args.preset == "gpu" else 1024
        c.train.num_steps = None
        c.train.num_epochs = 30.0 if args.preset == "gpu" else 100.0
        c.train.eval_every_steps = 2000
        c.train.eval_batch_size = 200 if args.preset == "gpu" else 1000
        c.train.checkpoint_every_steps = 2000
        c.train.probe_every_steps = 200
        c.train.log_dense_steps = 200
        c.model.dtype = "bfloat16"
        c.cpu_threads = 0  # accelerators: the host's threads feed the device, every core
    return c


def deepest_width_filters(width: int, preset: str) -> tuple | None:
    """Reduction-B's conv branch widths that make the C stage `width` wide (None: the network's own width), as
    (key, filters) pairs: config values cannot be dicts with dotted keys."""
    widths = _stage_widths(preset)
    b_width, own = widths["b"], widths["c"]
    if width == own:
        return None
    extra = width - b_width
    if extra < 3:
        raise ValueError(f"configs/ablation_scale.py: deepest width {width} must exceed the B width {b_width} + 2")
    third = extra // 3
    return (("reduction_b.b0_1", third), ("reduction_b.b1_1", third), ("reduction_b.b2_2", extra - 2 * third))


@functools.cache
def _stage_widths(preset: str) -> dict[str, int]:
    """The preset's network's own stage widths (B / C: 144 / 268 on CPU, 1152 / 2144 at full width)."""
    model = get_config(f"preset={preset}").model
    return stage_widths(model_options(model.name, **model_knobs(model)))


# The variants each preset runs. The default keeps what the 10-minute CPU budget allows: plain, unscaled, and the
# paper's scaling (0.3) at two filter counts; scale 0.1, the learnable scale and 1280 filters come with
# cpu_long (docs/dying.md §5, "The main job's budget").
VARIANTS = {
    "plain": {"model.use_residual": False},
    "scale1": {"model.residual_scale": 1.0},
    "scale0.3": {"model.residual_scale": 0.3},
    "scale0.1": {"model.residual_scale": 0.1},
    "learnable": {"model.residual_scale": 1.0, "model.residual_scale_mode": "learnable"},
}
PRESET_VARIANTS = {"cpu": ("plain", "scale1", "scale0.3"), "tiny": ("plain", "scale1", "scale0.1")}
# cpu_long is the default's recipe and length with every variant and 3 seeds, at 160 and 1280 filters (30 runs).
# At full width the C stage is at least the B stage's 1152 + 3 (Reduction-B's pool branch passes B's channels on),
# so the full-width presets all sit past the paper's ~1000: 1536, the network's own 2144, and 3200. The side below
# 1000 is the CPU presets' (a narrower network).
PRESET_WIDTHS = {"cpu": (160, 640), "cpu_long": (160, 1280), "tiny": (268, 1040),
                 "gpu": (1536, 2144, 3200), "imagenet": (1536, 2144, 3200)}
PRESET_SEEDS = {"cpu": 5, "cpu_long": 3, "tiny": 1, "gpu": 1, "imagenet": 1}


def get_sweep(arg: str | None = None) -> list[tuple[str, dict]]:
    """Rows: (run_id, dotted overrides). Filter counts x variants x seeds (seed_offset, seed_offset + 1, ...);
    rows of one filter count share their compiled programs, so they run together."""
    args = _args(arg)
    seeds = range(args.seed_offset, args.seed_offset + (args.seeds or PRESET_SEEDS[args.preset]))
    rows = []
    for width in PRESET_WIDTHS[args.preset]:
        filters = deepest_width_filters(width, args.preset)
        base = {"model.filters": filters} if filters else {}
        for name in PRESET_VARIANTS.get(args.preset, tuple(VARIANTS)):
            for seed in seeds:
                run_id = f"w{width}_{name}" + (f"_seed{seed}" if len(seeds) > 1 or seed else "")
                rows.append((run_id, {**base, **VARIANTS[name], **({"seed": seed} if len(seeds) > 1 or seed else {})}))
    return rows
