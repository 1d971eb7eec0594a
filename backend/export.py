"""A run's history to take away: every event as JSON Lines, its metrics as CSV, or its
scalars and validation previews as TensorBoard event files.

All of them stream page by page, so exporting a million-event run needs no more memory
than one page.
"""

from __future__ import annotations

import csv
import io
import json
import math
import socket
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from backend import events as ev
from backend.events import Event
from backend.security import PathError, confine
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


# --- TensorBoard -----------------------------------------------------------------------------

TB_FILE_GLOB = "events.out.tfevents.*"
FILE_VERSION = "brain.Event:2"  # what TensorBoard's own writer declares
ZIP_CHUNK = 256 * 1024
PREVIEW_MAX_BYTES = 32 * 1024 * 1024
_COUNTERS = frozenset({"iteration", "attempt", "n"})  # numbers that are not measurements
PreviewReader = Callable[[str], bytes | None]


@dataclass
class TensorBoardCounts:
    """What an export wrote: TensorBoard events with scalars, images, previews not found."""

    scalar_events: int = 0
    images: int = 0
    missing_previews: list[str] = field(default_factory=list)


class TensorBoardExport:
    """A run's scalars and validation previews as one TensorBoard event file.

    Fed one stored event at a time (`feed`), so a million-event run passes through page by
    page. Every `metric` becomes scalars `train/<field>` (and `train/components/<name>`),
    every `validation` `val/<field>` and its preview PNG an image `val/preview`, at the
    event's iteration and time. A resumed run that repeats iterations writes them again,
    in order (TensorBoard shows both). Records are TensorBoard's own protobufs written by
    its own `RecordWriter`, in the calling thread (`EventFileWriter` would hand each one
    to a thread of its own: a quarter slower). Most of the cost is TensorBoard's CRC32C,
    pure Python without TensorFlow. Imports `tensorboard` only when constructed: the
    server does not need it.
    """

    def __init__(self, directory: Path, run_id: str, read_preview: PreviewReader) -> None:
        from tensorboard.compat.proto.event_pb2 import Event as TbEvent
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.read_preview = read_preview
        self.counts = TensorBoardCounts()
        directory.mkdir(parents=True, exist_ok=True)
        # The name TensorBoard's loader looks for: events.out.tfevents.<time>.<host>...
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{run_id}"
        # Open for the export's life; closed by `close`.
        self._writer = RecordWriter(open(directory / name, "wb", buffering=1 << 20))  # noqa: SIM115
        self._writer.write(
            TbEvent(wall_time=time.time(), file_version=FILE_VERSION).SerializeToString()
        )

    def __enter__(self) -> TensorBoardExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file."""
        if not self._writer.closed:
            self._writer.close()

    def feed(self, event: Event) -> None:
        iteration = event.data.get("iteration")
        if not isinstance(iteration, int) or isinstance(iteration, bool):
            return
        if event.type == ev.METRIC:
            scalars = _scalars("train", event.data)
            scalars.update(_scalars("train/components", event.data.get("components")))
            self._write(event, iteration, scalars)
        elif event.type == ev.VALIDATION:
            self._write(event, iteration, _scalars("val", event.data))
            preview = event.data.get("preview")
            if isinstance(preview, str) and preview:
                self._image(event, iteration, preview)

    def _write(self, event: Event, step: int, scalars: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        if scalars:
            values = [Summary.Value(tag=tag, simple_value=v) for tag, v in scalars.items()]
            self._add(event, step, Summary(value=values))
            self.counts.scalar_events += 1

    def _image(self, event: Event, step: int, path: str) -> None:
        from PIL import Image, UnidentifiedImageError
        from tensorboard.compat.proto.summary_pb2 import Summary

        png = self.read_preview(path)
        try:
            with Image.open(io.BytesIO(png or b"")) as image:
                width, height, bands = image.width, image.height, len(image.getbands())
        except (UnidentifiedImageError, OSError):
            self.counts.missing_previews.append(path)
            return
        picture = Summary.Image(
            height=height, width=width, colorspace=bands, encoded_image_string=png
        )
        self._add(event, step, Summary(value=[Summary.Value(tag="val/preview", image=picture)]))
        self.counts.images += 1

    def _add(self, event: Event, step: int, summary: Any) -> None:
        from tensorboard.compat.proto.event_pb2 import Event as TbEvent

        record = TbEvent(wall_time=event.ts, step=step, summary=summary)
        self._writer.write(record.SerializeToString())


def _scalars(prefix: str, data: Any) -> dict[str, float]:
    """The measurements of an event's data (numbers; not its counters or flags), as tags."""
    if not isinstance(data, Mapping):
        return {}
    return {
        f"{prefix}/{key}": float(value)
        for key, value in data.items()
        if key not in _COUNTERS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def tensorboard_files(directory: Path) -> list[Path]:
    """TensorBoard event files already in a folder (an export would add a second run)."""
    return sorted(directory.glob(TB_FILE_GLOB)) if directory.is_dir() else []


async def tensorboard_zip(
    store: EventStore, run_id: str, read_preview: PreviewReader
) -> AsyncIterator[bytes]:
    """The run's TensorBoard event file as a zip (`run-<id>/events.out.tfevents.*`): written
    page by page in a worker thread into a temporary folder, zipped, then streamed. The
    folder goes when the stream ends or the client leaves."""
    with tempfile.TemporaryDirectory(prefix="trainboard-tensorboard-") as tmp:
        folder = Path(tmp) / f"run-{run_id}"
        board = await anyio.to_thread.run_sync(TensorBoardExport, folder, run_id, read_preview)
        try:
            async for page in run_events(store, run_id):
                await anyio.to_thread.run_sync(_feed, board, page)
        finally:
            await anyio.to_thread.run_sync(board.close)
        archive = Path(tmp) / "run.zip"
        await anyio.to_thread.run_sync(_zip, folder, archive)
        with archive.open("rb") as handle:
            while chunk := await anyio.to_thread.run_sync(handle.read, ZIP_CHUNK):
                yield chunk


def run_file_reader(folders: Iterable[str | None]) -> PreviewReader:
    """Reads a file named by a run's events only inside the run's own folders (symlinks
    resolved; `security.confine`), at most PREVIEW_MAX_BYTES; None otherwise."""
    roots = [Path(f) for f in folders if f]

    def read(path: str) -> bytes | None:
        for root in roots:
            try:
                target = confine(root, path)
                if target.is_file() and target.stat().st_size <= PREVIEW_MAX_BYTES:
                    return target.read_bytes()
            except (PathError, OSError):
                continue
        return None

    return read


def _feed(board: TensorBoardExport, page: list[Event]) -> None:
    for event in page:
        board.feed(event)


def _zip(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.iterdir()):
            out.write(path, f"{folder.name}/{path.name}")
