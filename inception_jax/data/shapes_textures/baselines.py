"""Reference accuracies of `shapes_textures` (the numbers in the builder's docstring): how hard the problem is.

    python -m inception_jax.data.shapes_textures.baselines [--data_dir=DIR] [--cnn_epochs=4]

1. Linear classifiers on raw pixels (standardised, 32x32x3): ridge least squares on one-hot targets (closed form)
   and softmax regression (full-batch Adam).
2. A small CNN in plain JAX on 48x48 inputs: four 3x3 convs (32-64-128-128, stride 2, ReLU), global average pool,
   dense; Adam 1e-3, batch 128, random horizontal flips, no other augmentation.
Both train on the whole train split and report validation accuracy. Runs on CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image


def load_split(data_dir: str | None, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split resized to size x size, as uint8, with their labels."""
    import tensorflow_datasets as tfds

    from inception_jax.data.sources import open_split

    source = open_split("shapes_textures", data_dir, split)
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([np.asarray(Image.open(__import__("io").BytesIO(r["image"])).convert("RGB")
                                  .resize((size, size), Image.BILINEAR)) for r in records])
    labels = np.asarray([int(r["label"]) for r in records], np.int32)
    del tfds
    return images, labels


def linear_baselines(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                     num_classes: int = 10) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import optax

    x_tr = train[0].reshape(len(train[0]), -1).astype(np.float32)
    x_va = val[0].reshape(len(val[0]), -1).astype(np.float32)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    onehot = np.eye(num_classes, dtype=np.float32)[train[1]]
    results = {}
    best = 0.0
    for ridge in (1.0, 100.0, 1000.0, 10000.0):  # the regulariser is picked on validation: an upper bound
        a = np.concatenate([x_tr, np.ones((len(x_tr), 1), np.float32)], 1)
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1], dtype=np.float32), a.T @ onehot)
        pred = np.concatenate([x_va, np.ones((len(x_va), 1), np.float32)], 1) @ w
        best = max(best, float((pred.argmax(1) == val[1]).mean()))
    results["ridge_least_squares"] = best

    params = {"w": jnp.zeros((x_tr.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    opt = optax.adamw(1e-3, weight_decay=1e-2)
    state = opt.init(params)
    x, y = jnp.asarray(x_tr), jnp.asarray(train[1])

    @jax.jit
    def step(params, state):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(300):
        params, state = step(params, state)
    logits = jnp.asarray(x_va) @ params["w"] + params["b"]
    results["softmax_regression"] = float((np.asarray(logits).argmax(1) == val[1]).mean())
    return results


def small_cnn(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], epochs: int,
              num_classes: int = 10, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import optax

    widths = (32, 64, 128, 128)
    key = jax.random.key(seed)
    params, cin = [], 3
    for width in widths:
        key, sub = jax.random.split(key)
        params.append({"w": jax.random.normal(sub, (3, 3, cin, width)) * np.sqrt(2 / (9 * cin)),
                       "b": jnp.zeros((width,))})
        cin = width
    key, sub = jax.random.split(key)
    params.append({"w": jax.random.normal(sub, (cin, num_classes)) * np.sqrt(1 / cin), "b": jnp.zeros((num_classes,))})

    def forward(params, x):
        x = x.astype(jnp.float32) / 127.5 - 1
        for layer in params[:-1]:
            x = jax.lax.conv_general_dilated(x, layer["w"], (2, 2), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + layer["b"])
        return x.mean((1, 2)) @ params[-1]["w"] + params[-1]["b"]

    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    predict = jax.jit(lambda p, x: forward(p, x).argmax(-1))
    rng = np.random.default_rng(seed)
    x_tr, y_tr = train
    start = time.perf_counter()
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(x_tr))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            xb = x_tr[idx]
            flip = rng.uniform(size=len(idx)) < 0.5
            xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
            params, state = step(params, state, jnp.asarray(xb), jnp.asarray(y_tr[idx]))
        pred = np.concatenate([np.asarray(predict(params, jnp.asarray(val[0][i:i + 500])))
                               for i in range(0, len(val[0]), 500)])
        history.append(float((pred == val[1]).mean()))
    return {"small_cnn": history[-1], "small_cnn_per_epoch": history, "small_cnn_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--cnn_epochs", type=int, default=4)
    args = parser.parse_args()
    train32, val32 = load_split(args.data_dir, "train", 32), load_split(args.data_dir, "validation", 32)
    print("linear on 32x32x3 pixels:", linear_baselines(train32, val32), flush=True)
    train48, val48 = load_split(args.data_dir, "train", 48), load_split(args.data_dir, "validation", 48)
    print("small CNN on 48x48:", small_cnn(train48, val48, args.cnn_epochs), flush=True)


if __name__ == "__main__":
    main()
