"""Issue 8's reproduction on a live server with real trainers: two runs of one preset.

Run A reaches its iteration-3 checkpoint and its trainer is SIGKILLed; run B, from the
same preset, is refused A's folder (409, naming A, proposing a free one) unless it asks to
reuse it; with reuse it trains past iteration 3 over A's file names. Resuming A then never
loads B's weights.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.live import LiveServer, make_settings, tiny_yaml, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path_factory.mktemp("ownership"))).start()
    yield live
    live.stop()


def events(server: LiveServer, run_id: str) -> list[dict[str, Any]]:
    _, page, _ = server.request("GET", f"/api/runs/{run_id}/events?limit=10000")
    found: list[dict[str, Any]] = page["events"]
    return found


def ended(server: LiveServer, run_id: str) -> bool:
    run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
    return run["state"] in ("Complete", "Error", "Stopped") and run_id not in (
        server.ctx.supervisor.training()
    )


def test_a_run_never_resumes_from_another_runs_checkpoint(server: LiveServer) -> None:
    preset = tiny_yaml(
        server.settings.data_root,
        "preset",
        ITERATION_TOTAL=600,
        ITERATION_SAVE=3,
        ITERATION_VAL=100_000,  # no best checkpoint: every file name is numbered
    )
    status, body, _ = server.request("POST", "/api/runs", {"config": preset, "name": "A"})
    assert status == 201, body
    a, output = body["run"]["run_id"], body["run"]["output_path"]
    assert server.request("POST", f"/api/runs/{a}/start", {})[0] == 200

    def first_checkpoint() -> bool:
        return any(e["type"] == "checkpoint" for e in events(server, a))

    wait_for(first_checkpoint, 180, 0.1)
    pid = server.ctx.supervisor.pid(a)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: ended(server, a), 60, 0.1)

    # B, from the same preset: refused, with A named and a free folder proposed. It is to
    # train past every checkpoint A saved, writing over each of A's file names.
    a_last = max(e["data"]["iteration"] for e in events(server, a) if e["type"] == "checkpoint")
    total = str(a_last + 3)
    b_request = {"config": preset, "name": "B", "overrides": ["SOLVER.ITERATION_TOTAL", total]}
    status, refused, _ = server.request("POST", "/api/runs", b_request)
    assert status == 409 and refused["error"]["code"] == "output_in_use", refused
    assert refused["error"]["details"] == {
        "output_path": output,
        "owner": {"run_id": a, "name": "A"},
        "proposed": output + "-2",
    }
    status, asked, _ = server.request("POST", "/api/paths/output", {"path": "out/preset"})
    assert status == 200
    assert asked == {
        "path": output,
        "owner": {"run_id": a, "name": "A", "state": "Error"},
        "proposed": output + "-2",
    }
    assert server.request("GET", "/api/runs")[1]["runs"][0]["run_id"] == a  # nothing made

    # With reuse, B writes A's file names with its own weights.
    status, body, _ = server.request("POST", "/api/runs", {**b_request, "reuse_output": True})
    assert status == 201, body
    b = body["run"]["run_id"]
    assert server.request("POST", f"/api/runs/{b}/start", {})[0] == 200
    wait_for(lambda: ended(server, b), 180, 0.2)
    assert server.request("GET", f"/api/runs/{b}")[1]["run"]["state"] == "Complete"

    # Resume A: its checkpoints' files now hold B's weights, which are never loaded: A has
    # nothing of its own left to resume from, and says so.
    status, resumed, _ = server.request("POST", f"/api/runs/{a}/resume", {})
    assert status == 200, resumed
    assert Path(resumed["event"]["data"]["checkpoint"]).parent == Path(output)
    wait_for(lambda: ended(server, a), 180, 0.2)
    after = [e for e in events(server, a) if e["version"] > resumed["event"]["version"]]
    refusals = [e for e in after if f"belongs to run {b}" in str(e["data"].get("message"))]
    assert refusals, [e["data"] for e in after if e["type"] in ("log", "failed")]
    starts = [e["data"]["start_iteration"] for e in after if e["type"] == "trainer_ready"]
    assert starts in ([], [0])  # nothing loaded, or a fresh start: never B's weights


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"path": "/etc"}, 403, "outside_data_root"),
        ({"path": "../up"}, 403, "outside_data_root"),
        ({}, 400, "bad_request"),
        ({"path": 3}, 400, "bad_request"),
        ({"path": "out/x", "pth": "out/y"}, 400, "bad_request"),
    ],
)
def test_output_path_checks_are_confined_to_the_data_root(
    server: LiveServer, body: dict[str, Any], status: int, code: str
) -> None:
    got, answer, _ = server.request("POST", "/api/paths/output", body)
    assert (got, answer["error"]["code"]) == (status, code), answer


def test_a_free_output_path_is_proposed_as_it_is(server: LiveServer) -> None:
    status, answer, _ = server.request("POST", "/api/paths/output", {"path": "out/fresh"})
    root = server.settings.data_root.resolve()
    assert (status, answer) == (
        200,
        {
            "path": str(root / "out" / "fresh"),
            "owner": None,
            "proposed": str(root / "out" / "fresh"),
        },
    )
