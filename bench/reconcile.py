"""Reconcile at scale: reading only a run's current attempt, against reading the whole run.

A run left in Training by a dead server has a long past (here `--events` metrics in its
first attempt, then a stop and a resume) and a short present (`--current` events of its
second attempt). Reconcile needs the present only: it reads from the version of the
attempt's `resumed` event (`RunSummary.attempt_version`). The reference, measured in the
same run on the same file, is the read from the run's first event (what it did before):
`attempt_version = None` makes `_current_attempt` do exactly that.

Prints `reconcile_current_attempt_s=<s> reconcile_whole_run_s=<s> ratio=<whole/current>
events=<n>`; asserts only that both reads find the same attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from backend import events as ev
from backend.events import NewEvent
from backend.execution.reconcile import _current_attempt
from backend.runs import RunService
from backend.store import EventStore

BATCH = 10_000


def metric(attempt: int, n: int) -> NewEvent:
    return NewEvent(ev.METRIC, {"attempt": attempt, "n": n, "iteration": n, "loss": 1.0 / n})


async def build(path: Path, past: int, current: int) -> str:
    service = RunService(await EventStore.open(path))
    await service.load()
    run_id = (await service.create({"name": "long", "log_path": None})).run_id
    await service.command(run_id, "start", {"attempt": 1})
    for start in range(1, past + 1, BATCH):
        batch = [metric(1, n) for n in range(start, min(start + BATCH, past + 1))]
        await service.record(run_id, batch)
    await service.record(run_id, [NewEvent(ev.STOPPED, {"attempt": 1, "n": past + 1})])
    await service.command(run_id, "resume", {"attempt": 2, "checkpoint": None})
    await service.record(
        run_id, [NewEvent(ev.LOG, {"level": "info", "message": "trainer", "pid": 1})]
    )
    await service.record(run_id, [metric(2, n) for n in range(1, current + 1)])
    await service.store.close()
    return run_id


async def timed(service: RunService, run_id: str) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    current = await _current_attempt(service, run_id)
    elapsed = time.perf_counter() - t0
    assert current.attempt is not None
    return elapsed, current.attempt, len(current.known)


async def main(past: int, current: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.db"
        run_id = await build(path, past, current)
        service = RunService(await EventStore.open(path))
        await service.load()
        summary = service.get(run_id)
        since, attempt, known = await timed(service, run_id)
        version = summary.attempt_version
        summary.attempt_version = None  # the reference: from the run's first event
        whole, attempt_ref, known_ref = await timed(service, run_id)
        summary.attempt_version = version
        assert (attempt, known) == (attempt_ref, known_ref) == (2, current)
        await service.store.close()
    print(
        f"reconcile_current_attempt_s={since:.4f} reconcile_whole_run_s={whole:.3f} "
        f"ratio={whole / since:.0f} events={past + current + 5}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="the run's past")
    parser.add_argument("--current", type=int, default=1_000, help="the current attempt's")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.current))
