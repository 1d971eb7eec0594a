"""Reconcile at scale: a long attempt left in Training costs what it lost, not its length.

A run's current attempt has `--events` metric events stored, and its spool
(`events.jsonl`) holds those plus `--lost` more that never reached the store (the server
died). Reconcile takes the attempt from the run's summary (`attempt_n`, `launch`) and
reads the spool backwards only as far as the first stored line. The reference, measured
in the same run on the same files, is what reconciling cost before: reading the attempt
back from the store and the whole spool forward.

Prints `reconcile_s=<s> reference_s=<s> ratio=<reference/reconcile> events=<n> lost=<n>`;
asserts only that exactly the lost events were recovered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import orjson

from backend import events as ev
from backend.events import NewEvent
from backend.execution.job import EVENTS_FILE
from backend.execution.reconcile import reconcile_run
from backend.runs import RunService
from backend.store import EventStore

BATCH = 10_000


def metric(n: int) -> NewEvent:
    return NewEvent(ev.METRIC, {"attempt": 1, "n": n, "iteration": n, "loss": 1.0 / n})


def write_spool(path: Path, batch: list[NewEvent]) -> None:
    """Append a batch as the trainer does: one JSON line per event."""
    with open(path, "ab") as spool:
        spool.writelines(
            orjson.dumps({"type": e.type, "ts": time.time(), "data": e.data}) + b"\n" for e in batch
        )


def count_missing(path: Path, known: set[int]) -> int:
    with open(path, encoding="utf-8") as spool:
        return sum(1 for line in spool if json.loads(line)["data"]["n"] not in known)


async def build(folder: Path, stored: int, lost: int) -> str:
    service = RunService(await EventStore.open(folder / "events.db"))
    await service.load()
    log_path = folder / "log"
    log_path.mkdir()
    run_id = (await service.create({"name": "long", "log_path": str(log_path)})).run_id
    await service.command(run_id, "start", {"attempt": 1})
    for start in range(1, stored + lost + 1, BATCH):
        batch = [metric(n) for n in range(start, min(start + BATCH, stored + lost + 1))]
        write_spool(log_path / EVENTS_FILE, batch)
        kept = [e for e in batch if e.data["n"] <= stored]
        if kept:
            await service.record(run_id, kept)
    await service.store.close()
    return run_id


async def reference(service: RunService, run_id: str, log_path: Path) -> float:
    """The old way: the attempt read back from the store, the spool parsed forward."""
    t0 = time.perf_counter()
    known: set[int] = set()
    after = 0
    while page := await service.store.read_run(run_id, after, limit=10_000):
        known.update(e.data["n"] for e in page if isinstance(e.data.get("n"), int))
        after = page[-1].version
    assert count_missing(log_path / EVENTS_FILE, known) > 0
    return time.perf_counter() - t0


async def main(stored: int, lost: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        run_id = await build(folder, stored, lost)
        service = RunService(await EventStore.open(folder / "events.db"))
        await service.load()
        ref = await reference(service, run_id, folder / "log")
        t0 = time.perf_counter()
        recovered = await reconcile_run(service, run_id, kill_grace_s=0.1)
        took = time.perf_counter() - t0
        assert recovered == lost, (recovered, lost)
        await service.store.close()
    print(
        f"reconcile_s={took:.4f} reference_s={ref:.3f} ratio={ref / took:.0f} "
        f"events={stored} lost={lost}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="stored of the attempt")
    parser.add_argument("--lost", type=int, default=1_000, help="in the spool only")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.lost))
