"""The executor contract: one suite that every executor passes, whatever runs the attempt.

A module runs it for one executor by importing the tests and defining the `executor_harness`
fixture (see `tests/execution/test_contract_local.py`):

    from tests.execution.contract import *  # noqa: F403

    @pytest.fixture
    def executor_harness(...) -> Harness:
        return Harness(make=make_my_executor, kill_job=kill_my_job)

`make` must be a module-level function (the crash test starts a server process that
imports it by name); `kill_job` kills an attempt behind Trainboard's back, from its launch
handle. Everything else is real: a SQLite store, a `RunService`, a `Supervisor` on that
executor, the tiny 2D U-Net trainer.

The cases: start -> Complete; stop -> a checkpoint and Stopped, then a resume exactly from
it -> Complete; the server SIGKILLed mid-run, then a fresh service and supervisor on the
same store reconcile it (every line the attempt wrote stored once) and it resumes to
Complete; the job killed behind our back -> Error with a hint.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend import events as ev
from backend import runspec
from backend.events import Event
from backend.execution.executor import Executor
from backend.execution.job import EVENTS_FILE
from backend.execution.reconcile import reconcile
from backend.execution.supervisor import Supervisor
from backend.fsm.machine import State
from backend.runs import RunService
from backend.store import EventStore
from tests.trainer.helpers import tiny_config

__all__ = [
    "Harness",
    "contract_service",
    "contract_supervisor",
    "pytestmark",
    "test_contract_a_job_killed_behind_our_back_is_an_error_with_a_hint",
    "test_contract_a_server_crash_is_reconciled_and_the_run_resumes",
    "test_contract_start_trains_to_complete",
    "test_contract_stop_checkpoints_and_resume_is_exact",
]

pytestmark = pytest.mark.anyio

JOB_OPTIONS = {"flush_interval": 0.05, "threads": 1}
TIMEOUT = 180.0  # generous: the machine is shared; a healthy tiny run takes seconds
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Harness:
    """An executor under test, and how to kill one of its jobs behind our back."""

    make: Callable[[Path], Executor]  # a module-level function of the work folder
    kill_job: Callable[[Mapping[str, Any]], None]  # from the attempt's launch handle


# --- helpers ----------------------------------------------------------------------------


def request(tmp_path: Path, **solver: Any) -> dict[str, Any]:
    tree = tiny_config(tmp_path / "data", tmp_path / "out", **solver)
    return {"config": yaml.safe_dump(tree), "name": "contract"}


async def open_service(db: Path) -> RunService:
    service = RunService(await EventStore.open(db))
    await service.load()
    return service


async def stored(service: RunService, run_id: str) -> list[Event]:
    return await service.store.read_run(run_id)


async def first_of(service: RunService, run_id: str, type_: str) -> Event:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for event in await stored(service, run_id):
            if event.type == type_:
                return event
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {type_} event in {TIMEOUT}s")


async def finish(supervisor: Supervisor, run_id: str) -> State | None:
    return await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT)


def launch_handles(events: list[Event]) -> list[dict[str, Any]]:
    return [dict(e.data) for e in events if e.type == ev.LOG and "executor" in e.data]


def assert_each_line_once(events: list[Event]) -> None:
    """Gapless versions, and each attempt's counter 1..n in order: nothing lost or doubled."""
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    by_attempt: dict[int, list[int]] = {}
    for e in events:
        if isinstance(e.data.get("n"), int):
            by_attempt.setdefault(e.data["attempt"], []).append(e.data["n"])
    for attempt, counters in by_attempt.items():
        assert counters == list(range(1, len(counters) + 1)), f"attempt {attempt}"


@pytest.fixture
async def contract_service(tmp_path: Path) -> AsyncIterator[RunService]:
    svc = await open_service(tmp_path / "events.db")
    yield svc
    await svc.store.close()


@pytest.fixture
async def contract_supervisor(
    tmp_path: Path, contract_service: RunService, executor_harness: Harness
) -> AsyncIterator[Supervisor]:
    sup = Supervisor(
        contract_service,
        executor=executor_harness.make(tmp_path),
        job_options=JOB_OPTIONS,
        stop_grace_s=60.0,
        kill_grace_s=10.0,
    )
    yield sup
    await sup.shutdown()


# --- the contract -----------------------------------------------------------------------


@pytest.mark.slow
async def test_contract_start_trains_to_complete(
    tmp_path: Path, contract_service: RunService, contract_supervisor: Supervisor
) -> None:
    service, supervisor = contract_service, contract_supervisor
    run_id = (await runspec.create_run(service, request(tmp_path, ITERATION_TOTAL=4))).run_id
    assert (await supervisor.start(run_id)).type == ev.STARTED
    assert await finish(supervisor, run_id) is State.COMPLETE
    events = await stored(service, run_id)
    assert_each_line_once(events)
    [handle] = launch_handles(events)
    assert handle["executor"] == supervisor.executor.name
    assert [e.type for e in events].count(ev.COMPLETED) == 1
    assert service.get(run_id).iteration == 4 and supervisor.training() == []


