"""`trainboard serve`: the token, loopback-only without one, start-up refusals, SIGTERM,
the demo, no torch, and read deadlines (a trickled request is answered 408 and dropped)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from backend.events import NewEvent
from backend.serve import is_loopback, load_or_create_token, token_file
from backend.store import EventStore
from tests.server.live import ROOT, TOKEN, LiveServer, ServeProcess, make_settings, wait_for


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TRAINBOARD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


def test_non_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        result = run_cli("serve", "--host", host, "--db", str(tmp_path / "e.db"))
        assert result.returncode == 2
        assert "refusing" in result.stderr and "--token" in result.stderr
    assert not (tmp_path / "e.db").exists()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")


def test_an_unusable_store_is_reported_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database")
    result = run_cli(
        "serve",
        "--db",
        str(tmp_path / "notes.db"),
        "--data-root",
        str(tmp_path / "data"),
        "--token",
        "0123456789",
    )
    assert result.returncode == 2
    assert "not a Trainboard event store" in result.stderr
    assert "Traceback" not in result.stderr


def _places(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Start-up refusals: (arguments, what the message must say)."""
    (tmp / "a_file").write_text("x")
    (tmp / "a_folder").mkdir()
    db, root = str(tmp / "events.db"), str(tmp / "data")
    dangling = tmp / "dangling.db"
    dangling.symlink_to(tmp / "nowhere" / "events.db")
    return {
        "data root is a file": (["--db", db, "--data-root", str(tmp / "a_file")], "is a file"),
        "db folder missing": (
            ["--db", str(tmp / "missing" / "events.db"), "--data-root", root],
            "mkdir -p",
        ),
        "db inside a file": (
            ["--db", str(tmp / "a_file" / "events.db"), "--data-root", root],
            "which is a file",
        ),
        "db is a folder": (["--db", str(tmp / "a_folder"), "--data-root", root], "is a folder"),
        # SQLite itself refuses it: the store's message, and no stray thread traceback.
        "db a dangling link": (["--db", str(dangling), "--data-root", root], "cannot open"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "data root is a file",
        "db folder missing",
        "db inside a file",
        "db is a folder",
        "db a dangling link",
    ],
)
@pytest.mark.parametrize("token", [["--token", "0123456789"], []])
def test_start_up_refusals_are_one_clear_line_and_write_nothing(
    tmp_path: Path, case: str, token: list[str]
) -> None:
    args, says = _places(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli("serve", "--port", "0", *args, *token)
    assert_refused(result, says)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no db, token or folder


def assert_refused(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Event loop" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last and says in last, result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "99999"], "is not a port"),
        (["--port", "-1"], "is not a port"),
        (["--port", "http"], "invalid port_number value"),
        (["--max-concurrent", "0"], "at least 1"),
        (["--host", "256.1.1.1", "--token", "0123456789abcdef"], "--host an address"),
    ],
)
def test_bad_flags_are_refused_before_anything_is_written(
    tmp_path: Path, args: list[str], says: str
) -> None:
    where = ["--db", str(tmp_path / "events.db"), "--data-root", str(tmp_path / "data")]
    assert_refused(run_cli("serve", *where, "--token", "0123456789", *args), says)
    assert list(tmp_path.iterdir()) == []


def test_a_port_in_use_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        where = ["--db", str(tmp_path / "events.db"), "--data-root", str(tmp_path / "data")]
        result = run_cli("serve", "--port", port, *where)  # no --token: none is written
    assert_refused(result, "the port is in use")
    assert list(tmp_path.iterdir()) == []


def _serve_as_nobody(db: Path, root: Path, errors: Path) -> None:
    """`trainboard serve` as uid 65534 (root writes read-only files), stderr to `errors`."""
    from backend.cli import main

    sys.stderr = open(errors, "w", encoding="utf-8")  # noqa: SIM115 (closed at exit)
    # What serve imports lazily, imported while the interpreter's files are still readable.
    import backend.server  # noqa: F401

    "localhost".encode("idna")
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    code = main(
        ["serve", "--port", "0", "--db", str(db), "--data-root", str(root), "--token", "0123456789"]
    )
    sys.stderr.flush()
    os._exit(code)


def test_a_read_only_store_is_refused_at_start(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp())  # not tmp_path: its parents are closed to others
    try:
        db = folder / "events.db"
        asyncio.run(_append_one(db))
        before = db.read_bytes()
        db.chmod(0o444)
        folder.chmod(0o755)
        errors = folder / "stderr.txt"
        errors.write_text("")
        child = mp.get_context("fork").Process(
            target=_serve_as_nobody, args=(db, folder / "data", errors)
        )
        child.start()
        child.join(60)
        message = errors.read_text()
        assert child.exitcode == 2, message
        assert message.startswith("error: ") and "cannot be written" in message
        assert "Traceback" not in message
        assert db.read_bytes() == before
    finally:
        shutil.rmtree(folder)


async def _append_one(path: Path) -> None:
    async with await EventStore.open(path) as store:
        await store.append("r", [NewEvent("log", {"level": "info", "message": "kept"})])


def test_sigterm_shuts_down_cleanly_and_exits_0(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path).start()
    assert server.request("GET", "/api/health")[0] == 200
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert "Traceback" not in "".join(server.output)

    async def reopen() -> int:  # the exclusive lock is released, the store intact
        async with await EventStore.open(tmp_path / "events.db") as store:
            return store.last_seq

    assert asyncio.run(reopen()) == 0


def test_token_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    path = token_file(tmp_path / "events.db")
    assert path is not None and path.name == "events.db-token"
    token = load_or_create_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == token
    path.chmod(0o644)
    assert load_or_create_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_file(Path(":memory:")) is None


