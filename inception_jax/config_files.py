"""Config files: loading one by path as `--config=file.py[:arg]` does, the strict parsing of its `:arg` that
config files call (`parse_arg`), and the check that a command line's `--config.<key>=...` overrides name keys
of its config. What a config holds and which values are valid is configuration.py's job.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ml_collections

from inception_jax import validation
from inception_jax.configuration import flatten
from inception_jax.validation import ConfigError, closest_keys_hint


def config_spec(argv: list[str]) -> str | None:
    """The `--config=file.py[:arg]` of a command line (None if it has none)."""
    spec = next((a.partition("=")[2] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    return spec


def check_override_flags(argv: list[str]) -> None:
    """Every `--config.<key>=...` of a command line names a key of its `--config` file's config, else a one-line
    ConfigError naming the flag and the closest keys. (ml_collections raises a KeyError or AttributeError for an
    unknown key while absl parses flags, which absl does not catch: a 35-line traceback.)"""
    spec = config_spec(argv)
    if not spec:
        return
    valid = list(flatten(load_config(spec).to_dict()))
    sections = {k.rsplit(".", i)[0] for k in valid for i in range(1, k.count(".") + 1)}
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                key = arg[len(prefix):].partition("=")[0]
                if key not in valid and key not in sections:
                    raise ConfigError(f"{arg}: {key!r} is not a key of {spec}'s config"
                                      f"{closest_keys_hint(key, valid)}")


def parse_arg(arg: str | None, **spec: tuple) -> Any:
    """The `:arg` of `--config=file.py:arg`, parsed strictly (big_vision `parse_arg`): 'preset=imagenet,seeds=3',
    or a bare word for the first key ('tiny' == 'size=tiny'). `spec` maps key -> (default, kind) or
    (default, kind, minimum): kind is bool, int, float, str or a tuple of the allowed strings; a number below
    `minimum` is refused. Errors name the key, the value and what is allowed (`load_config` adds the file)."""
    import types

    values = {k: s[0] for k, s in spec.items()}
    if arg:
        for i, part in enumerate(p.strip() for p in arg.split(",") if p.strip()):
            key, sep, raw = part.partition("=")
            if not sep:
                if i != 0:
                    raise ConfigError(f"config argument {part!r} needs key=value; keys: {list(spec)}")
                key, raw = next(iter(spec)), part
            if key not in spec:
                hint = validation.did_you_mean(key, list(spec), n=1)
                raise ConfigError(f"config argument key {key!r} is unknown{hint}; valid keys: {list(spec)}")
            values[key] = _convert(key, raw.strip(), *spec[key][1:])
    return types.SimpleNamespace(**values)


def _convert(key: str, raw: str, kind: Any, minimum: float | None = None) -> Any:
    if isinstance(kind, tuple):
        if raw not in kind:
            close = validation.close_matches(raw, kind, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key} must be one of {list(kind)} (got {raw!r}{hint})")
        return raw
    if kind is bool:
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{key} must be true or false (got {raw!r})")
    if kind is str:
        return raw
    what = {int: "an integer", float: "a number"}[kind] + ("" if minimum is None else f" >= {minimum}")
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{key} must be {what} (got {raw!r})") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ConfigError(f"{key} must be {what} (got {raw!r})")
    return value


def config_module(path: str) -> Any:
    """The config file at `path` as a module (config files are loaded by path, not imported as a package; one
    config building on another loads it this way too). A missing file names the config files there are; a syntax
    error is one line with its line number."""
    import importlib.util

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file; config files: {config_files(path)}")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(os.path.abspath(path)))}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{path}: not a Python config file; config files: {config_files(path)}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        text = f" ({e.text.strip()})" if e.text and e.text.strip() else ""
        raise ConfigError(f"{path} line {e.lineno}: {e.msg}{text}") from None
    return module


def config_files(path: str) -> list[str]:
    """The config files to choose from: those in `path`'s folder, or where that does not exist, the repository's."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder or "."):
        folder = os.path.relpath(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    try:
        names = sorted(n for n in os.listdir(folder or ".") if n.endswith(".py") and not n.startswith("_"))
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> its get_config(arg), as `--config=` would load it (for tests and tools). A bad
    argument is a ConfigError naming the whole spec."""
    path, _, arg = spec.partition(":")
    module = config_module(path)
    try:
        return module.get_config(arg or None)
    except ConfigError as e:
        raise ConfigError(f"{spec}: {e}") from None
