"""A run's history as a download: every event as JSON Lines, or its metrics as CSV.

Both stream page by page from the store, so exporting a million-event run needs no more
memory than one page.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from backend import events as ev
from backend.events import Event
from backend.store import EventStore

PAGE = 5_000
CSV_COLUMNS = ("iteration", "loss", "lr", "val_loss", "dice", "iou")


async def run_events(store: EventStore, run_id: str) -> AsyncIterator[list[Event]]:
    """A run's events in pages, in version order."""
    after = 0
    while page := await store.read_run(run_id, after, limit=PAGE):
        yield page
        after = page[-1].version


def jsonl_lines(events: Iterable[Event]) -> str:
    return "".join(
        json.dumps(e.to_json(), separators=(",", ":"), allow_nan=False) + "\n" for e in events
    )


async def jsonl(store: EventStore, run_id: str) -> AsyncIterator[str]:
    async for page in run_events(store, run_id):
        yield jsonl_lines(page)


class MetricRows:
    """Folds metric and validation events into CSV rows, one per reported iteration.

    A validation at the iteration of the metric just before it joins that row. A resumed
    run that repeats iterations gets new rows: the CSV tells what happened, in order.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def feed(self, event: Event) -> list[dict[str, Any]]:
        if event.type == ev.METRIC:
            fields = {"loss": event.data.get("loss"), "lr": event.data.get("lr")}
        elif event.type == ev.VALIDATION:
            fields = {
                "val_loss": event.data.get("loss"),
                "dice": event.data.get("dice"),
                "iou": event.data.get("iou"),
            }
        else:
            return []
        iteration = event.data.get("iteration")
        row = self.pending
        if row is not None and row["iteration"] == iteration and not set(fields) & set(row):
            row.update(fields)
            return []
        self.pending = {"iteration": iteration, **fields}
        return [row] if row is not None else []

    def finish(self) -> list[dict[str, Any]]:
        row, self.pending = self.pending, None
        return [row] if row is not None else []


def csv_text(rows: Iterable[dict[str, Any]], header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


async def metrics_csv(store: EventStore, run_id: str) -> AsyncIterator[str]:
    rows = MetricRows()
    yield csv_text([], header=True)
    async for page in run_events(store, run_id):
        out = [row for event in page for row in rows.feed(event)]
        if out:
            yield csv_text(out)
    yield csv_text(rows.finish())
