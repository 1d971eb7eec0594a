"""The trainer child's event emitter: cheap to call in the training loop, durable on disk.

`emit(type, data)` only appends `(type, data, ts)` to a list (about a microsecond).
Every `flush_interval` seconds (checked against the timestamp `emit` takes anyway) the
pending events are handed, as one batch, to the emitter's writer thread; the training
thread goes straight back to work (unless `MAX_QUEUED_BATCHES` batches are already waiting:
then it waits, as it would on a full pipe, so memory stays bounded). The writer thread,
in batch order:

1. stamps every event's data with `attempt` and `n` (this child's counter, from 1) so
   the parent can recover events from the spool after a crash and skip those it has;
2. encodes each event as one strict JSON line with orjson (a non-finite float becomes
   null plus a `<key>_repr` string; numpy and torch scalars become numbers);
3. appends the lines to the spool, `events.jsonl`, in one write (a write-ahead log: an
   event reaches the parent only once it is on disk, so the spool always holds at least
   what the server stored, and recovery from it closes any gap);
4. sends the same bytes as ONE pipe message (the wire format of `backend.execution.job`);
5. appends PyTC-style human lines to `train.log`: one per logging interval
   (MONITOR.ITERATION_NUM[0]) with iteration, loss, learning rate and time left, plus
   validation, checkpoint, log, warning and final lines. Every such line also becomes a
   `log` event `{"level", "message", "source": "trainer"}` in the same batch (before a
   final event, after any other), so the Log panel shows what `train.log` shows; the
   loss line comes every `log_every` iterations, never per iteration.

The files are flushed to the OS at every batch (a killed child loses at most the batch
being written, and a torn last line is skipped by recovery and closed off by the next
open) and fsynced at the final flush. A failed send means the parent is gone:
`parent_gone` becomes true, the files keep being written, and the loop treats it as a
stop request. `emit` and `flush` belong to the training thread; other threads (logging
and `warnings` handlers) use `emit_threadsafe`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import math
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import orjson

from backend import jsontext
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
from backend.execution.job import EVENTS_FILE, LOG_FILE

FINAL_TYPES = (COMPLETED, FAILED, STOPPED)
DEFAULT_FLUSH_INTERVAL = 0.25
MAX_QUEUED_BATCHES = 64  # batches handed to the writer thread and not yet written
SOURCE = "trainer"  # the `source` of the log events the trainer writes

Pending = tuple[str, dict[str, Any], float]
# A batch for the writer thread: the events, fsync afterwards?, set once done.
_Job = tuple[list[Pending], bool, threading.Event | None]


class Emitter:
    """Batches events for the parent pipe and the run's log files."""

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
        self.count = 0  # events written so far; the next one gets n = count + 1
        self._interval = flush_interval
        self._clock = clock
        self._pending: list[Pending] = []
        self._foreign: deque[Pending] = deque()  # from other threads (thread-safe appends)
        self._last = clock()
        self._next = self._last + flush_interval
        self._ppid = os.getppid()
        self._eta: float | None = None
        self._files_ok = True
        log_dir = Path(log_path)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = log_dir / EVENTS_FILE
        self.log_file_path = log_dir / LOG_FILE
        self._jsonl = _open_spool(self.events_path)
        self._text = open(self.log_file_path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="emitter", daemon=True)
        self._writer.start()

    # --- the hot path ----------------------------------------------------------------------

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        """Queue one event. The caller hands over `data`; it must not mutate it afterwards.
        After the final event nothing more is sent or written: it could not be stored."""
        if self.finished:
            return
        ts = self._clock()
        self._pending.append((type_, data, ts))
        # One chained comparison covers "interval passed" and "wall clock went backwards".
        if not self._last <= ts < self._next:
            self.flush()

    def emit_threadsafe(self, type_: str, data: dict[str, Any]) -> None:
        """`emit` for any thread: the event goes out with the training thread's next flush."""
        if not self.finished:
            self._foreign.append((type_, data, self._clock()))

    # --- flushing --------------------------------------------------------------------------

    def flush(self, *, sync: bool = False) -> None:
        """Hand the pending events to the writer thread as one batch. With `sync`, wait
        until they (and everything before) are written, sent and fsynced."""
        now = self._clock()
        self._last, self._next = now, now + self._interval
        if os.getppid() != self._ppid:  # re-parented: the process that spawned us died
            self.parent_gone = True
        batch, self._pending = self._pending, []
        while self._foreign:
            batch.append(self._foreign.popleft())
        if not (batch or sync):
            return
        # Bounded: if the writer falls far behind (the parent stopped reading the pipe),
        # the training thread waits for it, as it would on a full pipe.
        wait = sync or self._jobs.qsize() >= MAX_QUEUED_BATCHES
        done = threading.Event() if wait else None
        self._jobs.put((batch, sync, done))
        if done is not None:
            while not done.wait(1.0):
                if not self._writer.is_alive():
                    break  # cannot happen short of a bug; never hang the child's exit

    def drain(self) -> None:
        """Wait until everything emitted so far is written and sent (no fsync)."""
        done = threading.Event()
        self.flush()
        self._jobs.put(([], False, done))
        done.wait()

    def finish(self, type_: str, data: dict[str, Any]) -> bool:
        """Emit the final event (completed, failed or stopped) and flush durably. Only the
        first call counts: a run has exactly one final event. Returns whether this one did."""
        if type_ not in FINAL_TYPES:
            raise ValueError(f"{type_!r} is not a final event type; use one of {FINAL_TYPES}")
        if self.finished:
            return False
        self.finished = True
        while self._foreign:  # what other threads said goes before the final event
            self._pending.append(self._foreign.popleft())
        self._pending.append((type_, data, self._clock()))
        self.flush(sync=True)
        return True

    def close(self) -> None:
        """Flush what is left, fsync, stop the writer, close the files and the connection
        (idempotent)."""
        if self._jsonl.closed:
            return
        self.flush(sync=True)
        self._jobs.put(None)
        self._writer.join()
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

    # --- the writer thread -----------------------------------------------------------------

    def _write_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch, sync, done = job
            try:
                if batch:
                    payload, text = self._encode(batch)
                    self._write_spool(payload, batch[-1][2])
                    self._send(payload)
                    self._write_log(text)
                if sync:
                    self._sync()
            except Exception:  # a bug here must not end the thread and hang every flush
                traceback.print_exc()
            finally:
                if done is not None:
                    done.set()

    def _encode(self, batch: list[Pending]) -> tuple[bytes, list[str]]:
        """The spool lines and train.log lines of a batch (the emitter's hottest code)."""
        lines: list[bytes] = []
        text: list[str] = []
        attempt, n, every = self.attempt, self.count, self.log_every
        for type_, data, ts in batch:
            n += 1
            data["attempt"] = attempt
            data["n"] = n
            if type_ == LOG:
                data.setdefault("source", SOURCE)
            line = json_line(type_, data, ts)  # may clean non-finite values in place
            it = data.get("iteration")
            if type_ == METRIC and type(it) is int and it % every and b"null" not in line:
                lines.append(line)  # not a logging iteration, a finite loss: no human line
                continue
            human = self._human(type_, data, ts)
            if human is None:
                lines.append(line)
                continue
            text.append(human)
            if type_ == LOG:
                lines.append(line)
                continue
            message = human.split(" ", 2)[2].rstrip("\n")  # without the timestamp
            said: dict[str, Any] = {"level": _level(type_, data), "message": message}
            said["source"] = SOURCE
            said |= {"attempt": attempt, "n": n}
            if type_ in FINAL_TYPES:  # the final event stays last
                n += 1
                data["n"] = n
                lines += [json_line(LOG, said, ts), json_line(type_, data, ts)]
            else:
                n += 1
                said["n"] = n
                lines += [line, json_line(LOG, said, ts)]
        self.count = n
        return b"".join(lines), text

    def _write_spool(self, payload: bytes, ts: float) -> None:
        if not self._files_ok:
            return
        try:
            view = memoryview(payload)
            while view:
                view = view[self._jsonl.write(view) or 0 :]
        except OSError as exc:
            self._file_error(exc, ts)

    def _send(self, payload: bytes) -> None:
        if self.conn is None or self.parent_gone:
            return
        try:
            self.conn.send_bytes(payload)
        except (OSError, EOFError, ValueError):
            # BrokenPipe / closed handle: the parent died or closed its end. Keep the files.
            self.parent_gone = True

    def _write_log(self, text: list[str]) -> None:
        if not (text and self._files_ok):
            return
        try:
            self._text.write("".join(text))
            self._text.flush()
        except OSError as exc:
            self._file_error(exc, time.time())

    def _file_error(self, exc: OSError, ts: float) -> None:
        # A full or vanished disk must not kill training: the pipe still carries events.
        self._files_ok = False
        message = f"cannot write the log files: {exc}"
        self._foreign.append((LOG, {"level": "error", "message": message}, ts))

    def _sync(self) -> None:
        if not self._files_ok:
            return
        for handle in (self._jsonl, self._text):
            with contextlib.suppress(OSError, ValueError):
                handle.flush()
                os.fsync(handle.fileno())

    def _human(self, type_: str, data: dict[str, Any], ts: float) -> str | None:
        """The train.log line for an event, or None when it gets none."""
        if type_ == PROGRESS:
            self._eta = data.get("eta_s")
            return None
        line = _describe(type_, data, self.log_every, self._eta)
        if line is None:
            return None
        return f"{_stamp(int(ts))} {line}\n"


