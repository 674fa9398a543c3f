"""A sweep as TensorBoard shows it: start the pinned TensorBoard on a runs/ folder, ask its HTTP API, look at a tab
in headless Chromium, and save a screenshot of the HParams view (the figure in docs/figures/).

    python -m analysis.tensorboard_view --runs=workdir/ablation_scale/runs --out=docs/figures/tensorboard_hparams.png

Both servers listen on 127.0.0.1 only and are stopped on exit; every wait is bounded. Chromium is driven through
the DevTools protocol over a pipe (`--remote-debugging-pipe`: no port, no websocket library), because TensorBoard
draws its tabs inside shadow DOMs that `--dump-dom` does not print. tests/test_tensorboard.py uses the same code.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from analysis.screenshot import HEADLESS_FLAGS, find_chromium

CHROMIUM_FLAGS = (*HEADLESS_FLAGS, "--mute-audio")
# Every text node of the page but styles and scripts, shadow roots included (TensorBoard's tabs keep theirs there).
PAGE_TEXT_JS = """(() => { const out = [];
  const walk = (node) => { if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) {
      if (child.nodeType === 3) out.push(child.textContent);
      else if (!['STYLE', 'SCRIPT', 'TEMPLATE'].includes(child.nodeName)) walk(child); } };
  walk(document); return out.join(' '); })()"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moved_above(fd: int, lowest: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return moved


class TensorBoard:
    """The pinned TensorBoard (this Python's `tensorboard.main`) on `logdir`, on a free loopback port."""

    def __init__(self, logdir: str, *, start_timeout: float = 180.0):
        self.logdir, self.port = logdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (TensorBoard's output, kept for error messages)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", "--host=127.0.0.1",
             f"--port={self.port}", "--reload_interval=0"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"TensorBoard exited ({self._proc.returncode}): {self.output()[-2000:]}")
            with contextlib.suppress(OSError):
                if self.get("/data/plugins_listing").get("hparams") is not None:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"TensorBoard on {self.logdir} did not answer within {timeout:.0f} s: "
                           f"{self.output()[-2000:]}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def hparams_experiment(self) -> dict:
        return self.post("/data/plugin/hparams/experiment", {"experimentName": ""})

    def session_groups(self) -> list[dict]:
        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        answer = self.post("/data/plugin/hparams/session_groups",
                           {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "startIndex": 0,
                            "sliceSize": 10_000})
        return answer.get("sessionGroups", [])

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=20)
        self._log.close()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Chromium:
    """Headless Chromium with one page, driven through the DevTools protocol over a pipe (fds 3 and 4)."""

    def __init__(self, *, width: int = 1400, height: int = 900, executable: str | None = None):
        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child's ends, moved above 3 and 4 so that placing them there cannot overwrite one with the other.
        to_browser, from_browser_w = (_moved_above(fd, 10) for fd in (to_browser, from_browser_w))
        command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
                   "--remote-debugging-pipe", "about:blank"]
        # The protocol wants its pipe as fds 3 (commands in) and 4 (answers out): the shell's redirections put it
        # there.
        script = f'exec "$@" 3<&{to_browser} 4>&{from_browser_w} {to_browser}<&- {from_browser_w}>&-'
        self._proc = subprocess.Popen(["bash", "-c", script, "chromium", *command],
                                      pass_fds=(to_browser, from_browser_w), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser_w)
        self._buffer, self._next_id = b"", 0
        try:
            pages = [t["targetId"] for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            page = pages[0] if pages else self._call("Target.createTarget", url="about:blank")["targetId"]
            self._session = self._call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
            self._call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                       deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _call(self, method: str, *, session: bool = False, timeout: float = 60.0, **params: Any) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise TimeoutError(f"chromium did not answer {method} within {timeout:.0f} s")
            ready, _, _ = select.select([self._from_browser], [], [], 1.0)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk

    def open(self, url: str) -> None:
        self._call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str) -> Any:
        answer = self._call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return answer.get("result", {}).get("value")

    def page_text(self) -> str:
        return self.evaluate(PAGE_TEXT_JS) or ""

    def wait_for_text(self, needles: list[str], timeout: float = 90.0) -> str:
        """The page's text once it holds every one of `needles` (TensorBoard fills its tabs after loading)."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):  # the page may be between documents while it loads
                text = self.page_text()
            if all(n in text for n in needles):
                return text
            time.sleep(1.0)
        missing = [n for n in needles if n not in text]
        raise TimeoutError(f"the page never showed {missing} within {timeout:.0f} s; it shows: {text[:1500]}")

    def screenshot(self, path: str) -> None:
        data = self._call("Page.captureScreenshot", session=True, format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                self._call("Browser.close", timeout=10)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=15)
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_ids(runs_dir: str) -> list[str]:
    """The run folders (those with config.json) of a sweep's runs/ folder."""
    return sorted(name for name in os.listdir(runs_dir) if os.path.isfile(os.path.join(runs_dir, name, "config.json")))


@contextlib.contextmanager
def hparams_tab(runs_dir: str, *, width: int = 1400, height: int = 900) -> Iterator[tuple[TensorBoard, Chromium]]:
    """TensorBoard on `runs_dir` and Chromium showing its HParams tab once every run's row is drawn."""
    with TensorBoard(runs_dir) as board, Chromium(width=width, height=height) as browser:
        browser.open(f"{board.url}/#hparams")
        browser.wait_for_text(run_ids(runs_dir))
        yield board, browser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="a sweep's runs/ folder (TensorBoard's --logdir)")
    parser.add_argument("--out", default="docs/figures/tensorboard_hparams.png")
    # Wide enough for the columns TensorBoard shows by default: five knobs and five metrics.
    parser.add_argument("--width", type=int, default=2400)
    parser.add_argument("--height", type=int, default=600)
    args = parser.parse_args(argv)
    with hparams_tab(args.runs, width=args.width, height=args.height) as (_, browser):
        time.sleep(2.0)  # the table's last layout pass
        browser.screenshot(args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KiB): the HParams tab of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
