"""The run lifecycle as a `transitions` Machine: the single authority on what is legal.

States: Idle -> Training -> Complete | Error | Stopped; Stopped and Error resume to Training.
Each transition's trigger is the event type that records it, so applying an event and
firing the trigger are the same act. Facts (metrics, logs, ...) are internal transitions
of Training: legal there, and nowhere else. A stop request is internal too: the run stays
Training, marked "stopping", until the trainer (or the escalation) reports `stopped`.
Management events (rename, tags, notes, archive) are internal transitions of every state;
`deleted` (not while Training, nor while queued) marks the run a tombstone: every
transition is guarded by that flag, so nothing is legal after it.
The queue is the same kind of flag of Idle: `queued` marks the run, `queue_moved` keeps
it, `dequeued` clears it, and leaving Idle (`started`) ends it. A flag's guards are the
transitions' `conditions` / `unless`, so `allows` and `legal_commands` read them from the
table like the machine does (`backend.fsm.lifecycle`, the base a sweep's machine shares).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from backend import events as ev
from backend.fsm.lifecycle import EventLifecycle, IllegalEvent

__all__ = ["IllegalCommand", "IllegalEvent", "Lifecycle", "State", "legal_commands"]


class State(StrEnum):
    IDLE = "Idle"
    TRAINING = "Training"
    COMPLETE = "Complete"
    ERROR = "Error"
    STOPPED = "Stopped"


# Leaving Training ends any stop under way, whichever way it ends.
STATES: list[State | dict[str, Any]] = [
    {"name": State.IDLE, "on_exit": ["clear_queued"]},
    {"name": State.TRAINING, "on_exit": ["clear_stopping"]},
    State.COMPLETE,
    State.ERROR,
    State.STOPPED,
]

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": ev.STARTED, "source": State.IDLE, "dest": State.TRAINING},
    {
        "trigger": ev.QUEUED,
        "source": State.IDLE,
        "dest": None,
        "unless": "is_queued",
        "after": "mark_queued",
    },
    {"trigger": ev.QUEUE_MOVED, "source": State.IDLE, "dest": None, "conditions": "is_queued"},
    {
        "trigger": ev.DEQUEUED,
        "source": State.IDLE,
        "dest": None,
        "conditions": "is_queued",
        "after": "clear_queued",
    },
    {
        "trigger": ev.STOP_REQUESTED,
        "source": State.TRAINING,
        "dest": None,
        "unless": "is_stopping",
        "after": "mark_stopping",
    },
    {"trigger": ev.STOP_ESCALATED, "source": State.TRAINING, "dest": None},
    {"trigger": ev.COMPLETED, "source": State.TRAINING, "dest": State.COMPLETE},
    {"trigger": ev.FAILED, "source": State.TRAINING, "dest": State.ERROR},
    {"trigger": ev.STOPPED, "source": State.TRAINING, "dest": State.STOPPED},
    {"trigger": ev.RESUMED, "source": [State.STOPPED, State.ERROR], "dest": State.TRAINING},
]
TRANSITIONS += [
    {"trigger": fact, "source": State.TRAINING, "dest": None}
    for fact in ev.FACT_TYPES
    if fact != ev.LOG
]
# A log line may also be about a run that waits to be resumed (an automatic resume that
# was refused at start says why there, where the browser shows it).
TRANSITIONS.append(
    {"trigger": ev.LOG, "source": [State.TRAINING, State.STOPPED, State.ERROR], "dest": None}
)
TRANSITIONS += [
    {"trigger": kind, "source": list(State), "dest": None}
    for kind in ev.MANAGE_TYPES
    if kind != ev.DELETED
]
TRANSITIONS.append(
    {
        "trigger": ev.DELETED,
        "source": [s for s in State if s is not State.TRAINING],
        "dest": None,
        "unless": "is_queued",
        "after": "mark_deleted",
    }
)


def _unless_deleted(transition: dict[str, Any]) -> dict[str, Any]:
    unless = transition.get("unless")
    names = [unless] if isinstance(unless, str) else list(unless or [])
    return {**transition, "unless": [*names, "is_deleted"]}


# A tombstone: no transition fires once the run is deleted (keep this after the table).
TRANSITIONS = [_unless_deleted(t) for t in TRANSITIONS]


class IllegalCommand(Exception):
    """A command the run's current state does not allow. Nothing was written."""

    def __init__(self, run_id: str, command: str, state: State, legal: list[str], why: str = ""):
        self.run_id = run_id
        self.command = command
        self.state = state
        self.legal = legal
        reason = why or f"'{command}' is not allowed while the run is {state}"
        allowed = ", ".join(legal) if legal else "none"
        super().__init__(f"{reason}; allowed now: {allowed}")


