"""What the server hands a trainer child, and the child's entry point as the parent sees it.

This module is torch-free: the parent process imports it to spawn the child, and only
the child, inside `child_entry`, imports `backend.trainer` (and with it torch).

Wire format, child -> parent over a `multiprocessing.Connection`: each message is a
list of `(type, data, ts)` tuples (a batch of events; the child sends a few batches per
second at most). The child's last batch holds its final event (`completed`, `failed` or
`stopped`); then it closes its end. Parent -> child: the shared `stop` Event (a graceful
stop: checkpoint, report `stopped`, exit 0); SIGTERM does the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as StopFlag
from typing import Any

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


def child_entry(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    """Spawn target: runs in the child process only."""
    from backend.trainer.child import main

    main(job, conn, stop)
