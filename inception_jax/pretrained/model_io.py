"""Exported models: one directory that rebuilds a network and its weights, for fine-tuning, evaluation and predict.

Layout of an exported model directory:

    model.json   {"format": "inception_jax.model/1", "model": id, "num_classes": n, "knobs": {...}, "source": str,
                  ["labels": [n class names]]}
    variables/   an Orbax StandardCheckpointer save of {"params": pure dict, "batch_stats": pure dict}

`knobs` holds every resolved option of the model except the id and class count, so `create_model(model,
num_classes=n, **knobs)` rebuilds exactly the saved network. The weights are stored in the layout the model had
(scanned or unrolled); `load_model` converts between layouts. This module never trains, downloads or converts
foreign weights (importers/ does that) and writes nothing but the directory it is given.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from inception_jax.models import InceptionNet, ModelOptions, build_model, get_architecture, model_options
from inception_jax.models.options import DTYPES, RESIDUAL_KNOBS
from inception_jax.models.stacking import to_scanned, to_unrolled

FORMAT = "inception_jax.model/1"
META_FILE = "model.json"
VARIABLES_DIR = "variables"
COLLECTIONS = ("params", "batch_stats")

Variables = dict[str, dict[str, Any]]


# --------------------------------------------------------------------------------------------- options <-> json
def options_to_knobs(opts: ModelOptions) -> dict[str, Any]:
    """Every resolved knob except `name` / `num_classes`, JSON-ready (tuples as lists, filters as a dict)."""
    knobs = dataclasses.asdict(opts)
    del knobs["name"], knobs["num_classes"]
    knobs["filters"] = dict(opts.filters)
    return json.loads(json.dumps(knobs))


def options_from_knobs(model: str, num_classes: int, knobs: Mapping[str, Any], *, where: str) -> ModelOptions:
    """Resolve saved knobs through the same validation `create_model` uses, and check they round-trip."""
    kwargs = dict(knobs)
    try:
        if not get_architecture(model).residual:
            # Resolved options of a plain network carry neutral residual values; create_model refuses them as knobs.
            for k in RESIDUAL_KNOBS:
                kwargs.pop(k, None)
        opts = model_options(model, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the saved knobs do not build a model: {e}") from e
    resolved = options_to_knobs(opts)
    differ = {k: (v, resolved.get(k)) for k, v in json.loads(json.dumps(dict(knobs))).items() if resolved.get(k) != v}
    if differ:
        detail = "; ".join(f"{k}: saved {a!r}, rebuilt {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ValueError(f"{where}: the saved knobs do not rebuild the same model ({detail})")
    return opts


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """model.json of an exported model directory, checked for format and required keys."""
    meta_path = os.path.join(os.fspath(path), META_FILE)
    if not os.path.isdir(os.fspath(path)):
        raise FileNotFoundError(f"exported model {os.fspath(path)!r} is not a directory; expected a folder with "
                                f"{META_FILE} and {VARIABLES_DIR}/ (written by save_model / pretrained.convert)")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: {os.fspath(path)!r} is not an exported model directory "
                                f"(it has {sorted(os.listdir(os.fspath(path)))[:10]})")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: format {found!r} is not {FORMAT!r}")
    missing = [k for k in ("model", "num_classes", "knobs") if k not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks the keys {missing}")
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != meta["num_classes"]):
        raise ValueError(f"{meta_path}: 'labels' must list num_classes={meta['num_classes']} names, got "
                         f"{len(labels) if isinstance(labels, list) else type(labels).__name__}")
    return meta


# --------------------------------------------------------------------------------------------- variables
def model_variables(model: InceptionNet) -> Variables:
    """{"params": ..., "batch_stats": ...} as pure nested dicts of arrays (the model's own layout). Other state
    (e.g. constant residual scales) is derived from the options and rebuilt by `build_model`, so it is not saved."""
    return {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}


def skeleton(opts: ModelOptions) -> InceptionNet:
    """A real model of `opts` whose weights are all zeros, to be filled with loaded variables.

    Zero initializers cost a fraction of random ones or of tracing with `nnx.eval_shape`, and unlike an abstract
    model the skeleton holds the real values of the state the network derives from its options.
    """
    model = build_model(dataclasses.replace(opts, conv_init="zeros", up_init="zeros", dense_init="zeros"))
    model.options = opts  # initializers act only at construction; the model reports the options it stands for
    return model


@functools.lru_cache(maxsize=16)
def _facts(opts: ModelOptions) -> tuple[Variables, dict[str, int]]:
    model = skeleton(opts)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), model_variables(model))
    return shapes, model.stacked_counts()


def abstract_variables(opts: ModelOptions) -> Variables:
    """The variables of a model with `opts`, as ShapeDtypeStructs. Cached (a full network takes seconds to build):
    treat the result as read-only."""
    return _facts(opts)[0]


def stacked_counts(opts: ModelOptions) -> dict[str, int]:
    """How many leading blocks of each stage the scanned layout stacks (the same for either layout's options)."""
    return dict(_facts(dataclasses.replace(opts, scan_blocks=False))[1])


def relayout(variables: Variables, opts: ModelOptions, *, from_scanned: bool) -> Variables:
    """Pure-dict variables in the layout `from_scanned` says -> the layout `opts.scan_blocks` says."""
    if from_scanned == opts.scan_blocks:
        return variables
    counts = stacked_counts(opts)
    out = {}
    for name, tree in variables.items():
        unrolled = to_unrolled(tree) if from_scanned else dict(tree)
        out[name] = to_scanned(unrolled, counts) if opts.scan_blocks else unrolled
    return out


def flat_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{'stem/conv1a/conv/kernel': shape, ...} of a nested dict of arrays (or ShapeDtypeStructs / metadata)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_shapes(value, path))
        else:
            out[path] = tuple(value.shape)
    return out


def shape_differences(expected: Mapping[str, Any], found: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested trees of arrays: missing, unexpected, reshaped leaves."""
    a, b = flat_shapes(expected, prefix), flat_shapes(found, prefix)
    out = [f"missing {k} {a[k]}" for k in sorted(a.keys() - b.keys())]
    out += [f"unexpected {k} {b[k]}" for k in sorted(b.keys() - a.keys())]
    out += [f"{k}: expected {a[k]}, found {b[k]}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return out


def model_from_variables(opts: ModelOptions, variables: Mapping[str, Mapping[str, Any]]) -> InceptionNet:
    """Build the model `opts` describes around `variables` (in that model's layout); nothing is initialised."""
    model = skeleton(opts)
    expected = model_variables(model)
    problems = [d for c in COLLECTIONS for d in shape_differences(expected[c], variables.get(c, {}), c)]
    if problems:
        raise ValueError(f"the variables do not fit {opts.name} ({len(problems)} problems): "
                         + "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else ""))
    param_dtype = DTYPES[opts.param_dtype]
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    # Statistics stay float32 whatever param_dtype is (layers.BatchNorm keeps them in float32).
    nnx.replace_by_pure_dict(params, jax.tree.map(lambda a: jnp.asarray(a, param_dtype), dict(variables["params"])))
    nnx.replace_by_pure_dict(stats, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                                 dict(variables["batch_stats"])))
    return nnx.merge(graphdef, params, stats, rest)


# --------------------------------------------------------------------------------------------- save / load
def save_model(path: str | os.PathLike, model: InceptionNet, *, source: str = "",
               labels: Sequence[str] | None = None, overwrite: bool = False) -> None:
    """Write `model` as an exported model directory at `path` (created; refused if it holds a model unless
    `overwrite`). `labels`, if given, names the classes (predict prints them)."""
    path = os.path.abspath(os.fspath(path))
    opts = model.options
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != opts.num_classes:
            raise ValueError(f"save_model: {len(labels)} labels given for a model with num_classes="
                             f"{opts.num_classes}")
    existing = [p for p in (META_FILE, VARIABLES_DIR) if os.path.exists(os.path.join(path, p))]
    if existing and not overwrite:
        raise FileExistsError(f"save_model: {path} already holds {existing}; choose a new directory or pass "
                              "overwrite=True")
    os.makedirs(path, exist_ok=True)
    if os.path.exists(os.path.join(path, META_FILE)):
        os.remove(os.path.join(path, META_FILE))  # so a half-overwritten directory never looks complete
    variables = jax.tree.map(np.asarray, model_variables(model))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, VARIABLES_DIR), variables, force=overwrite)
    checkpointer.wait_until_finished()
    meta: dict[str, Any] = {"format": FORMAT, "model": opts.name, "num_classes": opts.num_classes,
                            "knobs": options_to_knobs(opts), "source": source}
    if labels is not None:
        meta["labels"] = labels
    if jax.process_index() == 0:
        # Written last: a directory with model.json always has complete variables.
        with open(os.path.join(path, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")


def _load(path: str | os.PathLike) -> tuple[dict[str, Any], ModelOptions, Variables]:
    path = os.path.abspath(os.fspath(path))
    meta = read_meta(path)
    opts = options_from_knobs(meta["model"], meta["num_classes"], meta["knobs"], where=os.path.join(path, META_FILE))
    vdir = os.path.join(path, VARIABLES_DIR)
    if not os.path.isdir(vdir):
        raise FileNotFoundError(f"{vdir} not found: the exported model at {path} has no weights")
    expected = abstract_variables(opts)
    checkpointer = ocp.StandardCheckpointer()
    saved = checkpointer.metadata(vdir).item_metadata
    problems = shape_differences(expected, dict(saved))
    if problems:
        raise ValueError(f"{vdir} does not match the model model.json describes ({len(problems)} problems): "
                         + "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else ""))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), expected)
    return meta, opts, checkpointer.restore(vdir, target)


def load_variables(path: str | os.PathLike) -> tuple[ModelOptions, Variables]:
    """The saved options and {"params", "batch_stats"} pure dicts, in the layout they were saved in."""
    _, opts, variables = _load(path)
    return opts, variables


def load_model(path: str | os.PathLike, **knob_overrides: Any) -> InceptionNet:
    """Rebuild the exported model at `path`. Overrides may change anything that keeps every parameter shape
    (scan_blocks, dtype, param_dtype, dropout_rate, bn_momentum, bn_group_size, residual_scale, ...); an override
    that changes a shape (num_classes, width_multiplier, filters, block_counts, aux_head, ...) is refused."""
    meta, saved_opts, variables = _load(path)
    where = f"load_model({os.fspath(path)!r})"
    knobs = dict(meta["knobs"])
    if not get_architecture(saved_opts.name).residual:
        for k in RESIDUAL_KNOBS:  # neutral resolved values, refused as knobs by create_model (overrides are not)
            knobs.pop(k, None)
    overrides = dict(knob_overrides)
    if "width_multiplier" in overrides:
        knobs.pop("filters", None)  # the saved table is absolute; a new multiplier must recompute it
    num_classes = overrides.pop("num_classes", meta["num_classes"])
    try:
        opts = model_options(saved_opts.name, num_classes=num_classes, **{**knobs, **overrides})
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: the overrides {knob_overrides} are not valid: {e}") from e
    expected = abstract_variables(dataclasses.replace(opts, scan_blocks=saved_opts.scan_blocks))
    problems = [d for c in COLLECTIONS for d in shape_differences(expected[c], variables[c], c)]
    if problems:
        raise ValueError(f"{where}: the overrides {knob_overrides} change the parameters of the saved model "
                         f"({len(problems)} differences, e.g. {'; '.join(problems[:3])}); only overrides that keep "
                         "every parameter shape are allowed (scan_blocks, dtype, param_dtype, dropout_rate, "
                         "bn_momentum, bn_eps, bn_group_size, residual_scale, ...). To change the head, use "
                         "load_variables and replace head/fc yourself.")
    variables = relayout(variables, opts, from_scanned=saved_opts.scan_blocks)
    return model_from_variables(opts, variables)
