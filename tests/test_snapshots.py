"""Snapshots of the read models: snapshot + tail equals a full fold, whatever went wrong."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backend import events as ev
from backend.events import NewEvent
from backend.jsontext import dumps, loads
from backend.readmodels import snapshots
from backend.runs import RunService
from backend.store import EventStore

pytestmark = pytest.mark.anyio


async def write_history(service: RunService, runs: int = 3, metrics: int = 40) -> list[str]:
    """Runs in every kind of state, with command ids, checkpoints, a resume, logs, previews."""
    ids = []
    for r in range(runs):
        run_id = (
            await service.create(
                {"name": f"r{r}", "total_iterations": metrics, "command_id": f"create-{r}"}
            )
        ).run_id
        ids.append(run_id)
        if r == runs - 1:
            continue  # one stays Idle
        await service.command(run_id, "start", {"attempt": 1, "command_id": f"start-{r}"})
        await service.record(run_id, [NewEvent(ev.TRAINER_READY, {"device": "cpu"})])
        for i in range(1, metrics + 1):
            facts = [
                NewEvent(ev.METRIC, {"iteration": i, "loss": 1 / i + (i % 7) * 0.01, "lr": 0.1})
            ]
            if i % 10 == 0:
                facts += [
                    NewEvent(
                        ev.VALIDATION, {"iteration": i, "dice": i / 100, "preview": f"p{i}.png"}
                    ),
                    NewEvent(ev.CHECKPOINT, {"iteration": i, "path": f"/o/c{i}"}),
                    NewEvent(ev.LOG, {"level": "info", "message": f"at {i}"}),
                ]
            await service.record(run_id, facts)
        if r == 0:
            await service.command(run_id, "stop", {"deadline_s": 30, "reason": "server_shutdown"})
            await service.record(run_id, [NewEvent(ev.STOPPED, {"iteration": metrics})])
            await service.command(run_id, "resume", {"attempt": 2, "checkpoint": "/o/c20"})
            await service.record(run_id, [NewEvent(ev.METRIC, {"iteration": 21, "loss": 5.0})])
    # An id reused by an older run, later: answered by the run that recorded it first.
    await service.command(ids[0], "stop", {"deadline_s": 30, "command_id": f"create-{runs - 1}"})
    return ids


async def full_fold(store: EventStore) -> RunService:
    reference = RunService(store)
    await reference.fold_from(0)
    return reference


async def models(service: RunService) -> dict[str, Any]:
    """Everything the read models hold, as values (every page loaded)."""
    for run_id in list(service.runs):
        await service.page(run_id)
    return {
        "summaries": {rid: s.to_state() for rid, s in service.runs.items()},
        "json": {rid: s.to_json() for rid, s in service.runs.items()},
        "pages": {rid: p.to_state() for rid, p in service.pages.items()},
        "commands": {
            cid: _owner(service, cid) for s in service.runs.values() for cid in s.commands
        },
    }


def _owner(service: RunService, command_id: str) -> tuple[str, int] | None:
    found = service.find_command(command_id)
    return None if found is None else (found[0].run.run_id, found[1].version)


async def assert_equals_full_fold(service: RunService) -> None:
    assert await models(service) == await models(await full_fold(service.store))


async def test_snapshot_plus_tail_equals_a_full_fold(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path) as store:
        service = RunService(store)
        ids = await write_history(service)
        saved_at = await snapshots.save(service)
        # More after the snapshot, then no snapshot (a crash): the tail.
        await service.record(ids[1], [NewEvent(ev.METRIC, {"iteration": 41, "loss": 0.01})])
        await service.record(ids[1], [NewEvent(ev.COMPLETED, {"iteration": 41})])
        await service.create({"name": "after"}, run_id="late")
        live = await models(service)
    async with await EventStore.open(path) as store:
        restored_service = RunService(store)
        restored = await restored_service.load()
        assert restored.from_snapshot and restored.snapshot_seq == saved_at
        assert restored.tail_events == 3 and restored.refolded_runs == 0
        assert await models(restored_service) == live
        await assert_equals_full_fold(restored_service)
        # A repeated command is still answered after the restore.
        found = restored_service.find_command("start-1")
        assert found is not None and found[0].run.run_id == ids[1]
        assert _owner(restored_service, "create-2") == (ids[2], 1)


async def test_only_changed_pages_are_rewritten(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        service = RunService(store)
        ids = await write_history(service)
        await snapshots.save(service)
        await service.record(ids[1], [NewEvent(ev.LOG, {"message": "one more"})])
        _, states = snapshots.capture(service)
        assert set(states) == {snapshots.SUMMARIES, snapshots.PAGE_PREFIX + ids[1]}


async def test_pages_wait_in_their_snapshot_until_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path) as store:
        service = RunService(store)
        ids = await write_history(service)
        await snapshots.save(service)
        await service.record(ids[1], [NewEvent(ev.LOG, {"message": "after the snapshot"})])
        expected = (await service.page(ids[1])).to_state()
    async with await EventStore.open(path) as store:
        restored = RunService(store)
        await restored.load()
        assert restored.pages == {} and restored.lazy_pages == set(ids)
        # An append to a page still in its snapshot: the page, loaded later, has it.
        await restored.record(ids[1], [NewEvent(ev.LOG, {"message": "while lazy"})])
        page = await restored.page(ids[1])
        assert page.version == store.run_version(ids[1])
        assert page.to_state()["logs"][:-1] == expected["logs"]
        assert page.to_state()["logs"][-1]["data"]["message"] == "while lazy"
        assert ids[1] not in restored.lazy_pages and ids[1] in restored.changed


async def test_a_save_cancelled_midway_leaves_its_pages_to_the_next_set(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        service = RunService(store)
        ids = await write_history(service)
        saving = asyncio.create_task(snapshots.save(service))
        await asyncio.sleep(0)  # captured, encoding in its thread
        saving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saving
        assert service.changed == set(ids)


def _rewrite(path: Path, name: str, change: Callable[[sqlite3.Connection], None]) -> None:
    with sqlite3.connect(path) as db:
        change(db)
    db.close()


def _data_edit(name: str, edit: Callable[[Any], None]) -> Callable[[sqlite3.Connection], None]:
    """Change a snapshot's content and recompute its checksum: only the verify catches it."""

    def change(db: sqlite3.Connection) -> None:
        (data,) = db.execute("SELECT data FROM snapshots WHERE name = ?", (name,)).fetchone()
        value = loads(data)
        edit(value)
        new = dumps(value)
        db.execute(
            "UPDATE snapshots SET data = ?, checksum = ? WHERE name = ?",
            (new, hashlib.sha256(new).hexdigest(), name),
        )

    return change


