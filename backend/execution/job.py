"""What the server hands a trainer child, and the child's entry point as the parent sees it.

This module is torch-free: the parent process imports it to spawn the child, and only
the child, inside `child_entry`, imports `backend.trainer` (and with it torch).

Wire format, child -> parent over a `multiprocessing.Connection`: each message
(`send_bytes`) is a batch of events as JSON lines, byte for byte the lines the child has
just appended to its spool, `<log_path>/events.jsonl`: one `{"type", "ts", "data"}`
object per line, strict JSON (orjson), each line ending in a newline. No pickle crosses
the pipe, so a batch can neither run code in the server nor import torch into it, and
what the server stores can be compared with the spool line for line. The child sends a
few batches per second at most; its last batch holds its final event (`completed`,
`failed` or `stopped`); then it closes its end. `decode_batch` turns a message back into
`(type, data, ts)` tuples. Parent -> child: the shared `stop` Event (a graceful stop:
checkpoint, report `stopped`, exit 0); SIGTERM does the same.

`TrainJob.options["visible_devices"]` ("0", "0,1"; set by the local executor from the
run's slot) becomes the child's `CUDA_VISIBLE_DEVICES` before the trainer is imported.

`TrainJob.options["synthetic"]` (a dict: `rate`, `seconds`; see
`backend.trainer.synthetic`) makes the child emit metric events at a chosen rate through
the same emitter, pipe and spool instead of training: it never imports torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as StopFlag
from typing import Any

import orjson

WireEvent = tuple[str, dict[str, Any], float]

EVENTS_FILE = "events.jsonl"
LOG_FILE = "train.log"


@dataclass(frozen=True)
class TrainJob:
    """Everything a child needs to train one attempt of one run."""

    run_id: str
    attempt: int
    config: dict[str, Any]  # resolved PyTC values, every default filled (docs/contracts.md)
    output_path: str  # checkpoints (DATASET.OUTPUT_PATH)
    log_path: str  # events.jsonl, train.log, validation previews
    seed: int = 0
    resume_from: str | None = None  # checkpoint to resume from
    own_checkpoints: tuple[str, ...] = ()  # this run's checkpoint paths, newest first
    options: dict[str, Any] = field(default_factory=dict)  # e.g. flush interval for tests

    def to_json(self) -> bytes:
        """The job as one JSON object (what a batch job reads from `job.json`)."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, text: bytes | str) -> TrainJob:
        """The job `to_json` wrote; ValueError naming the field when it is not one."""
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"a train job must be a JSON object: {exc}") from None
        if not isinstance(record, dict):
            raise ValueError("a train job must be a JSON object")
        unknown = set(record) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown train job field(s): {', '.join(sorted(unknown))}")
        try:
            job = cls(**record)
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"not a train job: {exc}") from None
        checks = {
            "run_id": isinstance(job.run_id, str),
            "attempt": isinstance(job.attempt, int),
            "config": isinstance(job.config, dict),
            "output_path": isinstance(job.output_path, str),
            "log_path": isinstance(job.log_path, str),
            "seed": isinstance(job.seed, int),
            "resume_from": job.resume_from is None or isinstance(job.resume_from, str),
            "own_checkpoints": isinstance(job.own_checkpoints, list | tuple),
            "options": isinstance(job.options, dict),
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"train job field(s) of the wrong type: {', '.join(wrong)}")
        return replace(job, own_checkpoints=tuple(job.own_checkpoints))


def child_entry(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    """Spawn target: runs in the child process only."""
    apply_devices(job)
    from backend.trainer.child import main

    main(job, conn, stop)


def apply_devices(job: TrainJob) -> None:
    """Show the child only its slot's GPUs (`options["visible_devices"]`): set before the
    trainer imports torch, which reads `CUDA_VISIBLE_DEVICES` once."""
    devices = job.options.get("visible_devices")
    if isinstance(devices, str):
        os.environ["CUDA_VISIBLE_DEVICES"] = devices


def decode_batch(message: bytes) -> list[WireEvent]:
    """The `(type, data, ts)` events of one wire message. A line that is not a JSON
    object with a string `type`, an object `data` and a numeric `ts` becomes an error
    `log` event saying so (the rest of the batch is kept)."""
    events: list[WireEvent] = []
    for line in message.splitlines():
        try:
            record = orjson.loads(line)
            type_, data, ts = record["type"], record["data"], record["ts"]
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            text = f"the trainer sent a line that is not an event ({exc}): {line[:200]!r}"
            events.append(("log", {"level": "error", "message": text}, time.time()))
            continue
        events.append((type_, data, ts))
    return events


def receive_batch(conn: Connection) -> list[WireEvent]:
    """Block for the next wire message and decode it (EOFError once the child is gone)."""
    return decode_batch(conn.recv_bytes())
