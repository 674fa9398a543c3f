"""The paper's four networks on ImageNet with its recipe (docs/architecture.md §6), or a checkpoint's evaluation.

    python -m inception_jax.main --config=configs/paper.py:model=inception_resnet_v2 --workdir=runs/irv2 \
        --config.data.data_dir=~/tensorflow_datasets
    python -m inception_jax.main --config=configs/paper.py:model=inception_v4,eval_only=true \
        --config.init_from=ckpt/v4 --config.data.eval_crops=144 --workdir=runs/v4_eval
        # evaluates an imported or trained checkpoint with 1 / 12 / 144 crops

Arguments: model (inception_v4 | inception_resnet_v1 | inception_resnet_v2_paper | inception_resnet_v2),
eval_only (evaluate `init_from` on the validation split and stop), batch (global batch, default 1024).
Needs imagenet2012 prepared in the data dir (TFDS manual download; the pipeline says how if it is missing).

The recipe: RMSProp (decay 0.9, momentum 0.9, eps 1.0). The paper trained 20 asynchronous replicas of batch 32 at
lr 0.045; a synchronous global batch needs its own learning rate, so the default scales 0.045 linearly per
32 x 20 = 640 examples (treat it as a hyper-parameter). Decay 0.94 every 2 epochs, clipping 2.0, weight decay
4e-5, label smoothing 0.1, dropout 0.2, EMA 0.9999, 100 epochs (the paper does not state the count; Inception-v3
used 100), 299 px, bf16 compute with float32 parameters. On a TPU v3
pod slice or 8+ GPUs: days, not hours; not run in this project (no such hardware here).

Published errors to compare with (docs/architecture.md §6.5; top-1 / top-5 %): single crop, 48,238 non-blacklisted
images (we evaluate on all 50,000: the paper says the subset gives ~0.3 % lower top-1 error): Inception-v4 20.0 /
5.0, IR-v1 21.3 / 5.5, IR-v2 19.9 / 4.9. 12 crops: 18.7 / 4.2, 19.8 / 4.6, 18.7 / 4.1. 144 crops: 17.7 / 3.8,
18.8 / 4.3, 17.8 / 3.7. The released IR-v2 checkpoint (slim / timm / Keras): 80.4 / 95.3 % top-1 / top-5.
"""

from inception_jax.config_files import parse_arg
from inception_jax.configuration import base_config
from inception_jax.models import MODEL_NAMES


def get_config(arg: str | None = None):
    args = parse_arg(arg, model=("inception_resnet_v2", MODEL_NAMES), eval_only=(False, bool),
                     batch=(1024, int, 1))
    c = base_config()  # the paper's recipe is the library default
    c.model.name = args.model
    c.model.dtype = "bfloat16"
    c.data.name = "imagenet2012"
    c.data.image_size = 299
    c.train.batch_size = args.batch
    c.train.learning_rate = 0.045 * args.batch / 640
    c.train.num_epochs = 100.0
    c.train.eval_every_steps = 5000
    c.train.eval_batch_size = 500
    c.train.checkpoint_every_steps = 2000
    c.train.log_every_steps = 100
    c.train.probe_every_steps = 1000
    c.eval_only = args.eval_only
    return c
