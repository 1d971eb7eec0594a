"""Helpers of the browser tests: the server process, chromium, screenshots.

The server runs as its own process (the CLI a user runs), on a fixed free port so it can be
killed and started again on the same address while the page stays open. Screenshots go
to `test-artifacts/screenshots/` (git-ignored; CI keeps them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKEN = "browser-test-token-0123456789"


def chromium_path() -> str | None:
    """Debian's chromium (CI sets TRAINBOARD_CHROMIUM); never a downloaded browser."""
    for candidate in (os.environ.get("TRAINBOARD_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`python -m backend serve` as a child process, restartable on the same port."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.extra_args = extra_args  # more `serve` options (`--executor slurm`)
        self.port = free_port()
        self.db = workdir / "events.db"
        self.data_root = workdir / "data"
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            "--data-root",
            str(self.data_root),
            "--token",
            TOKEN,
            *self.extra_args,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                if self.api("GET", "/api/health").get("status") == "ok":
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer in {timeout} s")

    def kill(self) -> None:
        """Kill the server the hard way (a crash), leaving its trainer child to notice."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        # The whole session: the server and any trainer child it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def wait_demo(self, timeout: float = 120.0) -> None:
        """On a first start the server writes the demo dataset and presets."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            demo = self.api("GET", "/api/health").get("demo")
            if demo in ("ready", "none") and self.api("GET", "/api/presets")["presets"]:
                return
            time.sleep(0.5)
        raise RuntimeError("the demo dataset was not written in time")


def shot(page: Any, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


TINY = [
    "SOLVER.ITERATION_TOTAL", "10", "SOLVER.SAMPLES_PER_BATCH", "1",
    "SOLVER.ITERATION_SAVE", "10", "SOLVER.ITERATION_VAL", "10",
    "MODEL.INPUT_SIZE", "[1, 64, 64]", "MONITOR.ITERATION_NUM", "[1, 10]",
]  # fmt: skip


def create_run(
    server: Server, name: str, *, start: bool = True, extra: tuple[str, ...] = ()
) -> Any:
    """A tiny 2D demo run made over REST (a fresh output folder), started unless told not."""
    preset = next(p for p in server.api("GET", "/api/presets")["presets"] if p["name"] == "demo_2d")
    output = server.data_root / "demo" / "outputs" / name.replace(" ", "-")
    overrides = [*TINY, "DATASET.OUTPUT_PATH", str(output), *extra]
    body = {"name": name, "config": preset["yaml"], "overrides": overrides}
    run = server.api("POST", "/api/runs", body)["run"]
    if start:
        server.api("POST", f"/api/runs/{run['run_id']}/start", {})
    return run


def wait_run(server: Server, run_id: str, *states: str, timeout: float = 400.0) -> Any:
    """Poll the run's summary until it reaches one of `states` (and is not stopping)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = server.api("GET", f"/api/runs/{run_id}")["run"]
        if run["state"] in states and not run.get("stopping"):
            return run
        if run["state"] in ("Complete", "Error", "Stopped"):
            raise AssertionError(f"run {run_id} ended {run['state']}, not {states}: {run}")
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not reach {states} in {timeout} s: {run}")


def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than its viewport (0: no sideways scrolling)."""
    overflow: int = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return overflow


def overflowing(page: Any) -> list[str]:
    """The elements that stick out past the viewport's right edge (for failure messages)."""
    found: list[str] = page.evaluate(
        """() => { const w = document.documentElement.clientWidth;
          return [...document.querySelectorAll('body *')]
            .filter((el) => el.getBoundingClientRect().right > w + 0.5)
            .slice(0, 8)
            .map((el) => `${el.tagName.toLowerCase()}.${[...el.classList].join('.')}`
              + ` "${(el.textContent || '').trim().slice(0, 40)}"`); }"""
    )
    return found
