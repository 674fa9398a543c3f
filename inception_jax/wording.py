"""How the library words a duration for people: one form for the sweep's console, its log and the report, so a
time reads the same wherever it is shown. Imports nothing of the package, so every part (and analysis/) may use it.
"""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """`45 s`, `4 min 10 s`, `2 h 05 min`: rounded to the second, two units at most."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
