"""A run rebuilt from its events: `fold(events)` and the live aggregate are the same code.

The live server applies each accepted event to a `Run` exactly as `fold` does when it
replays the log, so replayed state equals lived state by construction; the property
tests check it anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from backend import events as ev
from backend.events import Event
from backend.fsm.lifecycle import Replayable
from backend.fsm.machine import (
    IllegalCommand,
    IllegalEvent,
    Lifecycle,
    State,
    fact_states,
    legal_commands,
    refusal,
)

# Facts are most of a log (per-iteration metrics), so they skip the machine's trigger
# machinery and use the legal states the machine itself declares for them.
_FACT_STATES: dict[str, frozenset[State]] = {t: fact_states(t) for t in ev.FACT_TYPES}


@dataclass
class Run(Replayable):
    """One run's lifecycle as of the last event applied."""

    run_id: str
    lifecycle: Lifecycle | None = None
    version: int = 0
    last_seq: int = 0
    # Events a replay could not apply (unknown type, impossible order): reported, not fatal.
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> State | None:
        return self.lifecycle.state if self.lifecycle else None

    @property
    def stopping(self) -> bool:
        return bool(self.lifecycle and self.lifecycle.stopping)

    @property
    def queued(self) -> bool:
        return bool(self.lifecycle and self.lifecycle.in_queue)

    @property
    def deleted(self) -> bool:
        return bool(self.lifecycle and self.lifecycle.tombstone)

    def legal_commands(self) -> list[str]:
        return legal_commands(self.state, self.stopping, self.queued, self.deleted)

    def check(self, command: str) -> str:
        """The event type `command` would append; IllegalCommand if the state forbids it."""
        event_type = ev.COMMAND_EVENTS.get(command)
        if event_type is None:
            raise IllegalCommand(
                self.run_id,
                command,
                self.state or State.IDLE,
                self.legal_commands(),
                why=f"unknown command '{command}'",
            )
        allowed = (
            self.lifecycle is None
            if event_type == ev.CREATED
            else self.lifecycle is not None and self.lifecycle.allows(event_type)
        )
        if not allowed:
            why = ""
            if self.deleted:
                why = "the run is deleted"
            elif self.lifecycle is not None and event_type in self.lifecycle.trigger_names():
                why = refusal(event_type)
            elif event_type == ev.CREATED:
                why = f"run '{self.run_id}' already exists"
            raise IllegalCommand(
                self.run_id, command, self.state or State.IDLE, self.legal_commands(), why
            )
        return event_type

    def allows(self, event_type: str) -> bool:
        if event_type == ev.CREATED:
            return self.lifecycle is None
        if self.lifecycle is None:
            return False
        states = _FACT_STATES.get(event_type)
        if states is not None:
            return self.lifecycle.state in states and not self.lifecycle.tombstone
        return self.lifecycle.allows(event_type)

    def apply(self, event: Event) -> None:
        """Apply one stored event; IllegalEvent if it cannot follow the current state."""
        if event.version != self.version + 1:
            raise IllegalEvent(f"run {self.run_id}: version {event.version} after {self.version}")
        states = _FACT_STATES.get(event.type)
        if states is not None:
            if self.lifecycle is None or self.lifecycle.state not in states:
                raise IllegalEvent(f"'{event.type}' cannot happen while {self.state}")
            if self.lifecycle.tombstone:  # the machine's guard, on the fast path
                raise IllegalEvent(f"'{event.type}' is not allowed now: the run is deleted")
        elif event.type == ev.CREATED:
            if self.lifecycle is not None:
                raise IllegalEvent(f"run {self.run_id} created twice")
            self.lifecycle = Lifecycle()
        elif event.type in ev.ALL_TYPES:
            if self.lifecycle is None:
                raise IllegalEvent(f"'{event.type}' before the run was created")
            self.lifecycle.fire(event.type)
        else:
            raise IllegalEvent(f"unknown event type '{event.type}'")
        self.version = event.version
        self.last_seq = event.seq


def fold(events: Iterable[Event], run_id: str | None = None) -> Run:
    """Rebuild a run from its events (in version order)."""
    run: Run | None = Run(run_id) if run_id is not None else None
    for event in events:
        if run is None:
            run = Run(event.run_id)
        run.replay(event)
    if run is None:
        raise ValueError("fold needs a run_id when there are no events")
    return run


def admissible(run: Run, event_types: Sequence[str]) -> list[bool]:
    """Which of these events, appended in order, the machine would accept.

    Facts are checked against the machine's declared states; a lifecycle event is fired
    on a scratch copy of the machine so that later events see the state it leads to.
    """
    state, deleted = run.state, run.deleted
    scratch: Lifecycle | None = None
    verdicts = []
    for event_type in event_types:
        states = _FACT_STATES.get(event_type)
        if states is not None:
            verdicts.append(state in states and not deleted)
            continue
        if state is None or event_type not in ev.ALL_TYPES or event_type == ev.CREATED:
            verdicts.append(False)
            continue
        if scratch is None:
            scratch = Lifecycle(initial=state)
            scratch.stopping = run.stopping
            scratch.in_queue = run.queued
            scratch.tombstone = run.deleted
        try:
            scratch.fire(event_type)
        except IllegalEvent:
            verdicts.append(False)
            continue
        state, deleted = scratch.state, scratch.tombstone
        verdicts.append(True)
    return verdicts
