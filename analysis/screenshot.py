"""A report as a browser shows it: a screenshot of its first screen, or its DOM after loading, from headless
Chromium (Debian's `chromium` package; .ci/run installs it where missing).

    python -m analysis.screenshot <report.html> <out.png> [--width=1280] [--height=900]

docs/figures/report_first_screen.png is made this way (README's report section says from which sweep). Nothing here
changes the report; the browser runs with a fresh profile and no network.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# A browser with no profile, no network chatter and no GPU: what a container or a CI machine can run.
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
_FLAGS = (*HEADLESS_FLAGS,
          "--run-all-compositor-stages-before-draw",  # a screenshot of the whole paint, not half of it
          "--virtual-time-budget=10000")  # virtual time: the page and its images load before the capture


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _chromium(args: Sequence[str], *, width: int, height: int, timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); on Debian: "
                                "apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([chromium, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               *args], capture_output=True, text=True, timeout=timeout, check=False)


def _capture(html: Path, png: Path, width: int, height: int, timeout: float) -> bytes:
    png.unlink(missing_ok=True)
    done = _chromium([f"--screenshot={png}", html.as_uri()], width=width, height=height, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {html} (exit {done.returncode}): {done.stderr[-2000:]}")
    return png.read_bytes()


def screenshot(html: str | Path, png: str | Path, *, width: int = 1280, height: int = 900,
               timeout: float = 120, attempts: int = 5) -> Path:
    """Write what a `width` × `height` browser window shows of `html` (its top) to `png`.

    On a busy machine headless Chromium now and then captures a half-painted page (the lower part blank); a full
    paint is the same every time, so captures are repeated until two in a row agree (at most `attempts`)."""
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"{html}: no such file (expected a report.html)")
    png.parent.mkdir(parents=True, exist_ok=True)
    previous = _capture(html, png, width, height, timeout)
    for _ in range(attempts - 1):
        current = _capture(html, png, width, height, timeout)
        if current == previous:
            return png
        previous = current
    raise RuntimeError(f"{attempts} screenshots of {html} all differ: the page does not finish painting")


def dump_dom(html: str | Path, *, width: int = 1280, height: int = 900, timeout: float = 120) -> str:
    """The page's DOM after it loaded (and its scripts ran) in a `width` × `height` window, as HTML."""
    html = Path(html).resolve()
    done = _chromium(["--dump-dom", html.as_uri()], width=width, height=height, timeout=timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"chromium could not load {html} (exit {done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("html", help="the report.html to show")
    parser.add_argument("png", help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels (default 1280)")
    parser.add_argument("--height", type=int, default=900, help="window height in pixels (default 900)")
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.html, args.png, width=args.width, height=args.height)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"screenshot: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
