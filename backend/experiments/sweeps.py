"""A sweep as events: its own stream, its own lifecycle machine, its fold and its summary.

A sweep's stream id is `sweep-<12 hex>`, in the same events table as the runs (and so in
the same seq order); `RunService` leaves these streams alone. The lifecycle is a
`transitions` Machine on the same base as the run's (`backend.fsm.lifecycle`): each
trigger is the event type that records it, so applying an event and firing the trigger
are one act.

States: Running -> Stopped -> Running ... -> Complete. `trial_asked` is legal while
Running and not stopping (a stop under way asks nothing more); `trial_told` while
Running or Stopped (a trial may end while its sweep stops). The fold also checks what
the machine cannot see: trials are asked in number order, within the budget, and each
is told once. The summary (`SweepSummary`) is rebuilt by the same `apply` live and on
replay, and goes through snapshots as plain JSON (`to_state` / `from_state`).

Torch-free and Optuna-free: the server folds sweeps without either.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from backend.events import Event
from backend.fsm.lifecycle import EventLifecycle, IllegalEvent, Replayable

PREFIX = "sweep-"

SWEEP_CREATED = "sweep_created"
TRIAL_ASKED = "trial_asked"
TRIAL_TOLD = "trial_told"
SWEEP_STOP_REQUESTED = "sweep_stop_requested"
SWEEP_STOPPED = "sweep_stopped"
SWEEP_RESUMED = "sweep_resumed"
SWEEP_COMPLETED = "sweep_completed"
TYPES = (
    SWEEP_CREATED,
    TRIAL_ASKED,
    TRIAL_TOLD,
    SWEEP_STOP_REQUESTED,
    SWEEP_STOPPED,
    SWEEP_RESUMED,
    SWEEP_COMPLETED,
)
# The commands a client may send, and the event each becomes once accepted.
COMMAND_EVENTS = {"create": SWEEP_CREATED, "stop": SWEEP_STOP_REQUESTED, "resume": SWEEP_RESUMED}
_COMMAND_OF = {event_type: command for command, event_type in COMMAND_EVENTS.items()}
TOLD_STATES = ("complete", "pruned", "fail")


class SweepState(StrEnum):
    RUNNING = "Running"
    STOPPED = "Stopped"
    COMPLETE = "Complete"


STATES: list[SweepState | dict[str, Any]] = [
    {"name": SweepState.RUNNING, "on_exit": ["clear_stopping"]},
    SweepState.STOPPED,
    SweepState.COMPLETE,
]
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": TRIAL_ASKED, "source": SweepState.RUNNING, "dest": None, "unless": "is_stopping"},
    {"trigger": TRIAL_TOLD, "source": [SweepState.RUNNING, SweepState.STOPPED], "dest": None},
    {
        "trigger": SWEEP_STOP_REQUESTED,
        "source": SweepState.RUNNING,
        "dest": None,
        "unless": "is_stopping",
        "after": "mark_stopping",
    },
    {"trigger": SWEEP_STOPPED, "source": SweepState.RUNNING, "dest": SweepState.STOPPED},
    {"trigger": SWEEP_RESUMED, "source": SweepState.STOPPED, "dest": SweepState.RUNNING},
    {"trigger": SWEEP_COMPLETED, "source": SweepState.RUNNING, "dest": SweepState.COMPLETE},
]


def is_sweep(stream_id: str) -> bool:
    """Whether a stream id names a sweep (else it is a run)."""
    return stream_id.startswith(PREFIX)


def new_sweep_id() -> str:
    return PREFIX + uuid.uuid4().hex[:12]


def sweep_id_for(command_id: str) -> str:
    """The sweep a create command with this id makes (a repeat names the same sweep)."""
    return PREFIX + hashlib.blake2b(f"sweep:{command_id}".encode(), digest_size=6).hexdigest()


def trial_command_id(sweep_id: str, number: int) -> str:
    """The id of the create command that makes trial `number`'s run: the run id follows
    from it (`commands.run_id_for`), so re-creating after a crash is the same run."""
    return f"{sweep_id}:trial:{number}"


class SweepLifecycle(EventLifecycle):
    """The machine's model: one sweep's state and its stopping flag."""

    STATES = STATES
    TRANSITIONS = TRANSITIONS
    REFUSALS = {
        TRIAL_ASKED: "a stop is already under way",
        SWEEP_STOP_REQUESTED: "a stop is already under way",
    }

    state: SweepState

    def __init__(self, initial: SweepState = SweepState.RUNNING) -> None:
        super().__init__(initial)

    def where(self) -> str:
        return f"the sweep is {self.state}"


def legal_commands(state: SweepState | None, stopping: bool = False) -> list[str]:
    """Commands a client may send to a sweep now, in a stable order."""
    if state is None:
        return ["create"]
    return [
        command
        for command, event_type in COMMAND_EVENTS.items()
        if event_type != SWEEP_CREATED
        and SweepLifecycle.allowed(state, event_type, {"stopping": stopping})
    ]


class IllegalSweepCommand(Exception):
    """A command the sweep's state does not allow. Nothing was written."""

    def __init__(self, sweep_id: str, command: str, state: SweepState | None, legal: list[str]):
        self.sweep_id = sweep_id
        self.command = command
        self.state = state
        self.legal = legal
        allowed = ", ".join(legal) if legal else "none"
        super().__init__(
            f"'{command}' is not allowed while the sweep is {state or 'absent'}"
            f"{' (stopping)' if command == 'stop' and 'resume' not in legal else ''}; "
            f"allowed now: {allowed}"
        )


