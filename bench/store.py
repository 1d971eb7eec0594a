"""Event store throughput against raw sqlite3, and fold speed over a million events.

Prints figures; asserts nothing. Every writer uses the same file settings (WAL,
synchronous=NORMAL) and the same rows, in the same run, so the ratios are meaningful on a
noisy machine. The store is fed the way the server feeds it: trainer batches of events
from a few concurrent producers, committed by group commit; the batches (dicts and
`NewEvent`s, what the ingest path hands the store) are made before the clock starts, as
the ceiling's rows are, and a second figure makes them on the clock. Two references:
`sqlite3.executemany` encoding each event's data as the store does (orjson), and the
same with rows encoded before the clock starts (the physical ceiling). The process runs
with the server's garbage-collector settings (`backend.serve.settle_heap`).

Last line: `store_events_per_s=<n> raw_sqlite_events_per_s=<n> ratio=<store/raw>
raw_preencoded_events_per_s=<n> ratio_preencoded=<store/preencoded>
store_built_events_per_s=<n> fold_events_per_s=<n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from backend import events as ev
from backend.events import Event, NewEvent
from backend.jsontext import dumps
from backend.projections import RunSummary
from backend.serve import settle_heap
from backend.store import EventStore


def metric_data(i: int) -> dict[str, object]:
    return {"attempt": 1, "n": i, "iteration": i, "loss": 1.0 / (i + 1), "lr": 0.001}


async def store_rate(
    path: Path, total: int, batch: int, producers: int, *, build_in_clock: bool = False
) -> float:
    """Events/s through `EventStore.append` by `producers` concurrent runs. The batches
    are made before the clock starts (as the ceiling's rows are), unless `build_in_clock`:
    then each producer also builds its dicts and `NewEvent`s on the clock."""
    store = await EventStore.open(path)
    per_producer = total // producers

    def make(start: int) -> list[NewEvent]:
        return [NewEvent(ev.METRIC, metric_data(i)) for i in range(start, start + batch)]

    starts = range(0, per_producer, batch)
    ready = {} if build_in_clock else {s: make(s) for s in starts}

    async def produce(run: str) -> None:
        for start in starts:
            await store.append(run, ready[start] if ready else make(start))

    began = time.perf_counter()
    await asyncio.gather(*(produce(f"run{p}") for p in range(producers)))
    elapsed = time.perf_counter() - began
    await store.close()
    return per_producer * producers / elapsed


def raw_rate(path: Path, total: int, batch: int, pre_encoded: bool = False) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL, "
        "version INTEGER NOT NULL, type TEXT NOT NULL, ts REAL NOT NULL, data TEXT NOT NULL, "
        "UNIQUE (run_id, version))"
    )

    def rows(start: int) -> list[tuple[int, str, int, str, float, str]]:
        return [
            (i + 1, "run0", i + 1, ev.METRIC, time.time(), dumps(metric_data(i)).decode())
            for i in range(start, start + batch)
        ]

    ready = {start: rows(start) for start in range(0, total, batch)} if pre_encoded else {}
    began = time.perf_counter()
    for start in range(0, total, batch):
        rows_ = ready.pop(start) if pre_encoded else rows(start)
        db.execute("BEGIN")
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows_)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - began
    db.close()
    return total / elapsed


def fold_rate(count: int) -> float:
    events = [Event(1, "r", 1, ev.CREATED, 0.0, {"name": "bench", "total_iterations": count})]
    events.append(Event(2, "r", 2, ev.STARTED, 0.0, {"attempt": 1}))
    events += [Event(v, "r", v, ev.METRIC, 0.0, metric_data(v)) for v in range(3, count)]
    events.append(Event(count, "r", count, ev.COMPLETED, 0.0, {"iteration": count}))
    summary = RunSummary.new("r")
    began = time.perf_counter()
    for event in events:
        summary.replay(event)
    elapsed = time.perf_counter() - began
    assert summary.run.problems == [] and summary.state == "Complete"
    return count / elapsed


def main() -> None:
    settle_heap()  # the server's garbage-collector settings (`trainboard serve` does this)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="events per trainer batch")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--fold-events", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_rate(Path(tmp) / "raw.db", args.events, args.batch)
        ceiling = raw_rate(Path(tmp) / "ceiling.db", args.events, args.batch, pre_encoded=True)
        store = asyncio.run(
            store_rate(Path(tmp) / "store.db", args.events, args.batch, args.producers)
        )
        built = asyncio.run(
            store_rate(
                Path(tmp) / "built.db", args.events, args.batch, args.producers, build_in_clock=True
            )
        )
    folded = fold_rate(args.fold_events)
    print(f"raw sqlite3.executemany, encoding included: {raw:,.0f} events/s")
    print(f"raw sqlite3.executemany of pre-encoded rows: {ceiling:,.0f} events/s")
    print(
        f"event store (group commit, {args.producers} producers, batches of {args.batch}):"
        f" {store:,.0f} events/s"
    )
    print(f"event store, batches (dicts, NewEvents) built on the clock: {built:,.0f} events/s")
    print(f"fold of {args.fold_events:,} events: {folded:,.0f} events/s")
    print(
        f"store_events_per_s={store:.0f} raw_sqlite_events_per_s={raw:.0f} "
        f"ratio={store / raw:.2f} raw_preencoded_events_per_s={ceiling:.0f} "
        f"ratio_preencoded={store / ceiling:.2f} store_built_events_per_s={built:.0f} "
        f"fold_events_per_s={folded:.0f}"
    )


if __name__ == "__main__":
    main()
