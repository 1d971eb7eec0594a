"""Crash recovery: runs a dead server left in Training get their lost events back, once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backend import events as ev
from backend import runspec
from backend.events import Event, NewEvent
from backend.execution.job import EVENTS_FILE
from backend.execution.reconcile import INTERRUPTED, reconcile
from backend.execution.supervisor import Supervisor, process_start_time
from backend.fsm.machine import State
from backend.runs import RunService
from backend.store import EventStore
from tests.execution.test_supervisor import JOB_OPTIONS, TIMEOUT, assert_gapless, request

pytestmark = pytest.mark.anyio


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunService]:
    store = await EventStore.open(tmp_path / "events.db")
    svc = RunService(store)
    await svc.load()
    yield svc
    await store.close()


async def training_run(service: RunService, tmp_path: Path) -> str:
    """A run in Training as a dead server left it: started, two trainer events stored."""
    run_id = (await runspec.create_run(service, request(tmp_path))).run_id
    await service.command(run_id, "start", {"attempt": 1})
    await service.record(
        run_id,
        [
            NewEvent(ev.TRAINER_READY, {"device": "cpu", "attempt": 1, "n": 1}, time.time()),
            NewEvent(ev.METRIC, {"iteration": 1, "loss": 0.9, "attempt": 1, "n": 2}, time.time()),
        ],
    )
    return run_id


def line(type_: str, n: int, ts: float | None = None, attempt: int = 1, **data: Any) -> str:
    record = {"type": type_, "ts": ts or time.time(), "data": {**data, "attempt": attempt, "n": n}}
    return json.dumps(record) + "\n"


def write_log(service: RunService, run_id: str, lines: list[str]) -> None:
    path = Path(service.get(run_id).log_path or "") / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


async def events_of(service: RunService, run_id: str) -> list[Event]:
    return await service.store.read_run(run_id)


async def test_lost_events_are_recovered_once_and_the_run_is_interrupted(
    tmp_path: Path, service: RunService
) -> None:
    run_id = await training_run(service, tmp_path)
    long_ago = time.time() - 3600
    write_log(
        service,
        run_id,
        [
            line(ev.METRIC, 7, ts=long_ago, iteration=99),  # an earlier run in this folder
            line(ev.TRAINER_READY, 1, device="cpu"),  # already stored
            line(ev.METRIC, 2, iteration=1, loss=0.9),  # already stored
            line(ev.METRIC, 3, iteration=2, loss=0.8),
            line(ev.METRIC, 3, attempt=2, iteration=5),  # not this attempt
            line(ev.CHECKPOINT, 4, iteration=2, path="/out/checkpoint_00002.pth.tar"),
            line(ev.METRIC, 5, iteration=3, loss=0.7),
            '{"type": "metric", "ts": 1.0, "da',  # torn by the crash
        ],
    )
    assert await reconcile(service, None) == [run_id]
    events = await events_of(service, run_id)
    assert_gapless(events)
    assert [(e.type, e.data.get("n")) for e in events[2:]] == [
        (ev.TRAINER_READY, 1),
        (ev.METRIC, 2),
        (ev.METRIC, 3),
        (ev.CHECKPOINT, 4),
        (ev.METRIC, 5),
        (ev.FAILED, None),
    ]
    assert events[-1].data == INTERRUPTED
    summary = service.get(run_id)
    assert summary.state is State.ERROR
    assert summary.iteration == 3
    assert summary.last_checkpoint == "/out/checkpoint_00002.pth.tar"
    assert "resume" in summary.run.legal_commands()

    # Idempotent: nothing is left in Training, nothing is appended twice.
    assert await reconcile(service, None) == []
    assert len(await events_of(service, run_id)) == len(events)
    # A replay of the log agrees with the live state.
    replayed = RunService(service.store)
    await replayed.load()
    assert replayed.get(run_id).to_json() == summary.to_json()


async def test_a_final_event_in_the_file_ends_the_run_as_the_trainer_reported(
    tmp_path: Path, service: RunService
) -> None:
    run_id = await training_run(service, tmp_path)
    write_log(
        service,
        run_id,
        [
            line(ev.METRIC, 3, iteration=2, loss=0.8),
            line(ev.STOPPED, 4, iteration=2, checkpoint="/out/checkpoint_00002.pth.tar"),
            line(ev.LOG, 5, level="info", message="after the end"),
        ],
    )
    await reconcile(service)
    types = [e.type for e in await events_of(service, run_id)]
    assert types[-2:] == [ev.METRIC, ev.STOPPED]
    assert service.get(run_id).state is State.STOPPED


@pytest.mark.parametrize(
    ("stop_data", "interrupted"),
    [
        (None, True),  # the trainer stopped because its server went away
        ({"deadline_s": 30}, False),  # the user had asked for the stop
        ({"deadline_s": 30, "reason": "server_shutdown"}, True),
    ],
)
async def test_a_recovered_stop_says_whether_the_server_caused_it(
    tmp_path: Path, service: RunService, stop_data: dict[str, Any] | None, interrupted: bool
) -> None:
    run_id = await training_run(service, tmp_path)
    if stop_data is not None:
        await service.command(run_id, "stop", stop_data)
    write_log(service, run_id, [line(ev.STOPPED, 3, iteration=1, checkpoint="/out/c1")])
    await reconcile(service)
    [stopped] = [e for e in await events_of(service, run_id) if e.type == ev.STOPPED]
    assert bool(stopped.data.get("interrupted")) is interrupted
    shown = service.get(run_id).to_json()
    assert (shown["interrupted"] is not None) is interrupted
    assert shown["resumable_from"] == {"path": "/out/c1", "iteration": 1}


async def test_a_stop_under_way_ends_stopped_not_interrupted(
    tmp_path: Path, service: RunService
) -> None:
    run_id = await training_run(service, tmp_path)
    await service.record(run_id, [NewEvent(ev.CHECKPOINT, {"iteration": 1, "path": "/out/c1"})])
    await service.command(run_id, "stop", {"deadline_s": 30})
    await reconcile(service)  # no log file: the trainer never confirmed the stop
    last = (await events_of(service, run_id))[-1]
    assert (last.type, last.data["forced"], last.data["checkpoint"]) == (
        ev.STOPPED,
        True,
        "/out/c1",
    )
    shown = service.get(run_id).to_json()
    assert shown["state"] == State.STOPPED and shown["interrupted"] is None


async def test_without_a_log_file_the_run_is_just_interrupted(
    tmp_path: Path, service: RunService
) -> None:
    run_id = await training_run(service, tmp_path)
    other = (await runspec.create_run(service, request(tmp_path / "idle"))).run_id
    assert await reconcile(service) == [run_id]
    assert service.get(run_id).state is State.ERROR
    assert service.get(run_id).error == {
        "message": INTERRUPTED["message"],
        "hint": INTERRUPTED["hint"],
        **dict.fromkeys(("exit_code", "cause", "key", "suggested")),
    }
    assert service.get(other).state is State.IDLE


async def test_runs_the_supervisor_is_training_are_left_alone(
    tmp_path: Path, service: RunService
) -> None:
    run_id = await training_run(service, tmp_path)

    class Live:
        def training(self) -> list[str]:
            return [run_id]

    assert await reconcile(service, Live()) == []  # type: ignore[arg-type]
    assert service.get(run_id).state is State.TRAINING


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


async def test_a_trainer_that_outlived_its_server_is_stopped(
    tmp_path: Path, service: RunService
) -> None:
    run_id = await training_run(service, tmp_path)
    orphan = sleeper()
    try:
        started = process_start_time(orphan.pid)
        assert started is not None
        data = {"level": "info", "message": "trainer", "pid": orphan.pid, "pid_started": started}
        await service.record(run_id, [NewEvent(ev.LOG, data)])
        await reconcile(service, kill_grace_s=5.0)
        assert orphan.wait(timeout=5) == -signal.SIGTERM
    finally:
        orphan.kill()
        orphan.wait()
    assert service.get(run_id).state is State.ERROR


# --- a real crash -----------------------------------------------------------------------------

SERVER = """
import asyncio, json, sys
from backend import runspec
from backend.runs import RunService
from backend.store import EventStore
from backend.execution.supervisor import Supervisor

