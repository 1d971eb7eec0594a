from __future__ import annotations

import pytest

from backend import events as ev
from backend.events import Event
from backend.fsm import IllegalCommand, Run, State, fold
from backend.fsm.fold import admissible


def make(types: list[str], run_id: str = "r") -> list[Event]:
    return [Event(i, run_id, i, t, float(i), {}) for i, t in enumerate(types, start=1)]


def test_fold_rebuilds_state() -> None:
    run = fold(make([ev.CREATED, ev.STARTED, ev.METRIC, ev.STOP_REQUESTED]))
    assert run.state is State.TRAINING and run.stopping
    assert run.version == 4 and run.last_seq == 4
    assert run.problems == []


def test_fold_reports_unknown_and_impossible_events_without_crashing() -> None:
    run = fold(make([ev.CREATED, "teleported", ev.STARTED, ev.RESUMED, ev.COMPLETED]))
    assert run.state is State.COMPLETE
    assert len(run.problems) == 2
    assert "unknown event type 'teleported'" in run.problems[0]
    assert "resumed" in run.problems[1]
    assert run.version == 5


def test_fold_of_nothing_needs_an_id() -> None:
    assert fold([], run_id="x").state is None
    with pytest.raises(ValueError):
        fold([])


def test_check_names_state_and_legal_commands() -> None:
    run = fold(make([ev.CREATED]))
    assert run.check("start") == ev.STARTED
    with pytest.raises(IllegalCommand) as info:
        run.check("resume")
    assert info.value.state is State.IDLE and info.value.legal == ["start"]
    assert "Idle" in str(info.value) and "start" in str(info.value)
    with pytest.raises(IllegalCommand, match="already exists"):
        run.check("create")
    with pytest.raises(IllegalCommand, match="unknown command"):
        run.check("explode")
    assert Run("new").check("create") == ev.CREATED


def test_admissible_follows_the_batch() -> None:
    run = fold(make([ev.CREATED, ev.STARTED]))
    verdicts = admissible(run, [ev.METRIC, ev.COMPLETED, ev.METRIC, ev.FAILED, "bogus"])
    assert verdicts == [True, True, False, False, False]
    assert run.state is State.TRAINING  # admissible does not change the run
    idle = fold(make([ev.CREATED]))
    assert admissible(idle, [ev.METRIC, ev.STARTED]) == [False, True]
