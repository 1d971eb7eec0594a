"""A real server for tests: uvicorn on an ephemeral port, in a thread or a subprocess.

`LiveServer` runs the app in a background thread of the test process, so a test can also
reach into it (`call` runs a coroutine on the server's loop: synthetic events through
the real `RunService.record`). `ServeProcess` runs `python -m backend serve` for what
needs a process of its own (SIGKILL, the no-torch check, the CLI).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import yaml

from backend.events import NewEvent
from backend.serve import uvicorn_config
from backend.server import Context, create_app
from backend.settings import Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"


class LiveServer:
    """The app served by uvicorn in a background thread, on 127.0.0.1 and a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn_config(self.app, replace(settings, host="127.0.0.1", port=0))
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        asyncio.run(serve())

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def ctx(self) -> Context:
        ctx: Context = self.server.lifespan.state["ctx"]
        return ctx

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's event loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # --- synthetic runs: the real service, no trainer child --------------------------------

    def synthetic_run(self, name: str = "synthetic") -> str:
        """A run created and started without a child, ready for `record`."""

        async def make() -> str:
            service = self.ctx.service
            event = await service.create({"name": name, "total_iterations": 1000})
            await service.command(event.run_id, "start", {"attempt": 1})
            return event.run_id

        return self.call(make())

    def record(self, run_id: str, events: list[tuple[str, dict[str, Any]]]) -> list[int]:
        async def append() -> list[int]:
            stored = await self.ctx.service.record(run_id, [NewEvent(t, d) for t, d in events])
            return [e.seq for e in stored]

        return self.call(append())

    def metrics(self, run_id: str, start: int, count: int, pad: int = 0) -> list[int]:
        extra = {"pad": os.urandom(pad // 2).hex()} if pad else {}  # incompressible
        return self.record(
            run_id,
            [
                ("metric", {"iteration": i, "loss": 1.0 / (i + 1), "lr": 0.01, **extra})
                for i in range(start, start + count)
            ],
        )

    # --- REST ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        return http(self.url, method, path, body, token=token, headers=headers, raw=raw)


def http(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded body, headers); JSON bodies decoded, others as bytes."""
    all_headers = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("content-type", "application/json")
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=all_headers)
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=60) as response:
            status, payload, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, payload, got = exc.code, exc.read(), dict(exc.headers)
    lowered = {k.lower(): v for k, v in got.items()}
    if lowered.get("content-type", "").startswith("application/json"):
        return status, json.loads(payload), lowered
    return status, payload, lowered


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    settings = Settings(
        token=TOKEN,
        db_path=tmp_path / "events.db",
        data_root=tmp_path / "data",
        heartbeat_s=5.0,
        heartbeat_timeout_s=15.0,
        stop_grace_s=20.0,
        kill_grace_s=5.0,
        job_options={"flush_interval": 0.05, "threads": 1},
        frontend_dir=None,
    )
    return replace(settings, **overrides)


# --- tiny training configs ------------------------------------------------------------------


def tiny_yaml(data_root: Path, name: str, **solver: Any) -> str:
    """A tiny 2D U-Net config over small .npy volumes under the data root."""
    from tests.trainer.helpers import tiny_config

    tree = tiny_config(data_root / "tiny", data_root / "out" / name, **solver)
    return yaml.safe_dump(tree, sort_keys=False)


# --- `trainboard serve` in a subprocess -----------------------------------------------------


class ServeProcess:
    """`python -m backend serve` on a free port; `url` is read from what it prints."""

    def __init__(self, tmp_path: Path, *extra: str, token: str | None = TOKEN) -> None:
        self.tmp_path = tmp_path
        self.args = [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "events.db"),
            "--data-root",
            str(tmp_path / "data"),
            *(["--token", token] if token else []),
            *extra,
        ]
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.token = token or ""
        self.output: list[str] = []

    def start(self, timeout: float = 30) -> ServeProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TRAINBOARD_TOKEN", None)
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # a SIGKILL of the server must not reach its children
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = re.search(r"(http://[\d.]+:\d+)/\?token=(\S+)", line)
            if match:
                self.url, self.token = match.group(1), match.group(2)
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise RuntimeError("serve did not print its URL:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        return http(self.url, method, path, body, token=self.token)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
