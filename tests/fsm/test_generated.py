"""Generated event sequences against a reference written independently of the machine:
the lifecycle, the stopping flag and the queue flag accept exactly what the rules say,
and `allows`, `fire`, `admissible` and `legal_commands` agree with each other."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from backend import events as ev
from backend.events import Event
from backend.fsm import fold
from backend.fsm.fold import admissible
from backend.fsm.machine import IllegalEvent, Lifecycle, State, legal_commands

ALPHABET = [
    ev.STARTED,
    ev.QUEUED,
    ev.QUEUE_MOVED,
    ev.DEQUEUED,
    ev.STOP_REQUESTED,
    ev.STOP_ESCALATED,
    ev.METRIC,
    ev.JOB_STATE,
    ev.LOG,
    ev.COMPLETED,
    ev.FAILED,
    ev.STOPPED,
    ev.RESUMED,
]
MY_COMMANDS = {"start": ev.STARTED, "stop": ev.STOP_REQUESTED, "resume": ev.RESUMED}
MY_COMMANDS |= {"dequeue": ev.DEQUEUED, "move": ev.QUEUE_MOVED}


@dataclass(frozen=True)
class Ref:
    """The rules, written out by hand."""

    state: State = State.IDLE
    stopping: bool = False
    queued: bool = False

    def after(self, kind: str) -> Ref | None:
        """The next state, or None if `kind` is illegal now."""
        s = self.state
        idle, training = s is State.IDLE, s is State.TRAINING
        if kind == ev.STARTED:
            return Ref(State.TRAINING) if idle else None
        if kind == ev.QUEUED:
            return replace(self, queued=True) if idle and not self.queued else None
        if kind == ev.QUEUE_MOVED:
            return self if idle and self.queued else None
        if kind == ev.DEQUEUED:
            return replace(self, queued=False) if idle and self.queued else None
        if kind == ev.STOP_REQUESTED:
            return replace(self, stopping=True) if training and not self.stopping else None
        if kind in (ev.STOP_ESCALATED, ev.METRIC, ev.JOB_STATE):
            return self if training else None
        if kind == ev.LOG:
            return self if s in (State.TRAINING, State.STOPPED, State.ERROR) else None
        ends = {ev.COMPLETED: State.COMPLETE, ev.FAILED: State.ERROR, ev.STOPPED: State.STOPPED}
        if kind in ends:
            return Ref(ends[kind]) if training else None
        if kind == ev.RESUMED:
            return Ref(State.TRAINING) if s in (State.STOPPED, State.ERROR) else None
        raise AssertionError(kind)


def events(kinds: list[str]) -> list[Event]:
    types = [ev.CREATED, *kinds]
    return [Event(i, "r", i, t, float(i), {}) for i, t in enumerate(types, 1)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=30))
def test_generated_sequences_follow_the_rules(kinds: list[str]) -> None:
    life, ref = Lifecycle(), Ref()
    accepted = []
    for kind in kinds:
        legal = [c for c, e in MY_COMMANDS.items() if ref.after(e) is not None]
        mine = legal_commands(life.state, life.stopping, life.in_queue)
        assert [c for c in mine if c in MY_COMMANDS] == legal
        expected = ref.after(kind)
        assert life.allows(kind) is (expected is not None), (ref, kind)
        if expected is None:
            try:
                life.fire(kind)
            except IllegalEvent:
                pass
            else:
                raise AssertionError(f"{kind} fired in {ref}")
        else:
            life.fire(kind)
            ref = expected
            accepted.append(kind)
        assert (life.state, life.stopping, life.in_queue) == (ref.state, ref.stopping, ref.queued)
    # The fold of what was accepted is the lived run; admissible judges a batch the same.
    run = fold(events(accepted))
    assert run.problems == []
    assert (run.state, run.stopping, run.queued) == (ref.state, ref.stopping, ref.queued)
    start = fold(events([]))
    assert admissible(start, accepted) == [True] * len(accepted)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=20))
def test_admissible_matches_the_rules_for_any_batch(kinds: list[str]) -> None:
    ref: Ref | None = Ref()
    verdicts = []
    for kind in kinds:
        assert ref is not None
        nxt = ref.after(kind)
        verdicts.append(nxt is not None)
        ref = nxt or ref
    assert admissible(fold(events([])), kinds) == verdicts
