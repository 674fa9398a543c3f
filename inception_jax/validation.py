"""The checks every checker shares, written once: a value among its choices, a number in its range, and the hint
that names the closest valid spellings of a mistyped name or key. Errors name the value and where it came from
(the caller's `key`) and what is allowed; the caller picks the error class (ConfigError, ValueError, ...).

Imports nothing of the package, so every part may use it (tests/test_layout.py).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed (main.py
    prints it as one line, exit status 2). Defined here, below every part, so any part can raise it."""


def close_matches(value: Any, allowed: Sequence[Any], n: int = 3) -> list[str]:
    """The spellings in `allowed` closest to `value` (at most `n`, best first; none when nothing is close)."""
    return difflib.get_close_matches(str(value), [str(a) for a in allowed], n=n)


def did_you_mean(value: Any, allowed: Sequence[Any], n: int = 3) -> str:
    """" (did you mean 'a', 'b'?)" for the closest of `allowed`, or "" when nothing is close."""
    close = close_matches(value, allowed, n)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def closest_keys_hint(key: str, valid: list[str]) -> str:
    """'; closest valid keys: [...]' for an unknown dotted key (spreadsheet columns and --config.* flags)."""
    close = difflib.get_close_matches(key, valid, n=3)
    if close:
        return f"; closest valid keys: {close}"
    sections = sorted({k.split(".")[0] for k in valid if "." in k})
    return f"; keys start with one of {sections}, or are one of {sorted(k for k in valid if '.' not in k)}"


def check_choice(key: str, value: Any, allowed: Sequence[Any], *, error: type[Exception] = ValueError) -> Any:
    """`value` if it is one of `allowed`, else `error` naming `key`, the choices and the closest one."""
    if value not in allowed:
        raise error(f"{key}={value!r} is not one of {list(allowed)}{did_you_mean(value, allowed, n=1)}")
    return value


# The largest float32: the training arithmetic is float32, so a larger value (1e308 is a valid Python float) is
# infinity by the first step.
FLOAT32_MAX = 3.4028234663852886e38


def check_number(key: str, value: Any, *, integer: bool = False, allow_zero: bool = False,
                 error: type[Exception] = ValueError) -> Any:
    """`value` if it is a count (`integer`), or a number that feeds float32 arithmetic (finite, and within float32's
    range), > 0 (>= 0 with `allow_zero`); else `error` naming `key` and what is allowed."""
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} {'>= 0' if allow_zero else '> 0'}"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok_type or isinstance(value, bool):
        raise error(f"{key}={value!r} must be {allowed}")
    limit = "" if integer else f" up to {FLOAT32_MAX:.7g} (float32's largest: training computes in float32)"
    if not math.isfinite(value):
        raise error(f"{key}={value!r} is not finite; it must be {allowed}{limit}")
    if not integer and abs(value) > FLOAT32_MAX:
        raise error(f"{key}={value!r} is not finite in float32; it must be {allowed}{limit}")
    if not (value >= 0 if allow_zero else value > 0):
        raise error(f"{key}={value!r} must be {allowed}")
    return value
