"""A lifecycle as a `transitions` Machine whose triggers are event types: what a run's
(`backend.fsm.machine`) and a sweep's (`backend.experiments.sweeps`) machines share.

A subclass gives its tables (`STATES`, `TRANSITIONS`) and `FLAGS`, each guard's name
mapped to the attribute it reads. Applying an event and firing the trigger named by its
type are one act (`fire`). `allows` answers from the same tables without firing, for any
flags (`allowed`), so that what a client is told is legal is what the machine accepts.
`Replayable` is the lenient replay both folds share.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar

from transitions import Machine, MachineError

from backend.events import Event


class IllegalEvent(Exception):
    """An event that cannot follow the current state (a corrupt or foreign log)."""


class Replayable:
    """A fold's lenient `replay` over its strict `apply`, for an aggregate that keeps
    `version`, `last_seq` and `problems` (a run, a sweep)."""

    version: int
    last_seq: int
    problems: list[str]

    def apply(self, event: Event) -> None:
        raise NotImplementedError

    def replay(self, event: Event) -> None:
        """Apply leniently: an event that cannot apply is recorded as a problem and skipped."""
        try:
            self.apply(event)
        except IllegalEvent as exc:
            self.problems.append(f"seq {event.seq}: {exc}")
            self.version = max(self.version, event.version)
            self.last_seq = event.seq


class EventLifecycle:
    """The machine's model: a state and flags (a stop under way is every lifecycle's)."""

    STATES: ClassVar[list[Any]]
    TRANSITIONS: ClassVar[list[dict[str, Any]]]
    FLAGS: ClassVar[Mapping[str, str]] = {"is_stopping": "stopping"}  # guard -> attribute
    REFUSALS: ClassVar[Mapping[str, str]] = {}  # why a guard refuses, per trigger

    state: StrEnum

    def __init__(self, initial: StrEnum) -> None:
        self.stopping = False
        Machine(
            model=self,
            states=self.STATES,
            transitions=self.TRANSITIONS,
            initial=initial,
            auto_transitions=False,
        )

    def is_stopping(self) -> bool:
        return self.stopping

    def mark_stopping(self) -> None:
        self.stopping = True

    def clear_stopping(self) -> None:
        self.stopping = False

    def where(self) -> str:
        """The state in words, for messages ("Training", "the sweep is Running")."""
        return str(self.state)

    @classmethod
    def guard_refusal(cls, event_type: str) -> str:
        """Why a guard of the table refuses a trigger, in words."""
        return cls.REFUSALS.get(event_type, "a guard refused it")

    def refusal(self, event_type: str) -> str:
        """Why a guard refused a trigger now (a subclass may know more, from its flags)."""
        return self.guard_refusal(event_type)

    def fire(self, event_type: str) -> None:
        """Fire the trigger named by an event type; IllegalEvent if it cannot happen."""
        try:
            fired = bool(self.trigger(event_type))  # type: ignore[attr-defined]
        except (MachineError, AttributeError) as exc:
            raise IllegalEvent(f"'{event_type}' cannot happen while {self.where()}") from exc
        if not fired:
            raise IllegalEvent(f"'{event_type}' is not allowed now: {self.refusal(event_type)}")

    def flags(self) -> dict[str, bool]:
        return {attr: bool(getattr(self, attr)) for attr in self.FLAGS.values()}

    def allows(self, event_type: str) -> bool:
        return self.allowed(self.state, event_type, self.flags())

    def trigger_names(self) -> frozenset[str]:
        """Event types the current state accepts, guards aside."""
        return self.triggers_from(self.state)

    @classmethod
    def allowed(cls, state: StrEnum, event_type: str, flags: Mapping[str, bool]) -> bool:
        """Whether the machine accepts `event_type` in `state` with these flags (an
        attribute absent from `flags` is False)."""
        if event_type not in cls.triggers_from(state):
            return False
        guards = _guards(cls).get(event_type, ())
        return all(bool(flags.get(attr, False)) is wanted for attr, wanted in guards)

    @classmethod
    def triggers_from(cls, state: StrEnum) -> frozenset[str]:
        """Event types the machine accepts in `state`, read from the machine itself."""
        return _triggers(cls, state)


# Read from the tables once per class (and state): they are fixed at import.
_TRIGGERS: dict[tuple[type[EventLifecycle], StrEnum], frozenset[str]] = {}
_GUARDS: dict[type[EventLifecycle], dict[str, list[tuple[str, bool]]]] = {}


def _triggers(cls: type[EventLifecycle], state: StrEnum) -> frozenset[str]:
    found = _TRIGGERS.get((cls, state))
    if found is None:
        probe = cls.__new__(cls)
        machine = Machine(
            model=probe,
            states=cls.STATES,
            transitions=cls.TRANSITIONS,
            initial=state,
            auto_transitions=False,
        )
        found = _TRIGGERS[(cls, state)] = frozenset(machine.get_triggers(state))
    return found


def _guards(cls: type[EventLifecycle]) -> dict[str, list[tuple[str, bool]]]:
    """trigger -> (attribute, required value) for each guard the table gives it."""
    table = _GUARDS.get(cls)
    if table is None:
        table = _GUARDS[cls] = {}
        for t in cls.TRANSITIONS:
            guards = table.setdefault(t["trigger"], [])
            guards += [(cls.FLAGS[name], True) for name in _names(t.get("conditions"))]
            guards += [(cls.FLAGS[name], False) for name in _names(t.get("unless"))]
    return table


def _names(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)
