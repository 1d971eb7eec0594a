"""The run queue on one supervisor: order, reorder, cancel, a restart mid-queue, slots.

Runs are real spawned children of the synthetic trainer (no torch: they start in a
fraction of a second and emit metrics until stopped), on a real SQLite store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from backend import events as ev
from backend import runspec
from backend.commands import Commands
from backend.execution.scheduler import NoRoom, Scheduler, default_slots, rank_at
from backend.execution.supervisor import Busy, Supervisor
from backend.fsm.machine import IllegalCommand, State
from backend.runs import RunService
from backend.store import EventStore
from tests.trainer.helpers import tiny_config

pytestmark = pytest.mark.anyio

SYNTHETIC = {"flush_interval": 0.05, "synthetic": {"rate": 50, "seconds": 0}}
TIMEOUT = 60.0


async def open_service(db: Path) -> RunService:
    service = RunService(await EventStore.open(db))
    await service.load()
    return service


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunService]:
    svc = await open_service(tmp_path / "events.db")
    yield svc
    await svc.store.close()


async def create(service: RunService, tmp_path: Path, name: str, **system: object) -> str:
    tree = tiny_config(tmp_path / "data", tmp_path / "out" / name)
    tree.setdefault("SYSTEM", {}).update(system)
    request = {"config": yaml.safe_dump(tree), "name": name}
    return (await runspec.create_run(service, request)).run_id


async def types_of(service: RunService, run_id: str) -> list[str]:
    return [e.type for e in await service.store.read_run(run_id)]


async def until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def test_queue_order_reorder_cancel_and_a_restart_mid_queue(tmp_path: Path) -> None:
    service = await open_service(tmp_path / "events.db")
    supervisor = Supervisor(service, max_concurrent=1, job_options=SYNTHETIC, stop_grace_s=10)
    a, b, c, d = [await create(service, tmp_path, name) for name in "abcd"]
    assert (await supervisor.start(a)).type == ev.STARTED
    for run_id in (b, c, d):
        queued = await supervisor.start(run_id)
        assert queued.type == ev.QUEUED
    assert service.queue() == [b, c, d]
    assert [service.get(r).queue_position for r in (b, c, d)] == [1, 2, 3]
    assert service.get(b).run.legal_commands() == ["start", "dequeue", "move"]
    with pytest.raises(IllegalCommand, match="already queued, at position 2"):
        await supervisor.start(c)  # a second start of a queued run writes nothing
    # Reorder: d first, then c before b; cancel b.
    await supervisor.move(d, position=1)
    assert service.queue() == [d, b, c]
    await supervisor.move(c, before=b)
    assert service.queue() == [d, c, b]
    await supervisor.move(d, before=None)  # None: the end
    await supervisor.move(d, position=1)
    assert service.queue() == [d, c, b]
    cancelled = await supervisor.dequeue(b, "cancel-b")
    assert cancelled.data == {"reason": "cancelled", "command_id": "cancel-b"}
    assert service.queue() == [d, c] and not service.get(b).queued
    assert service.get(b).queue_position is None and service.get(b).state is State.IDLE
    with pytest.raises(IllegalCommand, match="not queued"):
        await supervisor.dequeue(b)

    # The slot frees: the first queued run starts, as a start does.
    await supervisor.stop(a)
    await until(lambda: service.get(d).state is State.TRAINING, "d did not start")
    assert service.queue() == [c]
    assert (await types_of(service, d))[:6] == [
        ev.CREATED,
        ev.QUEUED,
        ev.QUEUE_MOVED,
        ev.QUEUE_MOVED,
        ev.QUEUE_MOVED,
        ev.STARTED,
    ]
    started = [e for e in await service.store.read_run(d) if e.type == ev.STARTED]
    assert [e.data for e in started] == [{"attempt": 1}]
    with pytest.raises(Busy):  # a resume is never queued: no slot, no resume
        await supervisor.resume(a)

    # A restart mid-queue: c is still queued, in place, and starts once a slot frees.
    await supervisor.shutdown()
    assert service.get(d).state is State.STOPPED and service.get(c).queued
    await service.store.close()
    service = await open_service(tmp_path / "events.db")  # as a restarted server does
    assert service.queue() == [c] and service.get(c).queue_position == 1
    restarted = Supervisor(service, max_concurrent=1, job_options=SYNTHETIC, stop_grace_s=10)
    await restarted.start_queued()
    assert service.get(c).state is State.TRAINING and service.queue() == []
    await restarted.start_queued()  # nothing left: nothing started twice
    await restarted.shutdown()
    for run_id in (a, c, d):
        assert (await types_of(service, run_id)).count(ev.STARTED) == 1, run_id
    assert ev.STARTED not in await types_of(service, b)
    await service.store.close()


async def test_two_slots_run_two_at_once_and_the_third_waits(
    tmp_path: Path, service: RunService
) -> None:
    supervisor = Supervisor(service, max_concurrent=2, job_options=SYNTHETIC, stop_grace_s=10)
    runs = [await create(service, tmp_path, name) for name in ("one", "two", "three")]
    kinds = [(await supervisor.start(r)).type for r in runs]
    assert kinds == [ev.STARTED, ev.STARTED, ev.QUEUED]
    table = supervisor.queue_table()
    assert table == {
        "slots": [
            {"index": 0, "devices": ["cpu"], "run_id": runs[0]},
            {"index": 1, "devices": ["cpu"], "run_id": runs[1]},
        ],
        "queued": [runs[2]],
    }
    await supervisor.stop(runs[1])
    await until(lambda: service.get(runs[2]).state is State.TRAINING, "the third waited")
    assert supervisor.queue_table()["slots"][1]["run_id"] == runs[2]
    await supervisor.shutdown()


async def test_repeated_queue_commands_are_answered_not_applied(
    tmp_path: Path, service: RunService
) -> None:
    supervisor = Supervisor(service, max_concurrent=1, job_options=SYNTHETIC, stop_grace_s=10)
    commands = Commands(service, supervisor, check_paths=False)
    first, second, third = [await create(service, tmp_path, name) for name in ("f", "s", "t")]
    assert (await commands.run("start", first, None, "start-f")).status == 200
    queued = await commands.run("start", second, None, "start-s")
    assert queued.status == 202 and queued.body["queued"] is True and queued.body["position"] == 1
    await commands.run("start", third, None, "start-t")
    moved = await commands.run("move", third, {"position": 1}, "move-t")
    assert moved.status == 200 and moved.body["run"]["queue_position"] == 1
    bad = await commands.run("move", third, {"before": first}, "move-bad")
    assert bad.status == 400 and "not queued" in bad.body["error"]["message"]
    both = await commands.run("move", third, {"position": 1, "before": None}, "move-both")
    assert both.status == 400
    before = [await types_of(service, r) for r in (first, second, third)]
    # After a restart (a fresh Commands: nothing in memory), the ids are found in the log.
    await supervisor.shutdown()
    supervisor = Supervisor(service, max_concurrent=1, job_options=SYNTHETIC, stop_grace_s=10)
    commands = Commands(service, supervisor, check_paths=False)
    again = await commands.run("start", second, None, "start-s")
    assert again.status == 202 and again.body["event"] == queued.body["event"]
    assert (await commands.run("move", third, {"position": 1}, "move-t")).status == 200
    assert (await commands.run("dequeue", second, None, "dq")).status == 200
    assert (await commands.run("dequeue", second, None, "dq")).status == 200  # answered
    after = [await types_of(service, r) for r in (first, second, third)]
    assert after[0][: len(before[0])] == before[0]
    assert after[1] == [*before[1], ev.DEQUEUED] and after[2] == before[2]
    await supervisor.shutdown()


def test_slots_follow_the_devices() -> None:
    assert default_slots(gpus=[]) == default_slots(1, gpus=[])
    [cpu] = default_slots(gpus=[])
    assert cpu.devices == ("cpu",) and cpu.visible_devices is None
    two = default_slots(gpus=["0", "1"])
    assert [s.devices for s in two] == [("cuda:0",), ("cuda:1",)]
    assert [s.visible_devices for s in two] == ["0", "1"]
    assert [s.devices for s in default_slots(3, gpus=["0", "1"])] == [
        ("cuda:0",),
        ("cuda:1",),
        ("cuda:0",),
    ]
    scheduler = Scheduler(two)
    ddp = {"SYSTEM": {"NUM_GPUS": 2, "PARALLEL": "DDP"}}
    assert scheduler.need(ddp) == 2
    assert scheduler.need({"SYSTEM": {"NUM_GPUS": 4, "PARALLEL": "DP"}}) == 1  # one GPU
    both = scheduler.take("ddp", 2)
    assert both is not None and both.visible_devices == "0,1"
    assert scheduler.take("other") is None
    scheduler.release("ddp")
    assert scheduler.take("other") is not None and scheduler.take("ddp", 2) is None
    with pytest.raises(NoRoom, match=r"lower SYSTEM\.NUM_GPUS to at most 2"):
        scheduler.take("big", 3)
    # On the CPU a run takes the one slot, whatever its config says.
    assert Scheduler([cpu]).need(ddp) == 1


def test_ranks_place_a_run_between_its_neighbours() -> None:
    assert rank_at([], 1) == 1.0
    assert rank_at([1.0, 2.0], 1) == 0.0
    assert rank_at([1.0, 2.0], 2) == 1.5
    assert rank_at([1.0, 2.0], 3) == 3.0 == rank_at([1.0, 2.0], 99)


def test_visible_gpus_honour_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.execution.scheduler import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,2")  # CUDA stops at an invalid one
    assert visible_gpus() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
