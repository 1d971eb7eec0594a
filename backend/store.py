"""The event store: one append-only SQLite table, one writer, group commit.

Appends from many coroutines queue up; a single writer task drains the queue and commits
everything that arrived within a short window in one transaction (group commit), then
tells every caller its events' sequence numbers. Nothing is ever updated or deleted.

Event data is encoded with orjson (`backend.jsontext`: strict, no NaN), once per event,
in the writer task; reads decode it with orjson too.

Snapshots of read models (`backend.readmodels.snapshots`) live in a second table of the
same file: caches keyed by name, each with the seq it reflects; the log never depends on
them, and replacing one never touches an event.

Durability: WAL mode. `synchronous="NORMAL"` (default) survives a crash of this process;
`"FULL"` also survives a power cut or an OS crash, at the cost of an fsync per commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import aiosqlite

from backend.events import Event, NewEvent
from backend.jsontext import dumps_many, loads

SCHEMA_VERSION = 1
Synchronous = Literal["NORMAL", "FULL"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (run_id, version)
);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    schema TEXT NOT NULL,
    checksum TEXT NOT NULL,
    data BLOB NOT NULL
);
"""
_INSERT = "INSERT INTO events (seq, run_id, version, type, ts, data) VALUES (?, ?, ?, ?, ?, ?)"
_COLUMNS = "seq, run_id, version, type, ts, data"
# A run's events after a seq, through the (run_id, version) index: seq and version grow
# together within a run, so when the seq is the run's own event (a client's last one) the
# page starts at that version with one seek, instead of sorting the run's events by seq.
_RUN_AFTER_SEQ = (
    "run_id = ?1 AND version > COALESCE("
    "(SELECT version FROM events WHERE seq = ?2 AND run_id = ?1), 0) AND seq > ?2 "
    "ORDER BY version"
)
_FIRST_RUN = (
    "SELECT run_id, MAX(version) FROM events WHERE run_id = (SELECT MIN(run_id) FROM events)"
)
_NEXT_RUN = (
    "SELECT run_id, MAX(version) FROM events "
    "WHERE run_id = (SELECT MIN(run_id) FROM events WHERE run_id > ?)"
)
Row = tuple[int, str, int, str, float, str]


class StoredSnapshot(NamedTuple):
    """A read model's cached state as written: verify before trusting it."""

    name: str
    seq: int
    schema: str
    checksum: str
    data: bytes


def add_durability_argument(parser: argparse.ArgumentParser) -> None:
    """`--durability normal|full` for every command that opens the store."""
    parser.add_argument(
        "--durability",
        choices=("normal", "full"),
        default="normal",
        help="normal (default): nothing acknowledged is lost if Trainboard crashes; "
        "full: nor if the machine loses power (an fsync per commit, slower)",
    )


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


class ReadOnlyStore(StoreError):
    """The database file (or its folder, where SQLite keeps the WAL) cannot be written."""


class ConcurrencyError(StoreError):
    """An append expected a run version that is no longer current. Nothing was written."""

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        self.run_id = run_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"run {run_id} is at version {actual}, not {expected}")


@dataclass(slots=True)
class _Append:
    run_id: str
    events: Sequence[NewEvent]
    data: list[str]  # each event's data as strict JSON, encoded by the appender
    expected_version: int | None
    done: asyncio.Future[list[Event]]


def _encode(events: Sequence[NewEvent]) -> list[str]:
    """Each event's data as strict JSON text; StoreError naming the first that is not."""
    try:
        return dumps_many([new.data for new in events])
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(f"event data is not valid JSON: {exc}") from exc