@pytest.mark.slow
async def test_contract_stop_checkpoints_and_resume_is_exact(
    tmp_path: Path, contract_service: RunService, contract_supervisor: Supervisor
) -> None:
    service, supervisor = contract_service, contract_supervisor
    body = request(tmp_path, ITERATION_TOTAL=400, ITERATION_SAVE=1000)
    run_id = (await runspec.create_run(service, body)).run_id
    await supervisor.start(run_id)
    await first_of(service, run_id, ev.METRIC)
    await supervisor.stop(run_id)
    assert await finish(supervisor, run_id) is State.STOPPED
    stopped = (await stored(service, run_id))[-1]
    assert stopped.type == ev.STOPPED and not stopped.data.get("forced")
    checkpoint = stopped.data["checkpoint"]
    assert checkpoint and await asyncio.to_thread(Path(checkpoint).is_file)
    iteration = stopped.data["iteration"]
    assert 0 < iteration < 400

    resumed = await supervisor.resume(run_id)
    assert resumed.data == {"attempt": 2, "checkpoint": checkpoint}
    ready = [e for e in await stored(service, run_id) if e.type == ev.TRAINER_READY]
    while len(ready) < 2:
        await asyncio.sleep(0.05)
        ready = [e for e in await stored(service, run_id) if e.type == ev.TRAINER_READY]
    assert ready[-1].data["start_iteration"] == iteration  # exactly where it stopped
    await supervisor.stop(run_id)
    assert await finish(supervisor, run_id) is State.STOPPED
    events = await stored(service, run_id)
    assert_each_line_once(events)
    after = events[[e.type for e in events].index(ev.RESUMED) :]
    metrics = [e.data["iteration"] for e in after if e.type == ev.METRIC]
    assert not metrics or metrics[0] == iteration + 1


_SERVER = """
import asyncio, importlib, json, sys
from pathlib import Path
from backend import runspec
from backend.runs import RunService
from backend.store import EventStore
from backend.execution.supervisor import Supervisor

async def main(db, body, options, maker, work):
    module, name = maker.split(":")
    make = getattr(importlib.import_module(module), name)
    store = await EventStore.open(db)
    service = RunService(store)
    await service.load()
    event = await runspec.create_run(service, json.loads(body))
    supervisor = Supervisor(service, executor=make(Path(work)), job_options=json.loads(options))
    await supervisor.start(event.run_id)
    print(json.dumps({"run_id": event.run_id, "log_path": event.data["log_path"]}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:6]))
"""


def crash_a_server(tmp_path: Path, maker: str) -> dict[str, Any]:
    """A server process trains a run on the executor, then dies by SIGKILL mid-run (the
    attempt is left to itself: a local child stops on its own, a batch job goes on)."""
    body = json.dumps(request(tmp_path, ITERATION_TOTAL=60, ITERATION_SAVE=4))
    args = [str(tmp_path / "events.db"), body, json.dumps(JOB_OPTIONS), maker, str(tmp_path)]
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert server.stdout is not None
        info: dict[str, Any] = json.loads(server.stdout.readline())
        spool = Path(info["log_path"]) / EVENTS_FILE
        deadline = time.monotonic() + TIMEOUT
        while not (spool.is_file() and '"checkpoint"' in spool.read_text()):
            if time.monotonic() > deadline:
                raise TimeoutError("the attempt wrote no checkpoint")
            time.sleep(0.05)
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    return info


@pytest.mark.slow
async def test_contract_a_server_crash_is_reconciled_and_the_run_resumes(
    tmp_path: Path, executor_harness: Harness
) -> None:
    make = executor_harness.make
    maker = f"{make.__module__}:{make.__qualname__}"
    info = await asyncio.to_thread(crash_a_server, tmp_path, maker)
    run_id = info["run_id"]
    service = await open_service(tmp_path / "events.db")  # the restarted server
    try:
        assert service.get(run_id).state is State.TRAINING
        supervisor = Supervisor(
            service, executor=make(tmp_path), job_options=JOB_OPTIONS, kill_grace_s=10.0
        )
        assert await reconcile(service, supervisor, kill_grace_s=10.0) == [run_id]
        state = await finish(supervisor, run_id)  # followed again, or ended by reconcile
        assert state in (State.COMPLETE, State.STOPPED, State.ERROR)
        assert await reconcile(service, supervisor) == []  # idempotent
        events = await stored(service, run_id)
        assert_each_line_once(events)
        spool = Path(info["log_path"]) / EVENTS_FILE
        written = [json.loads(line) for line in spool.read_text().splitlines() if line]
        stored_n = {(e.data["attempt"], e.data["n"]) for e in events if "n" in e.data}
        assert {(r["data"]["attempt"], r["data"]["n"]) for r in written} <= stored_n
        if state is not State.COMPLETE:
            checkpoint = service.get(run_id).last_checkpoint
            assert checkpoint is not None
            resumed = await supervisor.resume(run_id)
            assert resumed.data["checkpoint"] == checkpoint
            assert await finish(supervisor, run_id) is State.COMPLETE
        assert service.get(run_id).iteration == 60
        await supervisor.shutdown()
    finally:
        await service.store.close()


@pytest.mark.slow
async def test_contract_a_job_killed_behind_our_back_is_an_error_with_a_hint(
    tmp_path: Path,
    contract_service: RunService,
    contract_supervisor: Supervisor,
    executor_harness: Harness,
) -> None:
    service, supervisor = contract_service, contract_supervisor
    body = request(tmp_path, ITERATION_TOTAL=100_000, ITERATION_SAVE=1000)
    run_id = (await runspec.create_run(service, body)).run_id
    await supervisor.start(run_id)
    await first_of(service, run_id, ev.METRIC)
    [handle] = launch_handles(await stored(service, run_id))
    executor_harness.kill_job(handle)
    assert await finish(supervisor, run_id) is State.ERROR
    failed = (await stored(service, run_id))[-1]
    assert failed.type == ev.FAILED
    assert failed.data["message"] and failed.data["hint"]
    assert service.get(run_id).error is not None
    assert "resume" in service.get(run_id).run.legal_commands()
