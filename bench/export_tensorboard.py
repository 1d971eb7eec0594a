"""The TensorBoard export's cost per event, against the JSON Lines export of the same run.

    .venv/bin/python bench/export_tensorboard.py [--events 100000]

Builds a run of metric events in a real store (a temporary folder), then exports it page
by page as the server and the CLI do: to TensorBoard (`backend.export.TensorBoardExport`)
and to JSON Lines (`backend.export.jsonl`), timed in the same process. Then the peak of
Python allocations (tracemalloc) during a TensorBoard export of a tenth of the run and of
the whole run (both over one page of 5,000 events): a streaming export's peak is one
page's, whatever the run's length.

Last line: `tensorboard_us= jsonl_us= ratio= peak_mb_tenth= peak_mb_all= file_mb=`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend import export
from backend.events import NewEvent
from backend.store import EventStore

RUN = "b0b0b0b0b0b0"


async def fill(store: EventStore, run_id: str, n: int) -> None:
    await store.append(run_id, [NewEvent("created", {"name": "bench"})], 0)
    version = 1
    for start in range(0, n, 10_000):
        batch = [
            NewEvent(
                "metric",
                {"iteration": i, "loss": 1 / (i + 1), "lr": 0.01, "components": {"bce": 0.5}},
            )
            for i in range(start, min(n, start + 10_000))
        ]
        await store.append(run_id, batch, version)
        version += len(batch)


async def to_tensorboard(store: EventStore, run_id: str, folder: Path) -> None:
    with export.TensorBoardExport(folder, run_id, lambda path: None) as board:
        async for page in export.run_events(store, run_id):
            for event in page:
                board.feed(event)


async def to_jsonl(store: EventStore, run_id: str) -> int:
    return sum([len(chunk) async for chunk in export.jsonl(store, run_id)])


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = await EventStore.open(root / "events.db")
        await fill(store, RUN, n)
        await fill(store, "a0a0a0a0a0a0", n // 10)
        start = time.perf_counter()
        await to_tensorboard(store, RUN, root / "tb")
        tensorboard_s = time.perf_counter() - start
        start = time.perf_counter()
        await to_jsonl(store, RUN)
        jsonl_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (root / "tb").iterdir())
        peaks = []
        for run_id, folder in (("a0a0a0a0a0a0", "tenth"), (RUN, "all")):
            tracemalloc.start()
            await to_tensorboard(store, run_id, root / folder)
            peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
            tracemalloc.stop()
        await store.close()
    tb_us, jsonl_us = tensorboard_s / n * 1e6, jsonl_s / n * 1e6
    print(
        f"tensorboard_us={tb_us:.1f} jsonl_us={jsonl_us:.1f} ratio={tb_us / jsonl_us:.1f} "
        f"peak_mb_tenth={peaks[0]:.1f} peak_mb_all={peaks[1]:.1f} file_mb={size / 2**20:.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().events))
