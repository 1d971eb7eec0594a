"""The supervisor with real spawned trainer children training a tiny 2D U-Net."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend import events as ev
from backend import runspec
from backend.events import Event
from backend.execution.executor import Slot
from backend.execution.local import _receive
from backend.execution.supervisor import Supervisor, _Run, explain_exit
from backend.fsm.machine import IllegalCommand, State
from backend.runs import RunService
from backend.store import EventStore
from tests.trainer.helpers import tiny_config

pytestmark = pytest.mark.anyio

# Small flushes so the tests see events quickly; one torch thread each (2 shared cores).
JOB_OPTIONS = {"flush_interval": 0.05, "threads": 1}
TIMEOUT = 120.0  # generous: the machine is shared; a healthy run takes seconds


def request(tmp_path: Path, **solver: Any) -> dict[str, Any]:
    tree = tiny_config(tmp_path / "data", tmp_path / "out", **solver)
    return {"config": yaml.safe_dump(tree), "name": "tiny"}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunService]:
    store = await EventStore.open(tmp_path / "events.db")
    svc = RunService(store)
    await svc.load()
    yield svc
    await store.close()


@pytest.fixture
async def supervisor(service: RunService) -> AsyncIterator[Supervisor]:
    sup = Supervisor(service, job_options=JOB_OPTIONS, stop_grace_s=20.0, kill_grace_s=5.0)
    yield sup
    await sup.shutdown()


async def create(service: RunService, tmp_path: Path, **solver: Any) -> str:
    event = await runspec.create_run(service, request(tmp_path, **solver))
    return event.run_id


async def events_of(service: RunService, run_id: str) -> list[Event]:
    return await service.store.read_run(run_id)


async def wait_for(service: RunService, run_id: str, type_: str) -> Event:
    """The run's first event of this type, waiting for it to be stored."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for event in await events_of(service, run_id):
            if event.type == type_:
                return event
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no {type_} event in {TIMEOUT}s")


async def finish(supervisor: Supervisor, run_id: str) -> State | None:
    return await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT)


def is_file(path: str) -> bool:
    return Path(path).is_file()


def assert_gapless(events: list[Event]) -> None:
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)


# --- the lifecycle with a real child --------------------------------------------------------


@pytest.mark.slow
async def test_start_trains_to_complete(
    tmp_path: Path, service: RunService, supervisor: Supervisor
) -> None:
    run_id = await create(service, tmp_path)
    started = await supervisor.start(run_id)
    assert started.type == ev.STARTED and started.data == {"attempt": 1}
    assert supervisor.training() == [run_id]
    assert await finish(supervisor, run_id) is State.COMPLETE
    assert supervisor.training() == []
    events = await events_of(service, run_id)
    assert_gapless(events)
    types = [e.type for e in events]
    assert types[:3] == [ev.CREATED, ev.STARTED, ev.LOG]  # the log names the child's pid
    assert events[2].data["pid"] > 0
    assert types[-1] == ev.COMPLETED and types.count(ev.COMPLETED) == 1
    assert {ev.TRAINER_READY, ev.METRIC, ev.PROGRESS, ev.CHECKPOINT, ev.VALIDATION} <= set(types)
    # Trainer events keep the child's counter, gapless: nothing lost on the way.
    counters = [e.data["n"] for e in events if "n" in e.data]
    assert counters == list(range(1, len(counters) + 1))
    summary = service.get(run_id)
    assert summary.iteration == 24 and summary.last_checkpoint
    # A finished run accepts neither start nor resume, and nothing is written.
    for command in (supervisor.start, supervisor.resume):
        with pytest.raises(IllegalCommand):
            await command(run_id)
    assert len(await events_of(service, run_id)) == len(events)


