"""Contract tests for the event store, run against a file database and an in-memory one."""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.events import NewEvent
from backend.store import (
    SCHEMA_VERSION,
    ConcurrencyError,
    EventStore,
    ReadOnlyStore,
    StoreError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    path = tmp_path / "events.db" if request.param == "file" else ":memory:"
    s = await EventStore.open(path)
    yield s
    await s.close()


def metric(i: int) -> NewEvent:
    return NewEvent("metric", {"iteration": i, "loss": 1.0 / (i + 1)})


async def test_append_assigns_seq_and_version(store: EventStore) -> None:
    first = await store.append("a", [metric(1), metric(2)])
    second = await store.append("b", [metric(1)])
    third = await store.append("a", [metric(3)])
    assert [(e.seq, e.version) for e in first] == [(1, 1), (2, 2)]
    assert [(e.seq, e.version) for e in second] == [(3, 1)]
    assert [(e.seq, e.version) for e in third] == [(4, 3)]
    assert store.last_seq == 4
    assert store.run_version("a") == 3
    assert sorted(store.run_ids()) == ["a", "b"]


async def test_reads_return_what_was_appended(store: EventStore) -> None:
    await store.append("a", [metric(i) for i in range(5)])
    await store.append("b", [metric(i) for i in range(3)])
    run_a = await store.read_run("a")
    assert [e.data["iteration"] for e in run_a] == list(range(5))
    assert [e.version for e in await store.read_run("a", after_version=3)] == [4, 5]
    assert [e.seq for e in await store.read_run_after_seq("b", after_seq=6)] == [7, 8]
    page1 = await store.read_all(0, limit=4)
    page2 = await store.read_all(page1[-1].seq, limit=4)
    assert [e.seq for e in page1 + page2] == list(range(1, 9))
    assert run_a[0].type == "metric" and run_a[0].run_id == "a" and run_a[0].ts > 0


async def test_stale_expected_version_fails_and_writes_nothing(store: EventStore) -> None:
    await store.append("a", [metric(1)], expected_version=0)
    with pytest.raises(ConcurrencyError) as info:
        await store.append("a", [metric(2), metric(3)], expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert len(await store.read_run("a")) == 1
    assert store.last_seq == 1
    await store.append("a", [metric(2)], expected_version=1)
    assert store.run_version("a") == 2


async def test_invalid_data_fails_alone(store: EventStore) -> None:
    good = asyncio.ensure_future(store.append("a", [metric(1)]))
    bad = asyncio.ensure_future(store.append("b", [NewEvent("metric", {"loss": math.nan})]))
    assert len(await good) == 1
    with pytest.raises(StoreError, match="JSON"):
        await bad
    assert store.last_seq == 1 and store.run_version("b") == 0


@pytest.mark.parametrize(
    ("data", "stored"),
    [
        ({"iteration": None, "loss": 0.5}, True),  # a real null is data, kept as null
        ({"loss": math.inf}, False),
        ({"nested": {"values": [1.0, -math.inf]}}, False),
        ({"big": 2**70}, True),  # beyond 64 bits: orjson refuses, the stdlib writes it
        ({"not json": object()}, False),
    ],
)
async def test_a_batch_is_stored_whole_or_not_at_all(
    store: EventStore, data: dict[str, object], stored: bool
) -> None:
    """The batch encoder checks every event of the batch as `jsontext.dumps` would:
    one bad value anywhere refuses the append and writes nothing."""
    batch = [metric(1), NewEvent("metric", data), metric(3)]
    if stored:
        events = await store.append("a", batch)
        assert [e.data for e in await store.read_run("a")] == [e.data for e in events]
        assert (await store.read_run("a"))[1].data == data
    else:
        with pytest.raises(StoreError, match="JSON"):
            await store.append("a", batch)
        assert store.last_seq == 0 and await store.read_all() == []


async def test_group_commit_and_gapless_under_concurrency(store: EventStore) -> None:
    async def appender(run: str, count: int) -> list[int]:
        seqs = []
        for i in range(count):
            [event] = await store.append(run, [metric(i)])
            seqs.append(event.seq)
        return seqs

    results = await asyncio.gather(*(appender(f"r{n % 7}", 40) for n in range(25)))
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(1, 1001))
    events = await store.read_all(0, limit=5000)
    assert [e.seq for e in events] == seqs
    for run in {f"r{n % 7}" for n in range(25)}:
        versions = [e.version for e in await store.read_run(run)]
        assert versions == list(range(1, len(versions) + 1))
    assert store.commits < 1000 / 5, "concurrent appends should share transactions"


async def test_close_flushes_pending_appends(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.db")
    pending = [asyncio.ensure_future(store.append("a", [metric(i)])) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    assert all(len(p.result()) == 1 for p in pending)
    reopened = await EventStore.open(tmp_path / "e.db")
    assert reopened.last_seq == 50 and reopened.run_version("a") == 50
    await reopened.close()
    with pytest.raises(StoreError, match="closed"):
        await store.append("a", [metric(0)])


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
async def test_reopen_keeps_everything(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path, synchronous=synchronous) as store:  # type: ignore[arg-type]
        await store.append("a", [metric(1), metric(2)])
    async with await EventStore.open(path) as store:
        assert store.last_seq == 2
        [event] = await store.append("a", [metric(3)], expected_version=2)
        assert (event.seq, event.version) == (3, 3)


async def test_bad_synchronous_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="NORMAL or FULL"):
        await EventStore.open(tmp_path / "e.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_garbage_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    garbage = b"this is not a database, it is a shopping list\n" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="not a Trainboard event store"):
        await EventStore.open(path)
    assert path.read_bytes() == garbage


async def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        await EventStore.open(path)
    assert path.read_bytes() == before


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with await EventStore.open(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer Trainboard"):
        await EventStore.open(path)
    assert path.read_bytes() == before


def test_file_held_by_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="in use by another Trainboard process"):
            asyncio.run(EventStore.open(path))
    finally:
        holder.kill()
        holder.wait()


HOLD_SCRIPT = """
import asyncio, sys
from backend.store import EventStore
async def main():
    store = await EventStore.open(sys.argv[1])
    print("open", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def _open_as(path: Path, uid: int | None, answer: mp.connection.Connection) -> None:
    """Forked child: (as `uid`) open the store; send back the error's type and text."""
    if uid is not None:
        os.setgid(uid)
        os.setuid(uid)
    try:
        asyncio.run(EventStore.open(path))
        answer.send(("opened", ""))
    except StoreError as exc:
        answer.send((type(exc).__name__, str(exc)))


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_store_is_refused_at_open(what: str) -> None:
    # Root writes anything: a read-only file is read-only to another user, so the open
    # runs in a forked child that becomes `nobody` (uid 65534) first.
    uid = 65534 if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp())  # not tmp_path: its parents are closed to others
    try:
        path = folder / "events.db"
        asyncio.run(_append_one(path))
        before = path.read_bytes()
        path.chmod(0o444 if what == "file" else 0o644)
        folder.chmod(0o755 if what == "file" else 0o555)
        receive, send = mp.get_context("fork").Pipe(duplex=False)
        child = mp.get_context("fork").Process(target=_open_as, args=(path, uid, send))
        child.start()
        kind, message = receive.recv()
        child.join(30)
        assert kind == ReadOnlyStore.__name__, message
        assert "cannot be written" in message and "--db" in message
        assert path.read_bytes() == before
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


async def _append_one(path: Path) -> None:
    async with await EventStore.open(path) as store:
        await store.append("r", [metric(1)])


async def check_gapless(path: Path, acknowledged: int) -> None:
    async with await EventStore.open(path) as store:
        events = await store.read_all(0, limit=1_000_000)
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= acknowledged
        for run in store.run_ids():
            versions = [e.version for e in await store.read_run(run)]
            assert versions == list(range(1, len(versions) + 1))


CRASH_SCRIPT = """
import asyncio, sys
from backend.events import NewEvent
from backend.store import EventStore
async def main():
    store = await EventStore.open(sys.argv[1])
    i = 0
    while True:
        batch = [NewEvent("metric", {"i": i + k}) for k in range(5)]
        stored = await asyncio.gather(*(store.append(f"r{i % 3}", [e]) for e in batch))
        i += 5
        print(max(s[0].seq for s in stored), flush=True)
asyncio.run(main())
"""


def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged = 0
    for _ in range(300):
        acknowledged = int(child.stdout.readline())
    child.kill()
    child.wait()
    assert child.returncode == -9
    asyncio.run(check_gapless(path, acknowledged))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


@pytest.mark.parametrize(("flag", "level"), [("normal", 1), ("full", 2)])
async def test_durability_flag_sets_synchronous(tmp_path: Path, flag: str, level: int) -> None:
    from backend.cli import build_parser

    for command in (["serve"], ["train", "config.yaml"]):
        args = build_parser(command[0]).parse_args([*command, "--durability", flag])
        assert args.durability == flag
    async with await EventStore.open(tmp_path / "e.db", synchronous=flag.upper()) as store:  # type: ignore[arg-type]
        rows = await store._db.execute_fetchall("PRAGMA synchronous")
        assert next(iter(rows))[0] == level