def _blob(value: Any) -> bytes:
    """A BLOB cell as bytes (a damaged file may hold text there: checked later, not here)."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _row_to_event(row: sqlite3.Row | tuple[Any, ...]) -> Event:
    seq, run_id, version, type_, ts, data = row
    return Event(seq, run_id, version, type_, ts, loads(data))


class EventStore:
    """Append-only event log in one SQLite file (or `:memory:`)."""

    def __init__(self, db: aiosqlite.Connection, path: str, flush_window: float) -> None:
        self._db = db
        self.path = path
        self._flush_window = flush_window
        self._queue: asyncio.Queue[_Append | None] = asyncio.Queue()
        self._last_seq = 0
        self._versions: dict[str, int] = {}
        self._writer: asyncio.Task[None] | None = None
        # One transaction at a time on the one connection: appends and snapshot writes.
        self._transaction = asyncio.Lock()
        self._closed = False
        self.commits = 0  # transactions written: group commit keeps this well below appends

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        flush_window: float = 0.002,
    ) -> EventStore:
        """Open (creating if needed) an event store; StoreError if the file is unusable.

        A file that is not SQLite, has a newer schema, or is held by another Trainboard
        process is refused before anything is written to it; one that cannot be written
        (ReadOnlyStore) is refused at once, not at the first append.
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        path = str(path)
        connection = aiosqlite.connect(path, isolation_level=None, timeout=0.2)
        try:
            db = await connection
        except sqlite3.Error as exc:
            # aiosqlite's worker thread still has to report its own stop to this loop:
            # wait for it, or it reports to a closed loop ("Event loop is closed").
            await asyncio.to_thread(connection._thread.join, 5)
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            await _check_existing(db, path)
            await _prepare(db, path, synchronous)
        except BaseException:
            await db.close()
            raise
        store = cls(db, path, flush_window)
        await store._load_positions()
        store._writer = asyncio.create_task(store._write_loop(), name="event-store-writer")
        return store

    async def _load_positions(self) -> None:
        # One index seek per run (the (run_id, version) index), never a scan of the
        # table: opening stays flat in the length of the log.
        self._versions = {}
        rows = await self._db.execute_fetchall(_FIRST_RUN)
        while rows and next(iter(rows))[0] is not None:
            run_id, version = next(iter(rows))
            self._versions[run_id] = version
            rows = await self._db.execute_fetchall(_NEXT_RUN, (run_id,))
        row = await self._db.execute_fetchall("SELECT COALESCE(MAX(seq), 0) FROM events")
        self._last_seq = next(iter(row))[0]

    # -- writing -----------------------------------------------------------------------

    async def append(
        self,
        run_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None = None,
    ) -> list[Event]:
        """Append events to a run atomically; returns them with seq and version assigned.

        With `expected_version`, the append fails with ConcurrencyError (writing nothing)
        unless the run is at exactly that version (0 for a run with no events yet).
        """
        if self._closed:
            raise StoreError("the event store is closed")
        if not events:
            return []
        # Encoded here, in the appender's turn, so the writer only assigns positions and
        # writes, and data that is not strict JSON fails this append alone, at once.
        data = _encode(events)
        done: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Append(run_id, events, data, expected_version, done))
        return await done

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            if self._flush_window > 0 and self._queue.empty():
                await asyncio.sleep(self._flush_window)
            else:
                # One turn of the loop first: the appenders the last commit woke append
                # again and join this group (four producers: groups of four batches, not
                # one; ~10% more events/s). The group waits only for what was ready to run.
                await asyncio.sleep(0)
            batch = [first]
            stop = False
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            await self._commit(batch)
            if stop:
                return

    async def _commit(self, batch: list[_Append]) -> None:
        """Write one group of appends in one transaction; resolve each caller."""
        rows: list[Row] = []
        accepted: list[tuple[_Append, list[Event]]] = []
        seq = self._last_seq
        versions: dict[str, int] = {}
        now = time.time()
        for item in batch:
            run_id, events = item.run_id, item.events
            current = versions.get(run_id, self._versions.get(run_id, 0))
            if item.expected_version is not None and item.expected_version != current:
                item.done.set_exception(ConcurrencyError(run_id, item.expected_version, current))
                continue
            # Column by column, with no per-event Python frame: this runs for every event
            # the server ingests (tens of thousands a second from a fast trainer).
            n = len(events)
            seqs = range(seq + 1, seq + n + 1)
            run_versions = range(current + 1, current + n + 1)
            types = [new.type for new in events]
            stamps = [now if new.ts is None else new.ts for new in events]
            same_run = [run_id] * n
            rows += zip(seqs, same_run, run_versions, types, stamps, item.data, strict=True)
            datas = [e.data for e in events]
            stored = list(map(Event, seqs, same_run, run_versions, types, stamps, datas, item.data))
            accepted.append((item, stored))
            seq += n
            versions[run_id] = current + n
        if not rows:
            return
        try:
            async with self._transaction:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    await self._db.executemany(_INSERT, rows)
                    await self._db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await self._db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, ValueError) as exc:
            for item, _ in accepted:
                if not item.done.done():
                    item.done.set_exception(StoreError(f"append failed: {exc}"))
            return
        self._last_seq = seq
        self._versions.update(versions)
        self.commits += 1
        for item, stored in accepted:
            if not item.done.done():
                item.done.set_result(stored)

    # -- reading -----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the last committed event (0 when empty)."""
        return self._last_seq

    def run_version(self, run_id: str) -> int:
        return self._versions.get(run_id, 0)

    def run_ids(self) -> list[str]:
        return list(self._versions)

    async def read_run(
        self, run_id: str, after_version: int = 0, limit: int | None = None
    ) -> list[Event]:
        """A run's events with version > after_version, in order."""
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM events WHERE run_id = ? AND version > ? "
            "ORDER BY version LIMIT ?",
            (run_id, after_version, -1 if limit is None else limit),
        )
        return [_row_to_event(r) for r in rows]

    async def seq_of(self, run_id: str, version: int) -> int:
        """The seq of a run's event at `version` (0 if there is none)."""
        rows = await self._db.execute_fetchall(
            "SELECT seq FROM events WHERE run_id = ? AND version = ?", (run_id, version)
        )
        return next((r[0] for r in rows), 0)

    async def read_run_after_seq(
        self, run_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[Event]:
        """One page of a run's events with seq > after_seq."""
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM events WHERE {_RUN_AFTER_SEQ} LIMIT ?",
            (run_id, after_seq, limit),
        )
        return [_row_to_event(r) for r in rows]

    async def read_all(self, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        """One page of all events with seq > after_seq, in seq order."""
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_row_to_event(r) for r in rows]

    async def read_rows(
        self, after_seq: int = 0, limit: int = 1000, run_id: str | None = None
    ) -> list[Row]:
        """One page of raw rows `(seq, run_id, version, type, ts, data)` with seq >
        after_seq (of one run, or all), in seq order, `data` still JSON text: for
        streaming history to clients without decoding and re-encoding it."""
        args: list[str | int] = [after_seq, limit]
        where = "seq > ? ORDER BY seq"
        if run_id is not None:
            where, args = _RUN_AFTER_SEQ, [run_id, *args]
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM events WHERE {where} LIMIT ?", args
        )
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    # -- snapshots (caches of read models, never a source of truth) ---------------------

    async def save_snapshots(self, snapshots: Sequence[tuple[str, int, str, bytes]]) -> None:
        """Replace snapshots `(name, seq, schema, data)`, all in one transaction: a crash
        leaves either the old set or the new one."""
        rows = [
            (n, seq, schema, hashlib.sha256(d).hexdigest(), d) for n, seq, schema, d in snapshots
        ]
        async with self._transaction:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.executemany(
                    "INSERT OR REPLACE INTO snapshots (name, seq, schema, checksum, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                await self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                raise

    async def load_snapshots(self, prefix: str) -> list[StoredSnapshot]:
        """Every snapshot whose name starts with `prefix`, as stored (unverified)."""
        rows = await self._db.execute_fetchall(
            "SELECT name, seq, schema, checksum, data FROM snapshots "
            "WHERE substr(name, 1, ?) = ? ORDER BY name",
            (len(prefix), prefix),
        )
        return [StoredSnapshot(r[0], r[1], r[2], r[3], _blob(r[4])) for r in rows]

    async def delete_snapshots(self, prefix: str) -> None:
        async with self._transaction:
            await self._db.execute(
                "DELETE FROM snapshots WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
            )

    async def close(self) -> None:
        """Flush pending appends, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
        await self._db.close()

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _check_existing(db: aiosqlite.Connection, path: str) -> None:
    """Refuse a file that is not ours to write, before writing anything to it."""
    try:
        tables = {
            name
            for (name,) in await db.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):
            raise StoreError(_locked_message(path)) from exc
        _raise_if_read_only(exc, path)
        raise StoreError(
            f"{path} is not a Trainboard event store ({exc}); "
            "choose another --db path or move that file away"
        ) from exc
    if tables and "events" not in tables:
        raise StoreError(
            f"{path} is an SQLite database of another application (tables: "
            f"{', '.join(sorted(tables))}); choose another --db path"
        )
    if "schema_version" in tables:
        rows = await db.execute_fetchall("SELECT MAX(version) FROM schema_version")
        version = next(iter(rows))[0] or 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by a newer Trainboard (schema {version}; this one "
                f"reads up to {SCHEMA_VERSION}); upgrade Trainboard to open it"
            )


async def _prepare(db: aiosqlite.Connection, path: str, synchronous: Synchronous) -> None:
    try:
        # One writer: an exclusive lock, taken now so a second process fails at open.
        await db.execute("PRAGMA locking_mode = EXCLUSIVE")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            await db.execute(statement)
        rows = await db.execute_fetchall("SELECT COUNT(*) FROM schema_version")
        if next(iter(rows))[0] == 0:
            await db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        # A write that changes nothing: SQLite opens a read-only file without a word
        # and only refuses the first write, so make that happen now.
        await db.execute("UPDATE schema_version SET version = version")
        await db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise StoreError(_locked_message(path)) from exc
        _raise_if_read_only(exc, path)
        raise StoreError(f"cannot prepare {path}: {exc}") from exc


def _raise_if_read_only(exc: sqlite3.Error, path: str) -> None:
    if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY") or "readonly" in str(exc):
        raise ReadOnlyStore(
            f"{path} cannot be written ({exc}); make the file and its folder writable by "
            "this user, or pass another --db path"
        ) from exc


def _locked_message(path: str) -> str:
    return (
        f"{path} is in use by another Trainboard process (a server or `trainboard train`); "
        "stop it, or talk to the running server instead, or pass another --db path"
    )