@pytest.mark.slow
async def test_stop_saves_a_checkpoint_and_resume_completes(
    tmp_path: Path, service: RunService, supervisor: Supervisor
) -> None:
    run_id = await create(service, tmp_path)
    other = await create(service, tmp_path / "other")
    await supervisor.start(run_id)
    # One slot: the second start queues the run (Idle, queued) and a resume is refused.
    queued = await supervisor.start(other)
    assert queued.type == ev.QUEUED and service.get(other).queued
    assert service.get(other).state is State.IDLE and service.get(other).queue_position == 1
    await supervisor.dequeue(other)
    assert not service.get(other).queued

    await wait_for(service, run_id, ev.METRIC)
    requested = await supervisor.stop(run_id)
    assert requested.type == ev.STOP_REQUESTED and requested.data == {"deadline_s": 20.0}
    assert service.get(run_id).run.stopping
    with pytest.raises(IllegalCommand):  # a stop is already under way
        await supervisor.stop(run_id)
    assert await finish(supervisor, run_id) is State.STOPPED
    stopped = (await events_of(service, run_id))[-1]
    assert stopped.type == ev.STOPPED and not stopped.data.get("forced")
    assert stopped.data["checkpoint"] and is_file(stopped.data["checkpoint"])
    assert ev.STOP_ESCALATED not in [e.type for e in await events_of(service, run_id)]

    resumed = await supervisor.resume(run_id)
    assert resumed.data == {"attempt": 2, "checkpoint": stopped.data["checkpoint"]}
    assert await finish(supervisor, run_id) is State.COMPLETE
    events = await events_of(service, run_id)
    assert_gapless(events)
    ready = [e for e in events if e.type == ev.TRAINER_READY]
    assert ready[-1].data["attempt"] == 2
    assert ready[-1].data["start_iteration"] == stopped.data["iteration"]
    assert events[-1].type == ev.COMPLETED and events[-1].data["iteration"] == 24
    assert service.get(run_id).attempts == 2