@dataclass
class Trial:
    """One trial as the sweep's events record it."""

    number: int
    run_id: str
    params: dict[str, Any]
    system_attrs: dict[str, Any] = field(default_factory=dict)  # Optuna's (grid ids)
    state: str = "asked"  # asked | complete | pruned | fail
    value: float | None = None
    intermediate: list[list[float]] = field(default_factory=list)  # [step, value] pairs
    reason: str | None = None
    asked_at: float | None = None
    told_at: float | None = None

    @property
    def told(self) -> bool:
        return self.state != "asked"

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "run_id": self.run_id,
            "params": dict(self.params),
            "state": self.state,
            "value": self.value,
            "pruned": self.state == "pruned",
            "reason": self.reason,
            "intermediate": [list(p) for p in self.intermediate],
            "asked_at": self.asked_at,
            "told_at": self.told_at,
        }


@dataclass
class SweepSummary(Replayable):
    """A sweep as of its last event: its spec, its trials and its lifecycle."""

    sweep_id: str
    lifecycle: SweepLifecycle | None = None
    version: int = 0
    last_seq: int = 0
    spec: dict[str, Any] = field(default_factory=dict)  # the sweep_created data
    trials: list[Trial] = field(default_factory=list)  # by number
    commands: dict[str, list[Any]] = field(default_factory=dict)  # id -> [command, version]
    created_at: float | None = None
    ended_at: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> SweepState | None:
        return None if self.lifecycle is None else self.lifecycle.state

    @property
    def stopping(self) -> bool:
        return bool(self.lifecycle and self.lifecycle.stopping)

    @property
    def budget(self) -> int:
        return int(self.spec.get("trials", 0))

    @property
    def maximize(self) -> bool:
        return self.spec.get("objective") == "max_dice"

    def in_flight(self) -> list[Trial]:
        return [t for t in self.trials if not t.told]

    def best(self) -> Trial | None:
        """The best complete trial by the objective (the first, on a tie)."""
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        if not done:
            return None
        sign = -1.0 if self.maximize else 1.0
        return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number))

    def legal_commands(self) -> list[str]:
        return legal_commands(self.state, self.stopping)

    def check(self, command: str) -> str:
        """The event `command` would append; IllegalSweepCommand if not allowed now."""
        event_type = COMMAND_EVENTS.get(command)
        if event_type is None or self.lifecycle is None or not self.lifecycle.allows(event_type):
            raise IllegalSweepCommand(self.sweep_id, command, self.state, self.legal_commands())
        return event_type

    def allows(self, event_type: str, data: dict[str, Any]) -> bool:
        """Whether an event could be appended now (machine and trial bookkeeping)."""
        try:
            self._check(event_type, data)
        except IllegalEvent:
            return False
        return True

    # --- folding ---------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Apply one stored event; IllegalEvent if it cannot follow (nothing changes then)."""
        if event.version != self.version + 1:
            raise IllegalEvent(f"{self.sweep_id}: version {event.version} after {self.version}")
        data = dict(event.data)
        self._check(event.type, data)
        if event.type == SWEEP_CREATED:
            self.lifecycle = SweepLifecycle()
            self.spec = data
            self.created_at = event.ts
        else:
            assert self.lifecycle is not None
            self.lifecycle.fire(event.type)
        self._update(event.type, data, event.ts)
        command_id = data.get("command_id")
        if event.type in _COMMAND_OF and isinstance(command_id, str):
            self.commands.setdefault(command_id, [_COMMAND_OF[event.type], event.version])
        self.version = event.version
        self.last_seq = event.seq

    def _check(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type not in TYPES:
            raise IllegalEvent(f"unknown sweep event type '{event_type}'")
        if event_type == SWEEP_CREATED:
            if self.lifecycle is not None:
                raise IllegalEvent(f"sweep {self.sweep_id} created twice")
            return
        if self.lifecycle is None:
            raise IllegalEvent(f"'{event_type}' before the sweep was created")
        if not self.lifecycle.allows(event_type):
            raise IllegalEvent(f"'{event_type}' cannot happen while the sweep is {self.state}")
        if event_type == TRIAL_ASKED:
            if data.get("number") != len(self.trials) or len(self.trials) >= self.budget:
                raise IllegalEvent(
                    f"trial {data.get('number')} asked with {len(self.trials)} of "
                    f"{self.budget} asked"
                )
        elif event_type == TRIAL_TOLD:
            number = data.get("number")
            if not isinstance(number, int) or not 0 <= number < len(self.trials):
                raise IllegalEvent(f"trial {number} told but never asked")
            if self.trials[number].told or data.get("state") not in TOLD_STATES:
                raise IllegalEvent(f"trial {number} told twice, or with an unknown state")
        elif event_type == SWEEP_COMPLETED and (len(self.trials) < self.budget or self.in_flight()):
            raise IllegalEvent("sweep completed before every trial of its budget was told")

    def _update(self, kind: str, data: dict[str, Any], ts: float) -> None:
        if kind == TRIAL_ASKED:
            self.trials.append(
                Trial(
                    number=int(data["number"]),
                    run_id=str(data["run_id"]),
                    params=dict(data.get("params") or {}),
                    system_attrs=dict(data.get("system_attrs") or {}),
                    asked_at=ts,
                )
            )
        elif kind == TRIAL_TOLD:
            trial = self.trials[int(data["number"])]
            trial.state = str(data["state"])
            value = data.get("value")
            trial.value = float(value) if isinstance(value, int | float) else None
            trial.intermediate = [list(p) for p in data.get("intermediate") or []]
            trial.reason = data.get("reason")
            trial.told_at = ts
        elif kind in (SWEEP_STOPPED, SWEEP_COMPLETED):
            self.ended_at = ts
        elif kind == SWEEP_RESUMED:
            self.ended_at = None

    # --- views -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        told = [t.state for t in self.trials]
        return {
            "asked": len(self.trials),
            "done": sum(1 for s in told if s != "asked"),
            "running": told.count("asked"),
            "complete": told.count("complete"),
            "pruned": told.count("pruned"),
            "failed": told.count("fail"),
        }

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        best = self.best()
        return {
            "sweep_id": self.sweep_id,
            "name": spec.get("name", ""),
            "state": self.state,
            "stopping": self.stopping,
            "legal_commands": self.legal_commands(),
            "version": self.version,
            "last_seq": self.last_seq,
            "budget": self.budget,
            "parallel": spec.get("parallel"),
            "objective": spec.get("objective"),
            "direction": "maximize" if self.maximize else "minimize",
            "sampler": spec.get("sampler"),
            "pruner": spec.get("pruner"),
            "seed": spec.get("seed"),
            "space": spec.get("space"),
            "output_root": spec.get("output_root"),
            **self.counts(),
            "best_value": None if best is None else best.value,
            "best_trial": None if best is None else best.number,
            "best_run_id": None if best is None else best.run_id,
            "best_params": None if best is None else dict(best.params),
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "problems": list(self.problems),
        }

    def trial_table(self) -> list[dict[str, Any]]:
        """Every trial with the best value so far (by number), as the trial table shows."""
        rows, best = [], None
        for trial in self.trials:
            if trial.state == "complete" and trial.value is not None:
                better = best is None or (
                    trial.value > best if self.maximize else trial.value < best
                )
                best = trial.value if better else best
            rows.append({**trial.to_json(), "best_so_far": best})
        return rows

    # --- snapshots -------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id,
            "state": None if self.state is None else str(self.state),
            "stopping": self.stopping,
            "version": self.version,
            "last_seq": self.last_seq,
            "spec": self.spec,
            "trials": [{**t.to_json(), "system_attrs": t.system_attrs} for t in self.trials],
            "commands": self.commands,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "problems": list(self.problems),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SweepSummary:
        """The summary `to_state` recorded; KeyError/TypeError/ValueError if it is not one."""
        summary = cls(
            str(state["sweep_id"]),
            version=int(state["version"]),
            last_seq=int(state["last_seq"]),
            spec=dict(state["spec"]),
            commands={str(k): [str(c), int(v)] for k, (c, v) in state["commands"].items()},
            created_at=state["created_at"],
            ended_at=state["ended_at"],
            problems=[str(p) for p in state["problems"]],
        )
        if state["state"] is not None:
            summary.lifecycle = SweepLifecycle(SweepState(state["state"]))
            summary.lifecycle.stopping = bool(state["stopping"])
        for t in state["trials"]:
            summary.trials.append(
                Trial(
                    number=int(t["number"]),
                    run_id=str(t["run_id"]),
                    params=dict(t["params"]),
                    system_attrs=dict(t["system_attrs"]),
                    state=str(t["state"]),
                    value=t["value"],
                    intermediate=[list(p) for p in t["intermediate"]],
                    reason=t["reason"],
                    asked_at=t["asked_at"],
                    told_at=t["told_at"],
                )
            )
        return summary


def fold(events: list[Event], sweep_id: str) -> SweepSummary:
    """A sweep rebuilt from its events (in version order)."""
    summary = SweepSummary(sweep_id)
    for event in events:
        summary.replay(event)
    return summary
