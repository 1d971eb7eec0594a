"""Real trainer children behind a live server: complete, queue, stop, resume, killed child."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from backend.cli import main
from tests.server.live import TOKEN, LiveServer, make_settings, tiny_yaml, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path_factory.mktemp("training"))).start()
    yield live
    live.stop()


def create(server: LiveServer, name: str, **solver: Any) -> str:
    config = tiny_yaml(server.settings.data_root, name, **solver)
    status, body, _ = server.request("POST", "/api/runs", {"config": config, "name": name})
    assert status == 201, body
    run_id: str = body["run"]["run_id"]
    return run_id


def events(server: LiveServer, run_id: str) -> list[dict[str, Any]]:
    _, page, _ = server.request("GET", f"/api/runs/{run_id}/events?limit=10000")
    found: list[dict[str, Any]] = page["events"]
    return found


def wait_event(server: LiveServer, run_id: str, kind: str, timeout: float = 180) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((e for e in events(server, run_id) if e["type"] == kind), None)

    found: dict[str, Any] = wait_for(find, timeout, interval=0.1)
    return found


def summary(server: LiveServer, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
    return run


async def watch(server: LiveServer, run_id: str) -> list[dict[str, Any]]:
    """Every event of the run over the WebSocket until its final one."""
    received: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 180))
            if frame["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            if frame["type"] != "events":
                continue
            received += frame["events"]
            if received[-1]["type"] in ("completed", "failed", "stopped"):
                return received


def test_create_start_complete_with_the_queue_and_duplicate_ids(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    first = create(server, "complete")
    second = create(server, "waiting")
    status, started, _ = server.request("POST", f"/api/runs/{first}/start", {"id": "start-1"})
    assert status == 200 and started["event"]["type"] == "started"
    assert started["run"]["state"] == "Training"
    status, again, _ = server.request("POST", f"/api/runs/{first}/start", {"id": "start-1"})
    assert status == 200 and again == started  # answered from the first result
    # One slot: the second start is accepted into the queue (202), the run stays Idle.
    status, queued, _ = server.request("POST", f"/api/runs/{second}/start", {"id": "start-2"})
    assert status == 202, queued
    assert queued["event"]["type"] == "queued" and queued["queued"] is True
    assert queued["position"] == 1 and queued["run"]["queue_position"] == 1
    assert summary(server, second)["state"] == "Idle" and summary(server, second)["queued"]
    _, table, _ = server.request("GET", "/api/queue")
    assert table == {
        "slots": [{"index": 0, "devices": ["cpu"], "run_id": first}],
        "queued": [second],
    }
    cli = ["--url", server.url, "--token", TOKEN]
    assert main(["start", second, *cli]) == 1  # already queued: the CLI says so, exits 1
    assert "already queued, at position 1" in capsys.readouterr().err
    assert [e["type"] for e in events(server, second)] == ["created", "queued"]
    # The queue from the terminal: show it, cancel, queue again, move.
    assert main(["queue", *cli]) == 0
    assert capsys.readouterr().out.splitlines() == [f"slot 0 (cpu): {first}", f"1. {second}"]
    assert main(["dequeue", second, *cli]) == 0
    assert "is Idle (dequeued" in capsys.readouterr().out
    assert main(["start", second, *cli]) == 0  # queued again: a 202 is a success
    assert "(queued, position 1) (queued at seq" in capsys.readouterr().out
    assert main(["move", second, "--position", "1", *cli]) == 0
    assert [e["type"] for e in events(server, second)] == [
        "created",
        "queued",
        "dequeued",
        "queued",
        "queue_moved",
    ]

    streamed = asyncio.run(watch(server, first))
    assert streamed[-1]["type"] == "completed"
    stored = events(server, first)
    assert streamed == stored
    assert [e["version"] for e in stored] == list(range(1, len(stored) + 1))
    assert [e["type"] for e in stored].count("started") == 1
    assert {"trainer_ready", "metric", "progress", "validation", "checkpoint"} <= {
        e["type"] for e in stored
    }
    run = summary(server, first)
    assert run["state"] == "Complete" and run["iteration"] == 24
    assert run["best_dice"] is not None and Path(run["last_checkpoint"]).is_file()
    # The queued run started once the slot was free, as a start does, and completes.
    assert wait_event(server, second, "completed")
    types = [e["type"] for e in events(server, second)]
    assert types[5] == "started" and types.count("started") == 1
    assert server.ctx.supervisor.training() == [] or wait_for(
        lambda: server.ctx.supervisor.training() == [], 30
    )


def test_stop_then_resume_to_complete(server: LiveServer) -> None:
    run_id = create(server, "stop-resume", ITERATION_TOTAL=150, ITERATION_SAVE=1000)
    assert server.request("POST", f"/api/runs/{run_id}/start", {})[0] == 200
    wait_for(lambda: any(e["type"] == "metric" for e in events(server, run_id)), 180, 0.1)
    status, body, _ = server.request("POST", f"/api/runs/{run_id}/stop", {"id": "stop-x"})
    assert status == 200 and body["event"]["type"] == "stop_requested"
    assert body["run"]["stopping"] is True and body["run"]["state"] == "Training"
    status, _, _ = server.request("POST", f"/api/runs/{run_id}/stop", {})
    assert status == 409  # a stop is already under way
    stopped = wait_event(server, run_id, "stopped")
    assert stopped["data"]["checkpoint"] and Path(stopped["data"]["checkpoint"]).is_file()
    run = summary(server, run_id)
    assert run["state"] == "Stopped" and run["legal_commands"] == ["resume"]
    stop_iteration = stopped["data"]["iteration"]
    assert 0 < stop_iteration < 150

    status, resumed, _ = server.request("POST", f"/api/runs/{run_id}/resume", {})
    assert status == 200, resumed
    assert resumed["event"]["data"]["checkpoint"] == stopped["data"]["checkpoint"]
    wait_event(server, run_id, "completed")
    history = events(server, run_id)
    after_resume = history[[e["type"] for e in history].index("resumed") :]
    first_metric = next(e for e in after_resume if e["type"] == "metric")
    assert first_metric["data"]["iteration"] == stop_iteration + 1
    run = summary(server, run_id)
    assert run["state"] == "Complete" and run["attempts"] == 2


def test_a_killed_child_ends_the_run_in_error_with_its_exit_code(server: LiveServer) -> None:
    wait_for(lambda: server.ctx.supervisor.training() == [], 60)
    run_id = create(server, "killed", ITERATION_TOTAL=100000)
    assert server.request("POST", f"/api/runs/{run_id}/start", {})[0] == 200
    wait_for(lambda: any(e["type"] == "metric" for e in events(server, run_id)), 180, 0.1)
    pid = next(e["data"]["pid"] for e in events(server, run_id) if "pid" in e["data"])
    os.kill(pid, signal.SIGKILL)
    failed = wait_event(server, run_id, "failed", 60)
    assert failed["data"]["exit_code"] == -signal.SIGKILL
    assert "SIGKILL" in failed["data"]["message"] and failed["data"]["hint"]
    run = summary(server, run_id)
    assert run["state"] == "Error" and run["legal_commands"] == ["resume"]
    assert run["error"]["exit_code"] == -signal.SIGKILL
