"""The device mesh and every sharding a run uses, explicitly.

"pmap/pjit" here means the modern form: one `jax.jit` over a `Mesh` with `NamedSharding`s (GSPMD), which runs
unchanged on CPU, one GPU, many GPUs, TPU pods and several hosts. Batches are sharded over all devices
(`data` x `fsdp`); parameters and optimizer state are replicated, or sharded over `fsdp` when it is > 1.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from inception_jax.validation import ConfigError

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg: Any, devices: list | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over every device of every process. Auto axes: classic GSPMD propagation
    (docs/libraries.md T1: Explicit axes make sharded conv kernels fail inside the conv)."""
    if devices is None:
        devices = jax.devices()
        wanted = int(mesh_cfg.get("num_devices", -1))
        if wanted != -1:
            if not 1 <= wanted <= len(devices) or jax.process_count() > 1:
                raise ConfigError(f"mesh.num_devices={wanted} must be -1 (all) or between 1 and {len(devices)} "
                                  "(and -1 when several processes run)")
            devices = devices[:wanted]
    n, fsdp = len(devices), int(mesh_cfg.fsdp)
    data = n // fsdp if mesh_cfg.data == -1 else int(mesh_cfg.data)
    if data * fsdp != n:
        raise ConfigError(f"mesh.data={mesh_cfg.data} x mesh.fsdp={fsdp} must equal the {n} devices available; "
                          f"use mesh.data=-1 with an fsdp that divides {n}")
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def leaf_sharding(mesh: Mesh, shape: tuple[int, ...], min_size: int) -> NamedSharding:
    """FSDP rule: shard the largest dimension divisible by the fsdp size; small or indivisible leaves replicate."""
    n = mesh.shape["fsdp"]
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return replicated(mesh)
    for axis in np.argsort(shape)[::-1]:
        if shape[axis] % n == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def state_shardings(mesh: Mesh, abstract_state: Any, min_size: int) -> Any:
    """A sharding per leaf of an abstract train state (from `jax.eval_shape`)."""
    return jax.tree.map(lambda x: leaf_sharding(mesh, tuple(x.shape), min_size), abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of a global batch -> global arrays sharded over the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def check_batch_divisible(key: str, batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise ConfigError(f"{key}={batch_size} is not divisible by the {n} devices of the mesh "
                          f"({jax.process_count()} process(es)); use a multiple of {n}")
