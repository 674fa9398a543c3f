"""How the tests compare floating-point results: relative to the size of what is compared, so that a sum that
cancels to a small value is not held to a precision its own terms never had."""

import jax
import numpy as np


def relative_error(ours, ref) -> float:
    """max |ours - ref| / max |ref|; for an all-zero ref (a plain block's unused residual scale), max |ours|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    top = np.max(np.abs(ref))
    return float(np.max(np.abs(ours - ref)) / top) if top else float(np.max(np.abs(ours)))


def assert_trees_close_to_scale(ours, ref, tolerance: float, *, tree_fraction: float = 0.0) -> None:
    """Every leaf of `ours` within `tolerance` of `ref`'s, relative to the largest magnitude of that leaf, or to
    `tree_fraction` of the largest magnitude in `ref` where that is larger (a gradient that is zero in exact
    arithmetic, such as a bias's before a BatchNorm, is rounding noise in both)."""
    paths_ours, paths_ref = jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree_util.tree_flatten_with_path(ref)[0]
    assert [p for p, _ in paths_ours] == [p for p, _ in paths_ref], "the trees differ in structure"
    floor = tree_fraction * max((float(np.max(np.abs(np.asarray(b, np.float64)))) for _, b in paths_ref), default=0.0)
    for (path, a), (_, b) in zip(paths_ours, paths_ref, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.max(np.abs(b))), floor)
        error = float(np.max(np.abs(a - b))) / scale if scale else relative_error(a, b)
        assert error < tolerance, f"{jax.tree_util.keystr(path)}: relative error {error:.3g} >= {tolerance}"