@pytest.mark.slow
def test_first_start_prints_the_url_keeps_the_token_and_writes_the_demo(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, token=None).start()
    try:
        token = server.token
        assert "?token=" in "".join(server.output)
        assert server.request("GET", "/api/health")[0] == 200

        def demo_ready() -> bool:
            return bool(server.request("GET", "/api/health")[1]["demo"] == "ready")

        wait_for(demo_ready, 120, 0.2)
        presets = {p["name"]: p for p in server.request("GET", "/api/presets")[1]["presets"]}
        assert {"demo_2d", "demo_3d"} <= set(presets)
        assert presets["demo_2d"]["title"].startswith("Demo")
        assert (tmp_path / "data" / "demo" / "train_image.tif").is_file()
        # The demo config validates as it is.
        status, body, _ = server.request(
            "POST", "/api/config/validate", {"config": presets["demo_2d"]["yaml"]}
        )
        assert status == 200 and body["ok"], body["problems"]
    finally:
        assert server.stop() == 0
    again = ServeProcess(tmp_path, token=None).start()
    try:
        assert again.token == token  # the printed URL stays valid across restarts
        assert again.request("GET", "/api/health")[1]["demo"] == "none"  # not written twice
    finally:
        again.stop()


NO_TORCH = """
import sys
from pathlib import Path
from tests.server.live import LiveServer, make_settings, tiny_yaml
import numpy as np

tmp = Path(sys.argv[1])
server = LiveServer(make_settings(tmp)).start()
config = tiny_yaml(server.settings.data_root, "no-torch")
np.save(server.settings.data_root / "v.npy", np.zeros((2, 8, 8), dtype=np.uint8))
checks = [
    server.request("GET", "/api/health"),
    server.request("GET", "/api/config/schema"),
    server.request("POST", "/api/config/validate", {"config": config}),
    server.request("POST", "/api/runs", {"config": config}),
    server.request("GET", "/api/files/info?path=v.npy"),
    server.request("GET", "/api/files/thumbnail?path=v.npy"),
]
assert all(status in (200, 201) for status, _, _ in checks), [c[:2] for c in checks]
server.stop()
print("TORCH" if any(m == "torch" or m.startswith("torch.") for m in sys.modules) else "NO-TORCH")
"""


def test_the_server_process_never_imports_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH")
    # And the command line that starts it does not either.
    probe = "import sys; from backend.cli import build_parser; build_parser(); import backend.serve"
    probe += "; import backend.server; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


# --- slow-loris: a client that trickles its request is answered 408 and dropped -------------


@pytest.fixture
def quick_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend import wire

    monkeypatch.setattr(wire, "HEAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(wire, "BODY_GRACE_S", 0.5)
    monkeypatch.setattr(wire, "BODY_MIN_RATE", 1024)


def _trickle(port: int, request: bytes, pieces: int, every_s: float) -> bytes:
    """Send `request`, then one byte every `every_s`; everything the server answered
    until it closed the connection (b"" if it never did within the trickle)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        for _ in range(pieces):
            time.sleep(every_s)
            try:
                sock.sendall(b"x")
            except OSError:  # closed by the server: what it said is in the buffer
                break
        sock.settimeout(5)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


@pytest.mark.parametrize(
    ("case", "request_bytes", "says"),
    [
        ("head", b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ", "request head was too slow"),
        (
            "body",
            b"POST /api/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{",
            "request body was too slow",
        ),
    ],
)
def test_a_trickled_request_is_answered_408_and_dropped(
    tmp_path: Path, quick_deadlines: None, case: str, request_bytes: bytes, says: str
) -> None:
    server = LiveServer(make_settings(tmp_path)).start()
    try:
        # 40 bytes over 4 s: far below the 1 KiB/s asked for once the 0.5 s grace is over.
        answer = _trickle(server.port, request_bytes, pieces=40, every_s=0.1)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"connection: close" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout" and says in error["message"], error
        # Nothing was written, and the server serves the next client as before.
        status, listed, _ = server.request("GET", "/api/runs")
        assert status == 200 and listed["runs"] == [], listed
    finally:
        server.stop()


def test_a_slow_body_at_a_fair_rate_is_read_in_full(tmp_path: Path, quick_deadlines: None) -> None:
    """The body deadline grows with what has arrived: 3,000 bytes over 1.2 s (past the
    0.5 s grace, at about twice the minimum rate) are read and answered as usual."""
    server = LiveServer(make_settings(tmp_path)).start()
    try:
        body = b'{"config": "{}"}'.ljust(3000)
        head = (
            b"POST /api/config/validate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head)
            for i in range(0, len(body), 1000):
                sock.sendall(body[i : i + 1000])
                time.sleep(0.4)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        assert status in (200, 422), answer[:300]  # answered on the config, not timed out
    finally:
        server.stop()


SETTLED = """
import asyncio, gc, sys
from pathlib import Path
from types import SimpleNamespace
from backend.serve import GC_YOUNG, _once_started
from tests.server.live import make_settings

before = (gc.get_threshold()[0], gc.get_freeze_count())
started = SimpleNamespace(started=True, servers=[])
asyncio.run(_once_started(started, make_settings(Path(sys.argv[1]))))
print(before, (gc.get_threshold()[0], gc.get_freeze_count() > 0), GC_YOUNG)
"""


def test_a_started_server_settles_its_heap_for_the_collector(tmp_path: Path) -> None:
    """Once listening, what is alive is frozen out of the cyclic collector and young
    collections are spaced out (backend.serve.settle_heap)."""
    result = subprocess.run(
        [sys.executable, "-c", SETTLED, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # CPython's defaults before: 700, nothing frozen; after: GC_YOUNG, frozen.
    assert result.stdout.strip().splitlines()[-1] == "(700, 0) (10000, True) 10000"