@pytest.mark.slow
async def test_a_child_killed_by_sigkill_is_an_error_with_the_oom_hint(
    tmp_path: Path, service: RunService, supervisor: Supervisor
) -> None:
    run_id = await create(service, tmp_path, ITERATION_TOTAL=2000)
    await supervisor.start(run_id)
    await wait_for(service, run_id, ev.METRIC)
    pid = supervisor.pid(run_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert await finish(supervisor, run_id) is State.ERROR
    failed = (await events_of(service, run_id))[-1]
    assert failed.type == ev.FAILED
    assert failed.data["exit_code"] == -9
    assert "out of memory" in failed.data["hint"]
    assert "SOLVER.SAMPLES_PER_BATCH" in failed.data["hint"]
    assert service.get(run_id).error == {
        "message": failed.data["message"],
        "hint": failed.data["hint"],
        "exit_code": -9,
        **dict.fromkeys(("cause", "key", "suggested")),
    }
    assert "resume" in service.get(run_id).run.legal_commands()


@pytest.mark.slow
async def test_a_child_that_does_not_stop_is_terminated_then_killed(
    tmp_path: Path, service: RunService
) -> None:
    supervisor = Supervisor(service, job_options=JOB_OPTIONS, stop_grace_s=0.5, kill_grace_s=0.5)
    run_id = await create(service, tmp_path, ITERATION_TOTAL=2000)
    await supervisor.start(run_id)
    await wait_for(service, run_id, ev.METRIC)
    pid = supervisor.pid(run_id)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # frozen: it can answer neither the flag nor SIGTERM
    t0 = time.monotonic()
    await supervisor.stop(run_id)
    assert await finish(supervisor, run_id) is State.STOPPED
    assert time.monotonic() - t0 >= 1.0
    events = await events_of(service, run_id)
    assert_gapless(events)
    tail = events[-4:]
    assert [e.type for e in tail] == [
        ev.STOP_REQUESTED,
        ev.STOP_ESCALATED,
        ev.STOP_ESCALATED,
        ev.STOPPED,
    ]
    term, kill, stopped = (e.data for e in tail[1:])
    assert term["signal"] == "SIGTERM" and term["after_s"] >= 0.5
    assert kill["signal"] == "SIGKILL" and kill["after_s"] >= 1.0
    assert stopped["forced"] is True and stopped["exit_code"] == -9
    assert stopped["checkpoint"] == service.get(run_id).last_checkpoint
    await supervisor.shutdown()


@pytest.mark.slow
async def test_shutdown_stops_children_gracefully(tmp_path: Path, service: RunService) -> None:
    supervisor = Supervisor(service, job_options=JOB_OPTIONS)
    run_id = await create(service, tmp_path, ITERATION_TOTAL=2000)
    await supervisor.start(run_id)
    await wait_for(service, run_id, ev.METRIC)
    await asyncio.wait_for(supervisor.shutdown(), TIMEOUT)
    assert supervisor.training() == []
    assert service.get(run_id).state is State.STOPPED
    stopped = (await events_of(service, run_id))[-1]
    assert stopped.data["checkpoint"] and not stopped.data.get("forced")
    with pytest.raises(RuntimeError):
        await supervisor.resume(run_id)


# --- plumbing, without a child --------------------------------------------------------------


async def test_illegal_commands_write_nothing(
    tmp_path: Path, service: RunService, supervisor: Supervisor
) -> None:
    run_id = await create(service, tmp_path)
    for command in (supervisor.stop, supervisor.resume):
        with pytest.raises(IllegalCommand):
            await command(run_id)
    assert len(await events_of(service, run_id)) == 1
    assert supervisor.training() == []


async def test_events_after_the_final_one_are_dropped(
    tmp_path: Path, service: RunService, supervisor: Supervisor
) -> None:
    run_id = await create(service, tmp_path)
    await service.command(run_id, "start", {"attempt": 1})  # as if a child had been spawned
    child = _Run(run_id, 1, Slot(0, ("cpu",)))
    now = time.time()
    await supervisor._ingest(
        child,
        [
            (ev.METRIC, {"iteration": 1, "loss": 0.5, "attempt": 1, "n": 1}, now),
            ("started", {"attempt": 9}, now),  # not a trainer event: dropped
            "garbage",
            (ev.COMPLETED, {"iteration": 1, "checkpoint": None, "attempt": 1, "n": 2}, now),
            (ev.METRIC, {"iteration": 2, "loss": 0.4, "attempt": 1, "n": 3}, now),
        ],
    )
    await supervisor._ingest(child, [(ev.LOG, {"level": "info", "message": "late"}, now)])
    types = [e.type for e in await events_of(service, run_id)]
    assert types == [ev.CREATED, ev.STARTED, ev.METRIC, ev.COMPLETED]
    assert child.ended and supervisor.training() == []
    child.done.set()  # no process to reap: let the fixture's shutdown return


async def test_stop_without_a_process_ends_the_run_at_once(
    tmp_path: Path, service: RunService, supervisor: Supervisor
) -> None:
    run_id = await create(service, tmp_path)
    await service.command(run_id, "start", {"attempt": 1})  # Training, but no child here
    await supervisor.stop(run_id)
    assert service.get(run_id).state is State.STOPPED
    stopped = (await events_of(service, run_id))[-1]
    assert stopped.data["forced"] is True


def test_exit_codes_are_explained() -> None:
    message, hint = explain_exit(-9)
    assert "SIGKILL" in message and "out of memory" in hint
    assert "SIGSEGV" in explain_exit(-11)[0]
    assert "SIGTERM" in explain_exit(-15)[1]
    assert "code 1" in explain_exit(1)[0]
    assert "bug in the trainer" in explain_exit(0)[1]
    assert "signal 99" in explain_exit(-99)[0]


def test_a_non_json_message_becomes_an_error_log_event() -> None:
    import multiprocessing
    import pickle

    receiving, sending = multiprocessing.Pipe(duplex=False)
    line = b'{"type": "metric", "ts": 1.0, "data": {"loss": 0.5, "attempt": 1, "n": 1}}\n'
    sending.send_bytes(line)
    sending.send_bytes(pickle.dumps([("metric", {"loss": 0.5}, 1.0)]))  # the old wire format
    sending.close()
    assert _receive(receiving) == (True, [("metric", {"loss": 0.5, "attempt": 1, "n": 1}, 1.0)])
    still_open, batch = _receive(receiving)
    assert batch is not None
    [(type_, data, _)] = batch
    assert still_open and type_ == ev.LOG and data["level"] == "error"
    assert "not JSON lines" in data["message"]
    assert _receive(receiving) == (False, None)  # the sender closed its end


def test_the_server_side_modules_never_import_torch() -> None:
    code = (
        "import sys, backend.execution.supervisor, backend.execution.reconcile, backend.runspec,"
        " backend.trainer.cli,"
        " backend.server, backend.api, backend.augment.preview, backend.config,"
        " backend.trainer.synthetic;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
