r"""Top-k class predictions for image files with an exported model directory.

    python -m inception_jax.pretrained.predict --checkpoint=/tmp/inception_resnet_v2 cat.jpg dog.png [--top_k=5]

Preprocessing is the evaluation transform of docs/architecture.md §1.9 (`preprocessing.eval_transform`: central crop
keeping 87.5 % of each side, bilinear resize to the model size, scaled to [-1, 1]). Class names:
  * `labels` in the model's model.json, if the exporter stored them (save_model(..., labels=[...]));
  * else 1000 classes: the ImageNet-2012 names, in TFDS `imagenet2012` label order (the synset ids TFDS ships in
    datasets/imagenet2012/labels.txt, the readable names TFDS ships as IMAGENET_LABELS_LIST in
    datasets/siscore/labels.py; read from the installed package, no network);
  * 1001 classes (slim heads, class 0 = background): "background" then the ImageNet names;
  * any other count: "class <index>".
An image that cannot be read is reported on stderr (the others are still predicted) and the exit status is 1.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from inception_jax.data.preprocessing import ImageDecodeError, eval_transform
from inception_jax.models import MIN_IMAGE_SIZE, InceptionNet
from inception_jax.pretrained import model_io

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Exported model directory (model_io / pretrained.convert).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many classes to print per image.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Input size; default: the model's image_size (299).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per forward pass.")


def _tfds_file(relative: str) -> str:
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tensorflow_datasets is not installed; it ships the ImageNet label names")
    path = os.path.join(spec.submodule_search_locations[0], relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found in the installed tensorflow_datasets")
    return path


@functools.lru_cache(maxsize=1)
def imagenet2012_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-2012 classes in TFDS label order, as 'readable name (synset id)'."""
    synsets_file = _tfds_file("datasets/imagenet2012/labels.txt")
    with open(synsets_file) as f:
        synsets = f.read().split()
    names_file = _tfds_file("datasets/siscore/labels.py")
    with open(names_file) as f:
        tree = ast.parse(f.read())
    # Parsed, not imported: importing tensorflow_datasets pulls in TensorFlow for a list of strings.
    names = next((ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "IMAGENET_LABELS_LIST" for t in node.targets)), None)
    if len(synsets) != 1000 or names is None or len(names) != 1000:
        raise ValueError(f"expected 1000 ImageNet classes in {synsets_file} ({len(synsets)}) and "
                         f"IMAGENET_LABELS_LIST of {names_file} ({'absent' if names is None else len(names)})")
    return tuple(f"{name} ({synset})" for name, synset in zip(names, synsets))


def class_names(num_classes: int, labels: Sequence[str] | None = None) -> list[str]:
    """The names predict prints (see the module docstring for the rules)."""
    if labels is not None:
        return list(labels)
    if num_classes == 1000:
        return list(imagenet2012_class_names())
    if num_classes == 1001:
        return ["background", *imagenet2012_class_names()]
    return [f"class {i}" for i in range(num_classes)]


def load_images(paths: Sequence[str], image_size: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(readable paths, float32 (n, size, size, 3) batch, one error line per unreadable path)."""
    good, arrays, errors = [], [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                encoded = f.read()
            arrays.append(eval_transform(encoded, image_size=image_size)[0])
            good.append(path)
        except OSError as e:
            errors.append(f"{path}: cannot read it ({type(e).__name__}: {e.strerror or e})")
        except ImageDecodeError as e:
            errors.append(f"{path}: not an image PIL can decode ({e})")
    batch = np.stack(arrays) if arrays else np.zeros((0, image_size, image_size, 3), np.float32)
    return good, batch, errors


def predict(model: InceptionNet, images: np.ndarray, *, top_k: int = 5,
            batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities), each (n, top_k), best first, of preprocessed NHWC images."""
    num_classes = model.options.num_classes
    if not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k={top_k} must be between 1 and the model's {num_classes} classes")
    graphdef, state = nnx.split(model)

    @jax.jit
    def probabilities(state, x):
        return jax.nn.softmax(nnx.merge(graphdef, state)(x, train=False), axis=-1)

    probs = np.concatenate([np.asarray(probabilities(state, jnp.asarray(images[i:i + batch_size])))
                            for i in range(0, len(images), batch_size)] or [np.zeros((0, num_classes))])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    return order, np.take_along_axis(probs, order, axis=-1)


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # orbax / jax log every step at INFO; the command prints its own
        logging.set_verbosity(logging.WARNING)
    paths = argv[1:]
    if _CHECKPOINT.value is None:
        raise app.UsageError("--checkpoint=<exported model directory> is required")
    if not paths:
        raise app.UsageError("give one or more image files after the flags")
    if _BATCH_SIZE.value < 1:
        raise app.UsageError(f"--batch_size={_BATCH_SIZE.value} must be >= 1")
    try:
        meta = model_io.read_meta(_CHECKPOINT.value)
        model = model_io.load_model(_CHECKPOINT.value)
        names = class_names(model.options.num_classes, meta.get("labels"))
    except (OSError, ValueError) as e:
        sys.exit(f"predict: {type(e).__name__}: {e}")
    size = _IMAGE_SIZE.value or model.options.image_size
    if size < MIN_IMAGE_SIZE:
        raise app.UsageError(f"--image_size={size} is below the networks' minimum input size {MIN_IMAGE_SIZE}")
    good, images, errors = load_images(paths, size)
    if len(good):
        try:
            indices, probs = predict(model, images, top_k=_TOP_K.value, batch_size=_BATCH_SIZE.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        for path, idx, p in zip(good, indices, probs):
            print(path)
            for rank, (i, q) in enumerate(zip(idx, p), 1):
                print(f"  {rank}. {100 * q:6.2f}%  {names[i]}")
    for line in errors:
        print(f"predict: {line}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
