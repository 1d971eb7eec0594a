"""`trainboard serve`: the token, loopback-only without one, the demo, and no torch."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from backend.serve import is_loopback, load_or_create_token, token_file
from tests.server.live import ROOT, ServeProcess, wait_for


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
    assert result.returncode == 1
    assert "not a Trainboard event store" in result.stderr
    assert "Traceback" not in result.stderr


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
