"""The package's layout is its design: subpackages by job, and dependencies that only point one way.

    validation   the shared checks and error hints        imports nothing of the package (all parts may import it)
    wording      how a duration reads                     imports nothing of the package (all parts may import it)
    configuration  the config schema and its checks        imports models, cpu, data (choices, defaults)
    config_files   loading config files, their `:arg`     imports configuration only
    models/      the networks, stock JAX / Flax           imports nothing else of the package but validation
    cpu/         the CPU backend: replaces models' ops     imports models only
    data/        TFDS sources, pipeline, preprocessing     imports models (image sizes) at most
    training/    loop, steps, programs, checkpoints        no sweeps
    pretrained/  exported models, importers, predict       no training, no sweeps
    sweeps/      rows, checks, the runner                  the top of the library; only main.py imports it

Imports anywhere in a module count, those inside functions too: a lazy import that closes a cycle is a cycle.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "inception_jax"

ALLOWED = {  # subpackage -> the parts of the package it may import (besides itself)
    "validation": set(),
    "wording": set(),
    "models": {"validation"},
    "cpu": {"models", "validation"},
    "data": {"models", "validation"},
    "pretrained": {"models", "data", "configuration", "validation"},
    "training": {"models", "cpu", "data", "pretrained", "configuration", "validation"},
    "sweeps": {"models", "cpu", "data", "pretrained", "training", "configuration", "config_files", "validation",
               "wording"},
    "configuration": {"models", "cpu", "data", "validation"},
    "config_files": {"configuration", "validation"},
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path: pathlib.Path) -> set[str]:
    """The package's modules `path` imports (for `from a import b`: a.b when that is a module, else a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("inception_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inception_jax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {name for name in found if name in MODULES}


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def part(module: str) -> str:
    """The top-level part a module belongs to: a subpackage, or a top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "inception_jax"


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycles():
    assert find_cycle() is None, " -> ".join(find_cycle())


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_each_part_imports_only_the_parts_below_it(subpackage):
    wrong = sorted(f"{module} imports {target}" for module, targets in GRAPH.items() if part(module) == subpackage
                   for target in targets if part(target) not in ALLOWED[subpackage] | {subpackage, "inception_jax"})
    assert not wrong, wrong


def test_the_networks_do_not_know_the_cpu_backend():
    """models/ is stock JAX: the CPU forms replace its ops from outside (models/ops.py), never the reverse."""
    assert all(part(t) in {"models", "validation"} for m, ts in GRAPH.items() if part(m) == "models" for t in ts)


def test_the_checks_see_the_whole_package():
    assert {"inception_jax.main", "inception_jax.models.network", "inception_jax.cpu.backend",
            "inception_jax.training.loop", "inception_jax.sweeps.sweep", "inception_jax.data.input_pipeline",
            "inception_jax.pretrained.convert"} <= set(GRAPH)
    assert "inception_jax.training.warm_start" in GRAPH["inception_jax.training.state"]


MAX_LINES = 300  # a module a reader holds in mind at once; past it a module has grown a second job: split by job


def test_no_module_outgrows_one_job():
    """Issue #32: modules are split by job, so none needs more than about 300 lines. A module that passes this has
    room to grow; one that does not is split (a new file whose opening line says its one job), not trimmed."""
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job: {long}"