# Why a guard refuses, per trigger (IllegalCommand / IllegalEvent messages).
_REFUSALS = {
    ev.STOP_REQUESTED: "a stop is already under way",
    ev.QUEUED: "it is already queued",
    ev.QUEUE_MOVED: "it is not queued",
    ev.DEQUEUED: "it is not queued",
    ev.DELETED: "it is queued: cancel it from the queue first (dequeue)",
}


class Lifecycle(EventLifecycle):
    """The machine's model: holds the state and the flags (stopping, queued) of one run."""

    STATES = STATES
    TRANSITIONS = TRANSITIONS
    # guard -> the flag it reads (`queued` and `deleted` are trigger names)
    FLAGS = {"is_stopping": "stopping", "is_queued": "in_queue", "is_deleted": "tombstone"}
    REFUSALS = _REFUSALS

    state: State

    def __init__(self, initial: State = State.IDLE) -> None:
        self.in_queue = False
        self.tombstone = False
        super().__init__(initial)

    def is_queued(self) -> bool:
        return self.in_queue

    def mark_queued(self) -> None:
        self.in_queue = True

    def clear_queued(self) -> None:
        self.in_queue = False

    def is_deleted(self) -> bool:
        return self.tombstone

    def mark_deleted(self) -> None:
        self.tombstone = True

    def refusal(self, event_type: str) -> str:
        return "the run is deleted" if self.tombstone else super().refusal(event_type)


def refusal(event_type: str) -> str:
    """Why a guarded trigger was refused, in words."""
    return Lifecycle.guard_refusal(event_type)


def allowed(
    state: State,
    event_type: str,
    *,
    stopping: bool = False,
    queued: bool = False,
    deleted: bool = False,
) -> bool:
    """Whether the machine accepts `event_type` in `state` with these flags."""
    flags = {"stopping": stopping, "in_queue": queued, "tombstone": deleted}
    return Lifecycle.allowed(state, event_type, flags)


def fact_states(event_type: str) -> frozenset[State]:
    """The states in which a fact is legal (used by the fold's fast path)."""
    return frozenset(s for s in State if event_type in Lifecycle.triggers_from(s))


def legal_commands(
    state: State | None, stopping: bool = False, queued: bool = False, deleted: bool = False
) -> list[str]:
    """Lifecycle commands a client may send now, in a stable order (management commands
    are left out: always legal, but a delete while Training, and none after a delete)."""
    if state is None:
        return ["create"]
    return [
        command
        for command, event_type in ev.COMMAND_EVENTS.items()
        if command not in ev.MANAGE_COMMANDS
        and allowed(state, event_type, stopping=stopping, queued=queued, deleted=deleted)
    ]


def to_mermaid(current: State | None = None) -> str:
    """The lifecycle as a Mermaid state diagram, with the current state highlighted."""
    lines = ["stateDiagram-v2", "    [*] --> Idle: create"]
    for t in TRANSITIONS:
        dest = t["dest"]
        if dest is None or t["trigger"] in ev.FACT_TYPES:
            continue
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            lines.append(f"    {source} --> {dest}: {t['trigger']}")
    lines.append("    Training --> Training: stop_requested (stopping)")
    lines.append("    Idle --> Idle: queued / queue_moved / dequeued (queued)")
    for final in (State.COMPLETE,):
        lines.append(f"    {final} --> [*]")
    if current is not None:
        lines.append("    classDef current fill:#f59e0b,stroke:#b45309,color:#111,font-weight:bold")
        lines.append(f"    class {current} current")
    return "\n".join(lines)
