from __future__ import annotations

import pytest

from backend import events as ev
from backend.fsm.machine import (
    IllegalEvent,
    Lifecycle,
    State,
    legal_commands,
    to_mermaid,
)


def current(life: Lifecycle) -> State:
    """The state now (a call, so that mypy does not narrow it across `fire`)."""
    return life.state


def test_happy_path_and_final_states() -> None:
    life = Lifecycle()
    assert life.state is State.IDLE
    life.fire(ev.STARTED)
    life.fire(ev.METRIC)
    assert current(life) is State.TRAINING
    life.fire(ev.COMPLETED)
    assert current(life) is State.COMPLETE
    assert legal_commands(life.state) == []
    with pytest.raises(IllegalEvent):
        life.fire(ev.RESUMED)


@pytest.mark.parametrize("final", [ev.STOPPED, ev.FAILED])
def test_stopped_and_error_resume(final: str) -> None:
    life = Lifecycle()
    life.fire(ev.STARTED)
    life.fire(final)
    assert legal_commands(life.state) == ["resume"]
    life.fire(ev.RESUMED)
    assert life.state is State.TRAINING


def test_stop_request_keeps_training_until_confirmed() -> None:
    life = Lifecycle()
    life.fire(ev.STARTED)
    life.fire(ev.STOP_REQUESTED)
    assert life.state is State.TRAINING and life.stopping
    assert legal_commands(life.state, life.stopping) == []
    with pytest.raises(IllegalEvent, match="already under way"):
        life.fire(ev.STOP_REQUESTED)
    life.fire(ev.STOP_ESCALATED)
    life.fire(ev.STOPPED)
    assert current(life) is State.STOPPED and not life.stopping
    life.fire(ev.RESUMED)
    assert not life.stopping
    assert legal_commands(life.state, life.stopping) == ["stop"]


@pytest.mark.parametrize("fact", ev.FACT_TYPES)
@pytest.mark.parametrize("state", [State.IDLE, State.COMPLETE, State.ERROR, State.STOPPED])
def test_facts_only_while_training(fact: str, state: State) -> None:
    life = Lifecycle(initial=state)
    if fact == ev.LOG and state in (State.STOPPED, State.ERROR):
        life.fire(fact)  # a run waiting to be resumed may be told why it was not
        assert life.state is state
        return
    with pytest.raises(IllegalEvent):
        life.fire(fact)


def test_no_auto_transitions_and_unknown_triggers() -> None:
    life = Lifecycle()
    assert not hasattr(life, "to_Complete")
    with pytest.raises(IllegalEvent, match="cannot happen"):
        life.fire("teleport")
    with pytest.raises(IllegalEvent):
        life.fire(ev.COMPLETED)


def test_legal_commands_per_state() -> None:
    assert legal_commands(None) == ["create"]
    assert legal_commands(State.IDLE) == ["start"]
    assert legal_commands(State.TRAINING) == ["stop"]
    assert legal_commands(State.TRAINING, stopping=True) == []
    assert legal_commands(State.COMPLETE) == []


def test_mermaid_marks_current_state() -> None:
    diagram = to_mermaid(State.STOPPED)
    assert diagram.startswith("stateDiagram-v2")
    assert "Idle --> Training: started" in diagram
    assert "Stopped --> Training: resumed" in diagram
    assert "Error --> Training: resumed" in diagram
    assert diagram.rstrip().endswith("class Stopped current")
    assert "class " not in to_mermaid()


def test_the_queue_is_a_flag_of_idle() -> None:
    life = Lifecycle()
    assert legal_commands(life.state) == ["start"]
    life.fire(ev.QUEUED)
    assert life.state is State.IDLE and life.in_queue
    assert legal_commands(life.state, queued=True) == ["start", "dequeue", "move"]
    with pytest.raises(IllegalEvent, match="already queued"):
        life.fire(ev.QUEUED)
    life.fire(ev.QUEUE_MOVED)
    life.fire(ev.DEQUEUED)
    assert not life.in_queue
    with pytest.raises(IllegalEvent, match="not queued"):
        life.fire(ev.QUEUE_MOVED)
    life.fire(ev.QUEUED)
    life.fire(ev.STARTED)  # leaving Idle ends it
    assert life.state is State.TRAINING and not life.in_queue
    assert "Idle --> Idle: queued / queue_moved / dequeued (queued)" in to_mermaid()
