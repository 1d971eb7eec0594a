"""The trainer child's event emitter: cheap to call in the training loop, durable on disk.

`emit(type, data)` only appends `(type, data, ts)` to a list (well under a microsecond).
Every `flush_interval` seconds (checked against the timestamp `emit` takes anyway) the
pending events become ONE `conn.send(batch)` message to the parent (the wire format of
`backend.job`) and are appended to two files in the log folder:

- `events.jsonl`: one `{"type", "ts", "data"}` object per line, strict JSON. Every event's
  data carries `attempt` and `n` (this child's counter, from 1) so the parent can recover
  events from the file after a crash and skip the ones it already has.
- `train.log`: PyTC-style human lines: one per logging interval (MONITOR.ITERATION_NUM[0])
  with iteration, loss, learning rate and time left, plus validation, checkpoint, log
  and final lines.

Both files are written through ordinary buffered appends that are flushed to the OS at
every flush (so a killed child loses at most the last `flush_interval`) and fsynced at
the final flush. A failed `conn.send` means the parent is gone: `parent_gone` becomes true,
the files keep being written, and the loop treats it as a stop request.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from backend.events import (
    CHECKPOINT,
    COMPLETED,
    FAILED,
    LOG,
    METRIC,
    PROGRESS,
    STOPPED,
    TRAINER_READY,
    VALIDATION,
)
from backend.job import EVENTS_FILE, LOG_FILE

FINAL_TYPES = (COMPLETED, FAILED, STOPPED)
DEFAULT_FLUSH_INTERVAL = 0.25

Pending = tuple[str, dict[str, Any], float]


class Emitter:
    """Batches events for the parent pipe and the run's log files. Single-threaded."""

    def __init__(
        self,
        conn: Connection | None,
        log_path: str | Path,
        *,
        attempt: int,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        log_every: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.attempt = attempt
        self.log_every = max(1, int(log_every))
        self.parent_gone = False
        self.finished = False
        self.count = 0  # events flushed so far; the next one gets n = count + 1
        self._interval = flush_interval
        self._clock = clock
        self._pending: list[Pending] = []
        self._last = clock()
        self._next = self._last + flush_interval
        self._ppid = os.getppid()
        self._eta: float | None = None
        self._files_ok = True
        self._metrics = _MetricLines()
        log_dir = Path(log_path)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = log_dir / EVENTS_FILE
        self.log_file_path = log_dir / LOG_FILE
        self._jsonl = _open_append(self.events_path)
        self._text = _open_append(self.log_file_path)

    # --- the hot path ----------------------------------------------------------------------

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        """Queue one event. The caller hands over `data`; it must not mutate it afterwards."""
        ts = self._clock()
        self._pending.append((type_, data, ts))
        # One chained comparison covers "interval passed" and "wall clock went backwards".
        if not self._last <= ts < self._next:
            self.flush()

    # --- flushing --------------------------------------------------------------------------

    def flush(self, *, sync: bool = False) -> None:
        """Send the pending events as one batch and append them to the files."""
        now = self._clock()
        self._last, self._next = now, now + self._interval
        if os.getppid() != self._ppid:  # re-parented: the process that spawned us died
            self.parent_gone = True
        batch, self._pending = self._pending, []
        if batch:
            # Encoding first stamps `attempt`/`n` and cleans non-finite floats in place, so
            # the parent gets strict JSON too; then the pipe (latency matters), the files.
            lines, text = self._encode(batch)
            self._send(batch)
            self._write(lines, text, batch[-1][2])
        if sync:
            self._sync()

    def finish(self, type_: str, data: dict[str, Any]) -> bool:
        """Emit the final event (completed, failed or stopped) and flush durably. Only the
        first call counts: a run has exactly one final event. Returns whether this one did."""
        if type_ not in FINAL_TYPES:
            raise ValueError(f"{type_!r} is not a final event type; use one of {FINAL_TYPES}")
        if self.finished:
            return False
        self.finished = True
        self._pending.append((type_, data, self._clock()))
        self.flush(sync=True)
        return True

    def close(self) -> None:
        """Flush what is left, fsync, close the files and the connection (idempotent)."""
        if self._jsonl.closed:
            return
        self.flush(sync=True)
        for handle in (self._jsonl, self._text):
            with contextlib.suppress(OSError):
                handle.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()

    def check_parent(self) -> bool:
        """True when the parent is gone (a failed send or a re-parenting)."""
        if not self.parent_gone and os.getppid() != self._ppid:
            self.parent_gone = True
        return self.parent_gone

    # --- internals -------------------------------------------------------------------------

    def _send(self, batch: list[Pending]) -> None:
        if self.conn is None or self.parent_gone:
            return
        try:
            self.conn.send(batch)
        except (OSError, EOFError, ValueError):
            # BrokenPipe / closed handle: the parent died or closed its end. Keep the files.
            self.parent_gone = True

    def _encode(self, batch: list[Pending]) -> tuple[list[str], list[str]]:
        """JSON lines and train.log lines of a batch. The hottest code of the emitter:
        metric events, nearly all of the traffic, take a fast path."""
        lines: list[str] = []
        text: list[str] = []
        attempt, n, every = self.attempt, self.count, self.log_every
        for type_, data, ts in batch:
            n += 1
            data["attempt"] = attempt
            data["n"] = n
            if type_ == METRIC:
                line = self._metrics.line(data, ts)
                lines.append(line if line is not None else _json_line(type_, data, ts))
                iteration = data.get("iteration")
                if type(iteration) is int and iteration % every and line is not None:
                    continue  # not a logging iteration (a fast line means a finite loss)
            else:
                lines.append(_json_line(type_, data, ts))
            human = self._human(type_, data, ts)
            if human is not None:
                text.append(human)
        self.count = n
        return lines, text

    def _write(self, lines: list[str], text: list[str], ts: float) -> None:
        if not self._files_ok:
            return
        try:
            self._jsonl.write("".join(lines))
            self._jsonl.flush()
            if text:
                self._text.write("".join(text))
                self._text.flush()
        except OSError as exc:
            # A full or vanished disk must not kill training: the pipe still carries events.
            self._files_ok = False
            self._pending.append(
                (LOG, {"level": "error", "message": f"cannot write the log files: {exc}"}, ts)
            )

    def _sync(self) -> None:
        if not self._files_ok:
            return
        for handle in (self._jsonl, self._text):
            with contextlib.suppress(OSError, ValueError):
                os.fsync(handle.fileno())

    def _human(self, type_: str, data: dict[str, Any], ts: float) -> str | None:
        """The train.log line for an event, or None when it gets none."""
        if type_ == PROGRESS:
            self._eta = data.get("eta_s")
            return None
        line = _describe(type_, data, self.log_every, self._eta)
        if line is None:
            return None
        stamp = _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
        return f"{stamp} {line}\n"


def _open_append(path: Path) -> IO[str]:
    # A large buffer: writes reach the OS only at each flush, in one system call.
    return open(path, "a", encoding="utf-8", buffering=1 << 16)


# --- strict JSON ---------------------------------------------------------------------------


def _json_line(type_: str, data: dict[str, Any], ts: float) -> str:
    record = {"type": type_, "ts": ts, "data": data}
    try:
        return json.dumps(record, allow_nan=False) + "\n"
    except (ValueError, TypeError):
        # Rare path: a NaN loss or a numpy scalar. Clean the data in place, so the
        # batch sent to the parent afterwards is strict JSON too.
        cleaned = strict_json(data)
        data.clear()
        data.update(cleaned)
        return json.dumps(record, allow_nan=False) + "\n"


class _MetricLines:
    """JSON lines of metric events without the generic encoder (about twice as fast: most
    of the cost is float formatting, done once per value here). Returns None, and the
    caller falls back to `json`, whenever the data is not exactly the usual shape."""

    _KEYS = frozenset(("iteration", "loss", "lr", "components", "attempt", "n"))

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}  # component name -> its JSON string, cached
        self._lr, self._lr_text = math.nan, "NaN"  # the LR changes rarely: format it once

    def line(self, data: dict[str, Any], ts: float) -> str | None:
        if data.keys() != self._KEYS:
            return None
        it, loss, lr, components = data["iteration"], data["loss"], data["lr"], data["components"]
        if not (type(it) is int and _finite(loss) and _finite(lr) and type(ts) is float):
            return None
        if type(components) is not dict:
            return None
        parts = []
        for key, value in components.items():
            if not _finite(value) or type(key) is not str:
                return None
            name = self._keys.get(key)
            if name is None:
                name = self._keys[key] = json.dumps(key)
            parts.append(f"{name}:{value!r}")
        if lr != self._lr:
            self._lr, self._lr_text = lr, repr(lr)
        return (
            f'{{"type":"metric","ts":{ts!r},"data":{{"iteration":{it},"loss":{loss!r},'
            f'"lr":{self._lr_text},"components":{{{",".join(parts)}}},'
            f'"attempt":{data["attempt"]},"n":{data["n"]}}}}}\n'
        )