async def main(db, body):
    store = await EventStore.open(db)
    service = RunService(store)
    await service.load()
    event = await runspec.create_run(service, json.loads(body))
    supervisor = Supervisor(service, job_options=json.loads(sys.argv[3]))
    await supervisor.start(event.run_id)
    info = {"run_id": event.run_id, "pid": supervisor.pid(event.run_id)}
    print(json.dumps(info | {"log_path": event.data["log_path"]}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def lines_in(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def crash_a_server(tmp_path: Path) -> dict[str, Any]:
    """Train in a server process, then kill it and its trainer, so that the trainer's
    last events reached events.jsonl but not the database."""
    body = json.dumps(request(tmp_path, ITERATION_TOTAL=40, ITERATION_SAVE=4))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path / "events.db"), body, json.dumps(JOB_OPTIONS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert server.stdout is not None
        info: dict[str, Any] = json.loads(server.stdout.readline())
        events_file = Path(info["log_path"]) / EVENTS_FILE
        wait_until(lambda: any('"checkpoint"' in x for x in lines_in(events_file)), "no checkpoint")
        os.kill(server.pid, signal.SIGSTOP)  # it stops storing; the trainer goes on
        seen = len(lines_in(events_file))
        wait_until(lambda: len(lines_in(events_file)) >= seen + 3, "the trainer stalled")
        os.kill(info["pid"], signal.SIGKILL)
    finally:
        server.kill()
        server.wait()
    return info


@pytest.mark.slow
async def test_a_crashed_server_is_reconciled_and_the_run_resumes(tmp_path: Path) -> None:
    info = await asyncio.to_thread(crash_a_server, tmp_path)
    run_id = info["run_id"]
    store = await EventStore.open(tmp_path / "events.db")
    try:
        service = RunService(store)
        await service.load()
        assert service.get(run_id).state is State.TRAINING
        stored = len(await events_of(service, run_id))
        file_lines = [x for x in lines_in(Path(info["log_path"]) / EVENTS_FILE) if parses(x)]

        assert await reconcile(service) == [run_id]
        events = await events_of(service, run_id)
        assert_gapless(events)
        counters = [e.data["n"] for e in events if "n" in e.data]
        assert counters == list(range(1, len(file_lines) + 1)), "every line once, in order"
        assert len(events) > stored + 1, "events were recovered from the file"
        assert events[-1].type == ev.FAILED and events[-1].data["interrupted"] is True
        assert await reconcile(service) == []
        checkpoint = service.get(run_id).last_checkpoint
        assert checkpoint is not None

        supervisor = Supervisor(service, job_options=JOB_OPTIONS)
        resumed = await supervisor.resume(run_id)
        assert resumed.data == {"attempt": 2, "checkpoint": checkpoint}
        assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.COMPLETE
        assert service.get(run_id).iteration == 40
    finally:
        await store.close()
