"""`--auto-resume`: a run that cannot be resumed at start is told why, on the run itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend import events as ev
from backend import runspec
from backend.commands import Commands
from backend.execution.reconcile import auto_resume, reconcile
from backend.execution.supervisor import Supervisor
from backend.fsm.machine import State
from backend.runs import RunService
from backend.store import EventStore
from tests.execution.test_supervisor import JOB_OPTIONS, request

pytestmark = pytest.mark.anyio

# No torch: the child emits metrics until stopped.
SYNTHETIC = {**JOB_OPTIONS, "synthetic": {"rate": 50}}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunService]:
    store = await EventStore.open(tmp_path / "events.db")
    svc = RunService(store)
    await svc.load()
    yield svc
    await store.close()


async def interrupted_run(service: RunService, tmp_path: Path) -> str:
    """A run a dead server left in Training; reconcile ends it as interrupted."""
    run_id = (await runspec.create_run(service, request(tmp_path))).run_id
    await service.command(run_id, "start", {"attempt": 1})
    return run_id


async def test_a_refused_auto_resume_is_a_warning_on_the_run(
    tmp_path: Path, service: RunService
) -> None:
    first = await interrupted_run(service, tmp_path / "a")
    second = await interrupted_run(service, tmp_path / "b")
    assert sorted(await reconcile(service)) == sorted([first, second])
    supervisor = Supervisor(service, job_options=SYNTHETIC, max_concurrent=1, queue=False)
    commands = Commands(service, supervisor, check_paths=False)
    try:
        outcomes = await auto_resume(commands)
        # One slot: the oldest interruption resumes, the other is refused (busy).
        resumed = [run for run, outcome in outcomes.items() if outcome.ok]
        [refused] = [run for run, outcome in outcomes.items() if not outcome.ok]
        assert resumed == [first] and refused == second
        assert service.get(first).state is State.TRAINING
        assert service.get(second).state is State.ERROR  # left as it was, resumable
        last = (await service.store.read_run(second))[-1]
        assert last.type == ev.LOG and last.data["level"] == "warning"
        why = outcomes[second].body["error"]["message"]
        assert last.data["message"] == f"not resumed automatically: {why}"
        assert "resume" in service.get(second).run.legal_commands()
        assert service.get(second).to_json()["interrupted"] is not None  # tried at next start
    finally:
        await supervisor.shutdown()
