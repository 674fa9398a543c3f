"""The host allocator: an entry point re-executes itself once with glibc's huge-page tunable, keeps a value the
user chose, and the memory malloc then hands out really is backed by transparent huge pages. And how XLA:CPU runs
a process's steps: single-device computations inline in the calling thread, set before JAX creates its backends,
unless the environment asks for the asynchronous dispatch; a mesh of several CPU devices still runs its
collectives."""

import json
import os
import subprocess
import sys

import jax
import pytest

from inception_jax.cpu import host_memory
from tests.training_helpers import ROOT

# A child that goes through the entry-point call, then mallocs 64 MiB with the C library (not numpy, which
# asks for huge pages by itself), touches it and reports what the kernel backs it with.
CHILD = """
import ctypes, json, os, sys
from inception_jax.cpu import host_memory
host_memory.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
ctypes.memset(libc.malloc(size), 1, size)
with open("/proc/self/smaps_rollup") as f:
    huge_kib = sum(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "huge_kib": huge_kib, "argv": sys.argv[1:],
                  "describe": host_memory.describe()}))
"""

needs_thp = pytest.mark.skipif(host_memory.why_not_applicable({}) is not None,
                               reason=f"huge pages do not apply here: {host_memory.why_not_applicable({})}")


def run_child(**env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
    env.update(env_changes)
    proc = subprocess.run([sys.executable, "-c", CHILD, "an-argument"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


OURS = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def test_the_tunables_are_added_beside_the_users_own_and_never_replace_a_chosen_value():
    assert host_memory.WANTED == OURS
    assert host_memory.tunables_with_huge_pages(None) == OURS
    assert host_memory.tunables_with_huge_pages("") == OURS
    assert host_memory.tunables_with_huge_pages("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:" + OURS
    assert (host_memory.tunables_with_huge_pages("glibc.malloc.mmap_max=8")  # the user's value of one of ours
            == "glibc.malloc.mmap_max=8:glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=17179869184")
    assert host_memory.tunables_with_huge_pages("glibc.malloc.hugetlb=0") is None
    assert host_memory.tunables_with_huge_pages("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1") is None
    assert host_memory.other_tunables("glibc.malloc.arena_max=2:" + OURS) == ["glibc.malloc.arena_max=2"]


def test_opting_out_or_an_existing_setting_leaves_the_process_alone():
    assert host_memory.why_not_applicable({host_memory.OPT_OUT: "0"}) == "INCEPTION_JAX_HUGE_PAGES=0"
    reason = host_memory.why_not_applicable({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert reason is not None and "hugetlb=0" in reason


@needs_thp
def test_an_entry_point_reexecutes_once_with_huge_pages_and_keeps_its_arguments():
    child = run_child()
    assert child["tunables"] == OURS
    assert child["argv"] == ["an-argument"]
    assert child["huge_kib"] >= 32 << 10, child  # most of the 64 MiB block sits on 2 MiB pages
    assert child["describe"].startswith("host allocator: transparent huge pages")


@needs_thp
def test_the_users_tunables_are_kept_and_opting_out_keeps_glibc_defaults():
    assert run_child(GLIBC_TUNABLES="glibc.malloc.arena_max=2")["tunables"] == "glibc.malloc.arena_max=2:" + OURS
    child = run_child(**{host_memory.OPT_OUT: "0"})
    assert child["tunables"] is None
    assert child["describe"] == "host allocator: glibc defaults (INCEPTION_JAX_HUGE_PAGES=0)"
    if host_memory.transparent_huge_pages() == "madvise":  # under "always" the kernel gives huge pages anyway
        assert child["huge_kib"] < 8 << 10, child


@needs_thp
def test_the_main_command_runs_with_huge_pages_and_says_so():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
    proc = subprocess.run([sys.executable, "-m", "inception_jax.main", "--config=configs/ablation_scale.py",
                           "--print_commands", "--log_to_console"],  # the log, which --print_commands writes nowhere
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "host allocator: transparent huge pages, pages kept across steps (glibc.malloc.hugetlb=1" in proc.stderr
    assert "XLA:CPU dispatch: inline, single-device steps run in the calling thread" in proc.stderr  # runtime.py
    assert proc.stdout.startswith("python -m inception_jax.main --config=configs/ablation_scale.py")


@pytest.mark.skipif(host_memory.glibc_version() is None, reason="malloc_trim is glibc's")
def test_memory_the_program_freed_goes_back_to_the_system():
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 << 10) for _ in range(3000)]  # 190 MiB of heap, too small a block each for mmap
    for block in blocks:
        ctypes.memset(block, 1, 64 << 10)
    # The last block stays: the freed ones lie below it, where free() itself never gives memory back.
    for block in blocks[:-1]:
        libc.free(block)
    assert host_memory.release_freed_memory() >= 100 << 20
    libc.free(blocks[-1])


# A fresh process: the call comes first, then a single-device step and, on two simulated devices, a sharded sum
# (a collective across the mesh), which must not wait on itself when single-device steps run inline.
DISPATCH_CHILD = """
import json, os
from inception_jax.cpu import host_memory
line = host_memory.run_cpu_steps_inline()
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
single = float(jax.jit(lambda x: (x * 2).sum())(jnp.arange(4.0)))
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P("data")))
sharded = float(jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(x))
mode = jax.config.values["jax_cpu_enable_async_dispatch"]
print(json.dumps({"line": line, "async": mode, "devices": jax.device_count(), "single": single, "sharded": sharded}))
"""


def run_dispatch_child(**env_changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k != host_memory.DISPATCH_ENV}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env.update(env_changes)
    proc = subprocess.run([sys.executable, "-c", DISPATCH_CHILD], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_process_runs_single_device_steps_inline_and_its_mesh_still_computes():
    child = run_dispatch_child()
    assert child["async"] is False
    assert child["line"].startswith("XLA:CPU dispatch: inline")
    assert child["devices"] == 2
    assert (child["single"], child["sharded"]) == (12.0, 28.0)


def test_the_environment_can_keep_the_asynchronous_dispatch():
    child = run_dispatch_child(**{host_memory.DISPATCH_ENV: "async"})
    assert child["async"] is True
    assert child["line"].startswith("XLA:CPU dispatch: async")
    assert (child["single"], child["sharded"]) == (12.0, 28.0)


def test_an_unknown_mode_is_refused_with_the_valid_ones(monkeypatch):
    monkeypatch.setenv(host_memory.DISPATCH_ENV, "sync")
    with pytest.raises(ValueError, match=r"INCEPTION_JAX_CPU_DISPATCH='sync': expected one of \['inline', 'async'\]"):
        host_memory.run_cpu_steps_inline()


def test_once_the_backends_exist_it_changes_nothing_and_says_so(monkeypatch):
    monkeypatch.delenv(host_memory.DISPATCH_ENV, raising=False)
    jax.devices()  # this process's backends exist from here on
    before = jax.config.values["jax_cpu_enable_async_dispatch"]
    line = host_memory.run_cpu_steps_inline()
    assert jax.config.values["jax_cpu_enable_async_dispatch"] == before
    assert "were initialised before it could be set" in line
