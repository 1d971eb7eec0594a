from __future__ import annotations

import pytest

from backend import events as ev
from backend.events import NewEvent
from backend.fsm import State
from backend.projections import summarize
from backend.runs import RunService, UnknownRun
from backend.store import EventStore

pytestmark = pytest.mark.anyio


async def test_summary_follows_a_run_and_rebuilds_from_the_log() -> None:
    store = await EventStore.open(":memory:")
    service = RunService(store)
    created = await service.create(
        {"name": "mito", "total_iterations": 100, "output_path": "/o", "log_path": "/l"}
    )
    run_id = created.run_id
    await service.command(run_id, "start", {"attempt": 1})
    await service.record(
        run_id,
        [
            NewEvent(ev.METRIC, {"iteration": 1, "loss": 0.9, "lr": 0.1}),
            NewEvent(ev.PROGRESS, {"iteration": 10, "total": 100, "its_per_s": 5, "eta_s": 18}),
            NewEvent(ev.VALIDATION, {"iteration": 10, "dice": 0.5}),
            NewEvent(ev.VALIDATION, {"iteration": 20, "dice": 0.7}),
            NewEvent(ev.VALIDATION, {"iteration": 30, "dice": 0.6}),
            NewEvent(ev.CHECKPOINT, {"iteration": 30, "path": "/o/checkpoint_00030.pth.tar"}),
            NewEvent(ev.FAILED, {"message": "boom", "hint": "lower BASE_LR", "iteration": 31}),
        ],
    )
    live = service.get(run_id)
    assert live.state is State.ERROR
    assert (live.name, live.total, live.iteration, live.last_loss) == ("mito", 100, 31, 0.9)
    assert (live.best_dice, live.best_iteration) == (0.7, 20)
    assert live.last_checkpoint == "/o/checkpoint_00030.pth.tar"
    assert live.error == {"message": "boom", "hint": "lower BASE_LR", "exit_code": None}
    assert live.to_json()["legal_commands"] == ["resume"]

    rebuilt = RunService(store)
    await rebuilt.load()
    assert rebuilt.get(run_id).to_json() == live.to_json()
    assert summarize(await store.read_run(run_id), run_id).to_json() == live.to_json()

    await service.command(run_id, "resume")
    assert service.get(run_id).error is None and service.get(run_id).attempts == 2
    with pytest.raises(UnknownRun, match="no run with id 'nope'"):
        service.get("nope")
    await store.close()
