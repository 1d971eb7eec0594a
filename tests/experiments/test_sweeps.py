"""Sweeps end to end on the real stack: SQLite store, RunService, Supervisor spawning real
trainer children, Commands, SweepService and Optuna.

Most trials run the synthetic trainer (a real spawned child, no torch: it starts in a
fraction of a second and completes after `seconds`); their validation results are
recorded into the trial runs through the real `RunService.record` as a trainer would
report them, from a deterministic objective of the trial number, so pruning is certain.
One sweep trains the tiny 2D U-Net for real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend import events as ev
from backend.commands import Commands, run_id_for
from backend.events import Event, NewEvent
from backend.execution.reconcile import reconcile
from backend.execution.supervisor import Supervisor
from backend.experiments import sweeps as sw
from backend.experiments.study import parse_spec
from backend.experiments.sweep_service import SweepService
from backend.experiments.sweeps import SweepState, SweepSummary
from backend.fsm.machine import State
from backend.readmodels import snapshots
from backend.runs import RunService
from backend.store import EventStore
from tests.trainer.helpers import tiny_config

pytestmark = pytest.mark.anyio
TIMEOUT = 120.0


def synthetic(seconds: float) -> dict[str, Any]:
    return {"flush_interval": 0.05, "synthetic": {"rate": 20, "seconds": seconds}}


@dataclass
class Stack:
    store: EventStore
    service: RunService
    supervisor: Supervisor
    commands: Commands
    sweeps: SweepService

    def trial_runs(self, sweep_id: str) -> list[str]:
        return sorted(
            run_id
            for run_id, s in self.service.runs.items()
            if s.sweep is not None and s.sweep["id"] == sweep_id
        )


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path, options: dict[str, Any], *, max_concurrent: int = 1
) -> AsyncIterator[Stack]:
    """The server's parts as `backend.server` wires them, on `tmp_path/events.db`."""
    store = await EventStore.open(tmp_path / "events.db")
    service = RunService(store)
    await service.load()
    supervisor = Supervisor(
        service,
        max_concurrent=max_concurrent,
        job_options=options,
        stop_grace_s=10.0,
        kill_grace_s=3.0,
    )
    await reconcile(service, supervisor, kill_grace_s=3.0)
    commands = Commands(service, supervisor, base_dir=tmp_path)
    sweeps = SweepService(commands)
    await sweeps.load()
    try:
        yield Stack(store, service, supervisor, commands, sweeps)
    finally:
        await sweeps.close()
        await supervisor.shutdown()
        await store.close()


def validations(s: Stack, dice_of: Callable[[int], list[float]]) -> Callable[[], None]:
    """Report each trial's validations as its trainer would, once it is ready: the Dice
    values `dice_of(number)` at iterations 1, 2, ..."""

    async def report(run_id: str, number: int) -> None:
        for k, dice in enumerate(dice_of(number), start=1):
            data = {"iteration": k, "dice": dice, "loss": 1 - dice, "iou": dice / 2}
            await s.service.record(run_id, [NewEvent(ev.VALIDATION, data)])
            await asyncio.sleep(0.05)

    def on_events(events: list[Event]) -> None:
        for e in events:
            summary = s.service.runs.get(e.run_id)
            if e.type == ev.TRAINER_READY and summary is not None and summary.sweep:
                asyncio.get_running_loop().create_task(report(e.run_id, summary.sweep["number"]))

    return s.service.listen(on_events)