def _first_run(value: Any) -> dict[str, Any]:
    return next(iter(value.values()))


# One row per way a snapshot can be wrong: (what is done to the file, expected reason).
BAD = [
    ("corrupt", lambda db: db.execute("UPDATE snapshots SET data = X'00' || data"), "checksum"),
    ("older schema", lambda db: db.execute("UPDATE snapshots SET schema = '0:old'"), "schema"),
    ("ahead of the log", lambda db: db.execute("UPDATE snapshots SET seq = seq + 1000"), "seq"),
    (
        "not JSON",
        lambda db: db.execute(
            "UPDATE snapshots SET data = X'7b7b', checksum = ? WHERE name = 'summaries'",
            (hashlib.sha256(b"{{").hexdigest(),),
        ),
        "not JSON",
    ),
    (
        "wrong shape",
        _data_edit("summaries", lambda v: _first_run(v).pop("iteration")),
        "does not hold",
    ),
]


@pytest.mark.parametrize(("what", "change", "reason"), BAD, ids=[b[0] for b in BAD])
async def test_a_bad_snapshot_is_rebuilt_from_the_log(
    tmp_path: Path, what: str, change: Callable[[sqlite3.Connection], None], reason: str
) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path) as store:
        service = RunService(store)
        await write_history(service)
        await snapshots.save(service)
        live = await models(service)
    _rewrite(path, "summaries", change)
    async with await EventStore.open(path) as store:
        restored_service = RunService(store)
        restored = await restored_service.load()
        assert not restored.from_snapshot and reason in restored.reason
        assert await models(restored_service) == live