def _finite(value: Any) -> bool:
    # Exactly float: bool and numpy scalars must go through the generic encoder.
    return type(value) is float and -math.inf < value < math.inf


def strict_json(value: Any) -> Any:
    """A copy of `value` that `json.dumps(..., allow_nan=False)` accepts.

    In a dict, a non-finite float under key `k` becomes None and the original goes to
    `k_repr` as a string ("nan", "inf", "-inf"); in a list it becomes None. Numpy and torch
    scalars become Python numbers, tuples become lists, paths and other objects strings.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            plain = _scalar(item)
            if isinstance(plain, float) and not math.isfinite(plain):
                out[str(key)] = None
                out[f"{key}_repr"] = repr(plain)
            else:
                out[str(key)] = strict_json(plain)
        return out
    if isinstance(value, list | tuple):
        items = [_scalar(v) for v in value]
        return [
            None if isinstance(v, float) and not math.isfinite(v) else strict_json(v) for v in items
        ]
    value = _scalar(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _scalar(value: Any) -> Any:
    # numpy / torch scalars (and 0-d arrays) expose .item(); avoid importing either here.
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 1) == 0:
        return item()
    return value


# --- train.log lines -----------------------------------------------------------------------


def _fmt_float(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "nan"


def _fmt_eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "?"
    return str(_dt.timedelta(seconds=round(seconds)))


def _describe(type_: str, data: dict[str, Any], log_every: int, eta: Any) -> str | None:
    it = data.get("iteration")
    if type_ == METRIC:
        loss = data.get("loss")
        # A non-finite loss (null here) is always worth a line: it is why the run failed.
        if not isinstance(it, int) or (it % log_every and loss is not None):
            return None
        shown = _fmt_float(loss, ".5f") if loss is not None else data.get("loss_repr", "nan")
        return (
            f"[Iteration {it:05d}] train_loss={shown} lr={_fmt_float(data.get('lr'), '.3e')} "
            f"time_left={_fmt_eta(eta)}"
        )
    if type_ == VALIDATION:
        best = " (best)" if data.get("best") else ""
        return (
            f"[Validation {it:05d}] val_loss={_fmt_float(data.get('loss'), '.5f')} "
            f"dice={_fmt_float(data.get('dice'), '.4f')} "
            f"iou={_fmt_float(data.get('iou'), '.4f')}{best}"
        )
    if type_ == CHECKPOINT:
        best = " (best)" if data.get("best") else ""
        return f"[Checkpoint {it:05d}] saved {data.get('path')}{best}"
    if type_ == TRAINER_READY:
        return (
            f"Trainer ready: device={data.get('device')} amp={data.get('amp')} "
            f"parameters={data.get('parameters')} torch={data.get('torch')} "
            f"start_iteration={data.get('start_iteration')}"
        )
    if type_ == LOG:
        return f"[{str(data.get('level', 'info')).upper()}] {data.get('message')}"
    if type_ == COMPLETED:
        return f"Training completed at iteration {it}; checkpoint {data.get('checkpoint')}"
    if type_ == STOPPED:
        return f"Training stopped at iteration {it}; checkpoint {data.get('checkpoint')}"
    if type_ == FAILED:
        where = f" at iteration {it}" if it is not None else ""
        return f"Training failed{where}: {data.get('message')}\n  hint: {data.get('hint')}"
    return None