@functools.lru_cache(maxsize=64)
def _stamp(second: int) -> str:
    """train.log's timestamp (local time; lines of the same second share one)."""
    return _dt.datetime.fromtimestamp(second).strftime("%Y-%m-%d %H:%M:%S")


def _open_spool(path: Path) -> IO[bytes]:
    """The spool, unbuffered: each batch is one write. A line torn by an earlier crash is
    closed with a newline first, so it cannot swallow this attempt's first event."""
    handle = open(path, "ab", buffering=0)  # noqa: SIM115
    if handle.tell() > 0:
        with open(path, "rb") as reader:
            reader.seek(-1, os.SEEK_END)
            if reader.read(1) != b"\n":
                handle.write(b"\n")
    return handle


def _level(type_: str, data: dict[str, Any]) -> str:
    if type_ == FAILED:
        return "error"
    if type_ == METRIC and data.get("loss") is None:
        return "warning"  # a non-finite loss
    return "info"


# --- strict JSON ---------------------------------------------------------------------------

_LINE = orjson.OPT_APPEND_NEWLINE  # non-str keys: TypeError, then strict_json (str keys)


def json_line(type_: str, data: dict[str, Any], ts: float) -> bytes:
    """One spool line: `{"type", "ts", "data"}` as strict JSON, ending in a newline.

    orjson writes NaN and Infinity as null, so a line holding null (rare) has its data
    cleaned in place with `strict_json`, which records the original as `<key>_repr`; the
    same happens to what orjson cannot write (numpy or torch scalars, paths).
    """
    record = {"type": type_, "ts": ts, "data": data}
    try:
        line = orjson.dumps(record, option=_LINE)
        if b"null" not in line:
            return line
    except TypeError:
        pass
    cleaned = strict_json(data)
    data.clear()
    data.update(cleaned)
    return jsontext.dumps(record) + b"\n"


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
