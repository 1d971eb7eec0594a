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
    assert live.error == {
        "message": "boom",
        "hint": "lower BASE_LR",
        **dict.fromkeys(("exit_code", "cause", "key", "suggested")),
    }
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


def ckpt(iteration: int) -> NewEvent:
    return NewEvent(ev.CHECKPOINT, {"iteration": iteration, "path": f"/o/c{iteration}"})


STOP_ON_SHUTDOWN = NewEvent(ev.STOP_REQUESTED, {"deadline_s": 30, "reason": "server_shutdown"})
USER_STOP = NewEvent(ev.STOP_REQUESTED, {"deadline_s": 30})
RESUMED = NewEvent(ev.RESUMED, {"attempt": 2, "checkpoint": "/o/c20"})

# One row per ending: (events after `started`, interrupted?, resumable_from's iteration).
ENDINGS = [
    ([ckpt(10), NewEvent(ev.FAILED, {"message": "x", "interrupted": True})], True, 10),
    ([ckpt(10), NewEvent(ev.STOPPED, {"iteration": 12, "interrupted": True})], True, 10),
    ([ckpt(10), STOP_ON_SHUTDOWN, NewEvent(ev.STOPPED, {"iteration": 12})], True, 10),
    ([ckpt(10), USER_STOP, NewEvent(ev.STOPPED, {"iteration": 12})], False, 10),
    ([NewEvent(ev.FAILED, {"message": "diverged", "iteration": 3})], False, None),
    ([ckpt(10), ckpt(20), NewEvent(ev.COMPLETED, {"iteration": 24})], False, 20),
    # The final event's checkpoint counts too (a forced stop names the latest one).
    ([NewEvent(ev.STOPPED, {"iteration": 7, "checkpoint": "/o/c7", "forced": True})], False, 7),
    # A resume clears the interruption; the checkpoints stay the run's.
    (
        [ckpt(20), NewEvent(ev.FAILED, {"interrupted": True}), RESUMED, ckpt(10), ckpt(20)],
        False,
        20,
    ),
]


@pytest.mark.parametrize(("after", "interrupted", "iteration"), ENDINGS)
async def test_interrupted_and_resumable_from(
    after: list[NewEvent], interrupted: bool, iteration: int | None
) -> None:
    store = await EventStore.open(":memory:")
    service = RunService(store)
    run_id = (await service.create({"name": "r"})).run_id
    await service.command(run_id, "start", {"attempt": 1})
    for new in after:  # one at a time: a resume is a command, the rest are reports
        if new.type == ev.RESUMED:
            await service.command(run_id, "resume", dict(new.data))
        else:
            await service.record(run_id, [new])
    live = service.get(run_id).to_json()
    assert (live["interrupted"] is not None) is interrupted
    if interrupted:
        assert live["interrupted"]["reason"] == "server_restart"
        assert live["interrupted"]["checkpoint_iteration"] == iteration
    expected = None if iteration is None else {"path": f"/o/c{iteration}", "iteration": iteration}
    assert live["resumable_from"] == expected
    await service.load()  # rebuilt from the log: the same
    assert service.get(run_id).to_json() == live
    await store.close()


async def test_command_ids_are_found_from_the_log_after_a_reload() -> None:
    store = await EventStore.open(":memory:")
    service = RunService(store)
    run_id = (await service.create({"name": "r", "command_id": "c-1"})).run_id
    await service.command(run_id, "start", {"attempt": 1, "command_id": "s-1"})
    await service.command(run_id, "stop", {"deadline_s": 1})  # no id: not indexed
    await service.load()
    found = service.find_command("s-1")
    assert found is not None and found[0].run.run_id == run_id
    assert (found[1].command, found[1].version) == ("start", 2)
    assert service.find_command("c-1")[1].command == "create"  # type: ignore[index]
    assert service.find_command("nope") is None
    assert set(service.get(run_id).commands) == {"c-1", "s-1"}
    await store.close()


async def test_queue_fields_positions_and_a_snapshot_round_trip() -> None:
    from backend.projections import RunSummary

    store = await EventStore.open(":memory:")
    service = RunService(store)
    ids = [(await service.create({"name": n})).run_id for n in "abc"]
    for rank, run_id in zip((2.0, 1.0, 3.0), ids, strict=True):
        await service.command(run_id, "start", {"rank": rank}, alias=ev.QUEUED)
    assert service.queue() == [ids[1], ids[0], ids[2]]
    summaries = [service.get(r) for r in ids]
    assert [s.queue_position for s in summaries] == [2, 1, 3]
    assert [s.to_json()["queue_position"] for s in summaries] == [2, 1, 3]
    assert all(s.to_json()["queued"] for s in summaries)
    await service.command(ids[2], "move", {"rank": 0.5})
    assert service.queue() == [ids[2], ids[1], ids[0]]
    await service.command(ids[1], "dequeue", {"reason": "cancelled"})
    await service.command(ids[0], "start", {"attempt": 1})
    assert service.queue() == [ids[2]] and service.get(ids[2]).queue_position == 1
    started = service.get(ids[0])
    assert not started.queued and started.queue_rank is None and started.queue_position is None
    assert started.attempt_version == 3
    fact = {"executor": "local", "state": "RUNNING"}
    await service.record(ids[0], [NewEvent(ev.JOB_STATE, fact)])
    assert started.to_json()["job_state"] == fact
    # A snapshot carries the flag and the rank; the position is derived, not stored.
    state = service.get(ids[2]).to_state()
    assert "queue_position" not in state and state["queue_rank"] == 0.5
    restored = RunSummary.from_state(state)
    assert restored.queued and restored.run.legal_commands()[:3] == ["start", "dequeue", "move"]
    # A fold from the log agrees with the live models.
    rebuilt = RunService(store)
    await rebuilt.load()
    assert rebuilt.queue() == [ids[2]]
    assert {r: rebuilt.get(r).to_json() for r in ids} == {r: service.get(r).to_json() for r in ids}
    await store.close()