def request(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    tree = tiny_config(tmp_path / "data", Path("out"))
    return {
        "name": "lr sweep",
        "config": yaml.safe_dump(tree),
        "space": {
            "SOLVER.BASE_LR": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "SOLVER.SAMPLES_PER_BATCH": {"type": "choice", "choices": [1, 2]},
        },
        "objective": "max_dice",
        "trials": 3,
        "parallel": 1,
        "sampler": "random",
        "pruner": "none",
        "seed": 3,
        **fields,
    }


async def create(s: Stack, body: dict[str, Any], command_id: str | None = None) -> str:
    outcome = await s.sweeps.run("create", None, body, command_id)
    assert outcome.status == 201, outcome.body
    sweep_id: str = outcome.body["sweep"]["sweep_id"]
    return sweep_id


async def ended(s: Stack, sweep_id: str, within_s: float = TIMEOUT) -> SweepSummary:
    done = (SweepState.COMPLETE, SweepState.STOPPED)
    return await asyncio.wait_for(s.sweeps.wait(sweep_id, lambda x: x.state in done), within_s)


def assert_exact_budget(s: Stack, summary: SweepSummary) -> None:
    """Every trial asked once, told once, with one run each, named by its number."""
    sweep_id = summary.sweep_id
    numbers = [t.number for t in summary.trials]
    assert numbers == list(range(summary.budget))
    expected = sorted(run_id_for(sw.trial_command_id(sweep_id, n)) for n in numbers)
    assert s.trial_runs(sweep_id) == expected
    assert all(t.told for t in summary.trials)


async def stream(s: Stack, sweep_id: str) -> list[Event]:
    return await s.store.read_run(sweep_id)


async def test_a_sweep_completes_with_exactly_its_budget(tmp_path: Path) -> None:
    async with stack(tmp_path, synthetic(1.5)) as s:
        unlisten = validations(s, lambda n: [0.5 + 0.1 * n])
        sweep_id = await create(s, request(tmp_path))
        summary = await ended(s, sweep_id)
        unlisten()
        assert summary.state is SweepState.COMPLETE
        assert_exact_budget(s, summary)
        assert [t.state for t in summary.trials] == ["complete"] * 3
        assert [t.value for t in summary.trials] == pytest.approx([0.5, 0.6, 0.7])
        assert summary.to_json()["best_trial"] == 2
        assert summary.to_json()["best_value"] == pytest.approx(0.7)
        for trial in summary.trials:  # an ordinary run: tagged, in its own folder
            run = s.service.runs[trial.run_id]
            assert run.state is State.COMPLETE
            assert run.sweep == {"id": sweep_id, "number": trial.number, "params": trial.params}
            assert run.output_path == str(tmp_path / "out" / sweep_id / f"trial-{trial.number}")
            [created] = await s.store.read_run(trial.run_id, 0, limit=1)
            assert created.data["tags"] == [f"sweep:{sweep_id}"]
            assert created.data["source"]["overrides"][:2] == [
                "SOLVER.BASE_LR",
                repr(trial.params["SOLVER.BASE_LR"]),
            ]
        types = [e.type for e in await stream(s, sweep_id)]
        assert types == [
            sw.SWEEP_CREATED,
            *[sw.TRIAL_ASKED, sw.TRIAL_TOLD] * 3,
            sw.SWEEP_COMPLETED,
        ]


async def test_the_median_pruner_stops_a_bad_trial_with_reason_pruned(tmp_path: Path) -> None:
    # Trials 0 and 1 are good (0.9 at every step); 2 and 3 are bad from the first step on,
    # below the median of the complete ones: the median pruner stops them.
    curves = {0: [0.8, 0.9], 1: [0.8, 0.9], 2: [0.1, 0.1], 3: [0.2, 0.2]}
    async with stack(tmp_path, synthetic(2.0)) as s:
        unlisten = validations(s, lambda n: curves[n])
        sweep_id = await create(s, request(tmp_path, trials=4, pruner="median"))
        summary = await ended(s, sweep_id)
        unlisten()
        assert_exact_budget(s, summary)
        assert [t.state for t in summary.trials] == ["complete", "complete", "pruned", "pruned"]
        for trial in summary.trials[2:]:
            run = s.service.runs[trial.run_id]
            assert run.state is State.STOPPED and run.stop_reason == "pruned"
            assert run.to_json()["stop_reason"] == "pruned"
        assert summary.to_json()["pruned"] == 2
        assert summary.to_json()["best_value"] == pytest.approx(0.9)


async def test_a_restarted_sweep_continues_with_exactly_its_budget(tmp_path: Path) -> None:
    body = request(tmp_path, trials=3)
    async with stack(tmp_path, synthetic(4.0)) as s:
        unlisten = validations(s, lambda n: [0.3 + 0.1 * n])
        sweep_id = await create(s, body, command_id="restart-sweep")
        await asyncio.wait_for(
            s.sweeps.wait(
                sweep_id, lambda x: len(x.trials) == 2 and _training(s, x.trials[1].run_id)
            ),
            TIMEOUT,
        )
        unlisten()
    # The server stopped mid-trial (trial 1 interrupted): a fresh stack, the same store.
    async with stack(tmp_path, synthetic(1.0)) as s:
        unlisten = validations(s, lambda n: [0.3 + 0.1 * n])
        summary = s.sweeps.get(sweep_id)
        assert summary.state is SweepState.RUNNING and len(summary.trials) == 2
        again = await s.sweeps.run("create", None, body, "restart-sweep")
        assert again.status == 201 and again.body["sweep"]["sweep_id"] == sweep_id
        summary = await ended(s, sweep_id)
        unlisten()
        assert_exact_budget(s, summary)
        assert [t.state for t in summary.trials] == ["complete"] * 3
        interrupted = s.service.runs[summary.trials[1].run_id]
        assert interrupted.attempts == 2  # resumed, not replaced by another trial


async def test_a_crash_between_trial_asked_and_created_makes_the_run_once(tmp_path: Path) -> None:
    # The log a crash leaves: trial 0 asked, its run never created.
    sweep_id = "sweep-0123456789ab"
    async with stack(tmp_path, synthetic(1.0)) as s:
        spec = parse_spec(request(tmp_path, trials=2))
        params = {"SOLVER.BASE_LR": 0.01, "SOLVER.SAMPLES_PER_BATCH": 2}
        spec["output_root"] = str(tmp_path / "out")
        run_id = run_id_for(sw.trial_command_id(sweep_id, 0))
        asked = {"number": 0, "params": params, "run_id": run_id, "system_attrs": {}}
        await s.store.append(
            sweep_id, [NewEvent(sw.SWEEP_CREATED, spec), NewEvent(sw.TRIAL_ASKED, asked)], 0
        )
    async with stack(tmp_path, synthetic(1.0)) as s:
        unlisten = validations(s, lambda n: [0.5])
        summary = await ended(s, sweep_id)
        unlisten()
        assert_exact_budget(s, summary)
        assert s.service.runs[run_id].sweep == {"id": sweep_id, "number": 0, "params": params}


async def test_stop_stops_the_trials_and_resume_goes_on(tmp_path: Path) -> None:
    async with stack(tmp_path, synthetic(3.0)) as s:
        unlisten = validations(s, lambda n: [0.4])
        sweep_id = await create(s, request(tmp_path, trials=2))
        await asyncio.wait_for(
            s.sweeps.wait(sweep_id, lambda x: bool(x.trials) and _training(s, x.trials[0].run_id)),
            TIMEOUT,
        )
        stopped = await s.sweeps.run("stop", sweep_id, {}, "stop-1")
        assert stopped.status == 200 and stopped.body["event"]["type"] == sw.SWEEP_STOP_REQUESTED
        summary = await ended(s, sweep_id)
        assert summary.state is SweepState.STOPPED and len(summary.trials) == 1
        first = s.service.runs[summary.trials[0].run_id]
        assert first.state is State.STOPPED and first.stop_reason == "sweep_stopped"
        assert not summary.trials[0].told  # owed: it resumes with its sweep
        twice = await s.sweeps.run("stop", sweep_id, {}, "stop-1")  # the same id: one answer
        assert twice.status == 200 and twice.body["event"]["seq"] == stopped.body["event"]["seq"]
        refused = await s.sweeps.run("stop", sweep_id, {}, "stop-2")
        assert refused.status == 409 and refused.body["error"]["details"]["legal_commands"] == [
            "resume"
        ]
        resumed = await s.sweeps.run("resume", sweep_id, {}, "resume-1")
        assert resumed.status == 200
        summary = await ended(s, sweep_id)
        unlisten()
        assert summary.state is SweepState.COMPLETE
        assert_exact_budget(s, summary)
        assert s.service.runs[summary.trials[0].run_id].attempts == 2


def _training(s: Stack, run_id: str) -> bool:
    run = s.service.runs.get(run_id)
    return run is not None and run.state is State.TRAINING


@pytest.mark.timeout(600)  # two real trainings: generous on a busy shared machine
async def test_a_sweep_of_the_tiny_unet_trains_for_real(tmp_path: Path) -> None:
    options = {"flush_interval": 0.05, "threads": 1}
    body = request(tmp_path, trials=2, objective="min_val_loss", sampler="tpe")
    body["overrides"] = ["SOLVER.ITERATION_TOTAL", "2", "SOLVER.ITERATION_VAL", "1"]
    body["overrides"] += ["SOLVER.ITERATION_SAVE", "2", "SOLVER.STEPS", "(1, 2)"]
    async with stack(tmp_path, options) as s:
        sweep_id = await create(s, body)
        summary = await ended(s, sweep_id, within_s=540)
        assert summary.state is SweepState.COMPLETE
        assert_exact_budget(s, summary)
        for trial in summary.trials:
            assert trial.state == "complete", trial
            assert [step for step, _ in trial.intermediate] == [1, 2]
            assert trial.value == min(v for _, v in trial.intermediate)


async def test_sweeps_restore_from_their_snapshot_plus_tail(tmp_path: Path) -> None:
    async with stack(tmp_path, synthetic(0.5)) as s:
        unlisten = validations(s, lambda n: [0.6])
        done = await ended(s, await create(s, request(tmp_path, trials=1)))
        s.service.snapshots.extras["sweeps"] = s.sweeps.snapshot_state
        await snapshots.save(s.service)
        # After the snapshot: a second sweep and its first events (the tail).
        later = await create(s, request(tmp_path, trials=1), command_id="after-snapshot")
        await ended(s, later)
        unlisten()
        expected = {sid: x.to_state() for sid, x in s.sweeps.sweeps.items()}
    async with stack(tmp_path, synthetic(0.5)) as s:
        assert {sid: x.to_state() for sid, x in s.sweeps.sweeps.items()} == expected
        tail = len(await s.store.read_run(later))
        assert s.sweeps.restored == (1, tail)  # the first from its snapshot, the later folded
        for sweep_id in expected:  # equal to a fold of the sweep's own events
            folded = sw.fold(await s.store.read_run(sweep_id), sweep_id)
            assert folded.to_state() == expected[sweep_id]
        assert s.sweeps.get(done.sweep_id).state is SweepState.COMPLETE
