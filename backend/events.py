"""The event vocabulary shared by the store, the state machine, the trainer and the server.

An event is a fact about one run. Commands (create, start, stop, resume) become events
when the state machine accepts them; the trainer and the supervisor report the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Appended when a command is accepted.
CREATED = "created"
STARTED = "started"
STOP_REQUESTED = "stop_requested"
RESUMED = "resumed"
# The queue (a flag of Idle): `start` on a busy server appends `queued`.
QUEUED = "queued"
QUEUE_MOVED = "queue_moved"
DEQUEUED = "dequeued"

# Reported by the supervisor (escalation, a child that died) or by the trainer child.
STOP_ESCALATED = "stop_escalated"
TRAINER_READY = "trainer_ready"
METRIC = "metric"
PROGRESS = "progress"
VALIDATION = "validation"
CHECKPOINT = "checkpoint"
LOG = "log"
COMPLETED = "completed"
FAILED = "failed"
STOPPED = "stopped"
# The executor's view of an attempt (a Slurm job's state, say): a fact.
JOB_STATE = "job_state"

# Experiment management: legal in every state (nothing after `deleted`, no delete while
# Training), never change the state.
RENAMED = "renamed"
TAGS_SET = "tags_set"
NOTES_SET = "notes_set"
ARCHIVED = "archived"
UNARCHIVED = "unarchived"
DELETED = "deleted"
MANAGE_TYPES: tuple[str, ...] = (RENAMED, TAGS_SET, NOTES_SET, ARCHIVED, UNARCHIVED, DELETED)

# Facts that never change the lifecycle state; legal only while a run trains.
FACT_TYPES: tuple[str, ...] = (
    TRAINER_READY,
    METRIC,
    PROGRESS,
    VALIDATION,
    CHECKPOINT,
    LOG,
    JOB_STATE,
)
# Everything a trainer child may emit.
TRAINER_TYPES: tuple[str, ...] = (*FACT_TYPES, COMPLETED, FAILED, STOPPED)
ALL_TYPES: tuple[str, ...] = (
    CREATED,
    STARTED,
    STOP_REQUESTED,
    RESUMED,
    QUEUED,
    QUEUE_MOVED,
    DEQUEUED,
    STOP_ESCALATED,
    *TRAINER_TYPES,
    *MANAGE_TYPES,
)

# Management commands (not listed in a run's `legal_commands`: they are always legal but
# for a delete while Training, and nothing is after a delete).
MANAGE_COMMANDS: dict[str, str] = {
    "rename": RENAMED,
    "tag": TAGS_SET,
    "notes": NOTES_SET,
    "archive": ARCHIVED,
    "unarchive": UNARCHIVED,
    "delete": DELETED,
}
# The commands a client may send, and the event each becomes once accepted.
COMMAND_EVENTS: dict[str, str] = {
    "create": CREATED,
    "start": STARTED,
    "stop": STOP_REQUESTED,
    "resume": RESUMED,
    "dequeue": DEQUEUED,
    "move": QUEUE_MOVED,
    **MANAGE_COMMANDS,
}
# Events a command may append instead of its own (a start that finds no free slot).
COMMAND_ALIASES: dict[str, str] = {QUEUED: "start"}


# Events are values: never assign to one. Not `frozen=True`: a frozen dataclass's
# `__init__` costs about 1 us per event (object.__setattr__ per field), on the path
# that ingests tens of thousands of events a second (docs/performance.md).
@dataclass(slots=True)
class NewEvent:
    """An event not yet stored: the store assigns its seq, version and timestamp."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    ts: float | None = None


@dataclass(slots=True)
class Event:
    """A stored event. `seq` is global and gapless; `version` is gapless per run from 1."""

    seq: int
    run_id: str
    version: int
    type: str
    ts: float
    data: Mapping[str, Any]
    # `data` as the store wrote it (strict JSON text), on events fresh from an append:
    # the hub sends it as is instead of encoding the data a second time.
    data_json: str | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "run_id": self.run_id,
            "version": self.version,
            "type": self.type,
            "ts": self.ts,
            "data": dict(self.data),
        }
