"""The host allocator: an entry point re-executes itself once with glibc's huge-page tunable, keeps a value the
user chose, and the memory malloc then hands out really is backed by transparent huge pages."""

import json
import os
import subprocess
import sys

import pytest

from inception_jax import host_memory
from tests.training_helpers import ROOT

# A child that goes through the entry-point call, then mallocs 64 MiB with the C library (not numpy, which
# asks for huge pages by itself), touches it and reports what the kernel backs it with.
CHILD = """
import ctypes, json, os, sys
from inception_jax import host_memory
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
                           "--print_commands"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "host allocator: transparent huge pages, pages kept across steps (glibc.malloc.hugetlb=1" in proc.stderr
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