# A snapshot that decodes and passes its checks but disagrees with the log for one run.
DISAGREEING = [
    ("version behind", _data_edit("summaries", lambda v: _first_run(v)["run"].update(version=1))),
    ("run missing", _data_edit("summaries", lambda v: v.pop(next(iter(v))))),
    (
        "page missing",
        lambda db: db.execute(
            "DELETE FROM snapshots WHERE name = "
            "(SELECT MIN(name) FROM snapshots WHERE name LIKE 'page:%')"
        ),
    ),
]


@pytest.mark.parametrize(("what", "change"), DISAGREEING, ids=[d[0] for d in DISAGREEING])
async def test_a_run_the_snapshot_got_wrong_is_refolded(
    tmp_path: Path, what: str, change: Callable[[sqlite3.Connection], None]
) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path) as store:
        service = RunService(store)
        await write_history(service)
        await snapshots.save(service)
        live = await models(service)
    _rewrite(path, "summaries", change)
    async with await EventStore.open(path) as store:
        restored_service = RunService(store)
        restored = await restored_service.load()
        assert restored.from_snapshot
        assert restored.refolded_runs == (0 if what == "page missing" else 1)
        assert await models(restored_service) == live


async def test_no_snapshot_folds_the_log_and_the_snapshotter_writes_one(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path) as store:
        service = RunService(store)
        await write_history(service, runs=2, metrics=5)
    async with await EventStore.open(path) as store:
        service = RunService(store)
        restored = await service.load()
        assert not restored.from_snapshot and restored.reason == "no snapshot"
        service.snapshots.start(save_now=True)
        await service.snapshots.close()
        assert service.snapshots.saved_seq == store.last_seq
    async with await EventStore.open(path) as store:
        again = await RunService(store).load()
        assert again.from_snapshot and again.tail_events == 0


CRASH_SCRIPT = """
import asyncio, sys
from backend import events as ev
from backend.events import NewEvent
from backend.runs import RunService
from backend.store import EventStore

async def main():
    store = await EventStore.open(sys.argv[1])
    service = RunService(store)
    await service.load()
    service.snapshots.interval_s = 0.01
    service.snapshots.start()
    ids = [(await service.create({"name": f"r{k}"})).run_id for k in range(3)]
    for run_id in ids:
        await service.command(run_id, "start", {"attempt": 1})
    i = 0
    while True:
        i += 1
        run_id = ids[i % 3]
        await service.record(run_id, [NewEvent(ev.METRIC, {"iteration": i, "loss": 1 / i})])
        if i % 50 == 0:
            await service.record(run_id, [NewEvent(ev.LOG, {"message": f"line {i}"})])
        if i % 20 == 0:
            print(i, flush=True)
        await asyncio.sleep(0)
asyncio.run(main())
"""


def test_a_sigkill_between_append_and_snapshot_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for _ in range(40):  # 800 metrics, many snapshot sets written meanwhile
        child.stdout.readline()
    child.kill()
    child.wait()
    assert child.returncode == -9

    async def check() -> None:
        async with await EventStore.open(path) as store:
            service = RunService(store)
            restored = await service.load()
            assert restored.from_snapshot, restored.reason
            assert restored.snapshot_seq <= store.last_seq
            await assert_equals_full_fold(service)

    asyncio.run(check())


async def test_saved_pages_of_runs_not_training_leave_memory(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        service = RunService(store)
        ids = await write_history(service)  # ids[0], ids[1] training; ids[2] idle
        await service.command(ids[1], "stop", {"deadline_s": 1})
        await service.record(ids[1], [NewEvent(ev.STOPPED, {"iteration": 40})])
        before = {rid: (await service.page(rid)).to_state() for rid in ids}
        await snapshots.save(service)
        assert set(service.pages) == {ids[0]} and service.lazy_pages == {ids[1], ids[2]}
        assert {rid: (await service.page(rid)).to_state() for rid in ids} == before
        # A resume brings the page back before its first new event.
        await service.command(ids[1], "resume", {"attempt": 2})
        assert ids[1] in service.pages and service.pages[ids[1]].version == store.run_version(
            ids[1]
        )
