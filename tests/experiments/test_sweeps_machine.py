"""The sweep lifecycle machine and fold: generated event sequences, legality read from
the machine, a fold of the log equal to the live summary, snapshots round-tripping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.events import Event
from backend.experiments import sweeps as sw
from backend.experiments.sweeps import SweepState, SweepSummary
from backend.fsm.machine import IllegalEvent

SPEC = {"name": "s", "trials": 3, "parallel": 2, "objective": "max_dice", "space": {}}


def event(summary: SweepSummary, kind: str, data: dict[str, Any]) -> Event:
    v = summary.version + 1
    return Event(v, summary.sweep_id, v, kind, float(v), data)


def data_for(summary: SweepSummary, kind: str, pick: int) -> dict[str, Any]:
    """Plausible data for an event type (a tell of some asked trial, the next asked one)."""
    if kind == sw.SWEEP_CREATED:
        return dict(SPEC)
    if kind == sw.TRIAL_ASKED:
        n = len(summary.trials)
        return {"number": n, "params": {"X": n}, "run_id": f"r{n}"}
    if kind == sw.TRIAL_TOLD:
        numbers = [t.number for t in summary.trials] or [0]
        state = sw.TOLD_STATES[pick % 3]
        return {"number": numbers[pick % len(numbers)], "state": state, "value": pick / 10}
    return {"command_id": f"c{pick}"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sw.TYPES), st.integers(0, 5)), max_size=25))
def test_generated_sequences_follow_the_machine_and_fold_equals_live(
    steps: list[tuple[str, int]],
) -> None:
    live, log = SweepSummary("sweep-000000000001"), []
    for kind, pick in steps:
        data = data_for(live, kind, pick)
        allowed = live.allows(kind, data)
        before = live.to_state()
        e = event(live, kind, data)
        if allowed:
            live.apply(e)
            log.append(e)
        else:
            with pytest.raises(IllegalEvent):
                live.apply(e)
            assert live.to_state() == before  # a refused event changes nothing
        # invariants the events keep, whatever the order
        assert [t.number for t in live.trials] == list(range(len(live.trials)))
        assert len(live.trials) <= live.budget or live.lifecycle is None
        if live.state is SweepState.COMPLETE:
            assert len(live.trials) == live.budget and not live.in_flight()
    replayed = sw.fold(log, live.sweep_id)
    assert replayed.to_state() == live.to_state()
    assert SweepSummary.from_state(live.to_state()).to_state() == live.to_state()


def test_lifecycle_legal_commands() -> None:
    assert sw.legal_commands(None) == ["create"]
    assert sw.legal_commands(SweepState.RUNNING) == ["stop"]
    assert sw.legal_commands(SweepState.RUNNING, stopping=True) == []
    assert sw.legal_commands(SweepState.STOPPED) == ["resume"]
    assert sw.legal_commands(SweepState.COMPLETE) == []


def test_a_stop_under_way_asks_no_trial_and_a_told_trial_is_not_told_again() -> None:
    s = SweepSummary("sweep-000000000002")
    for kind, data in [
        (sw.SWEEP_CREATED, dict(SPEC)),
        (sw.TRIAL_ASKED, {"number": 0, "params": {}, "run_id": "r0"}),
        (sw.SWEEP_STOP_REQUESTED, {}),
    ]:
        s.apply(event(s, kind, data))
    assert s.stopping and not s.allows(sw.TRIAL_ASKED, {"number": 1, "params": {}, "run_id": "r1"})
    told = {"number": 0, "state": "complete", "value": 0.5}
    s.apply(event(s, sw.TRIAL_TOLD, told))
    assert not s.allows(sw.TRIAL_TOLD, told)
    s.apply(event(s, sw.SWEEP_STOPPED, {}))
    assert s.state is SweepState.STOPPED and not s.stopping
    with pytest.raises(sw.IllegalSweepCommand, match="allowed now: resume"):
        s.check("stop")
    assert s.to_json()["best_trial"] == 0 and s.trial_table()[0]["best_so_far"] == 0.5
