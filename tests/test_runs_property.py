"""Random command sequences against the machine and the store (hypothesis, stateful).

Legal commands append exactly one event, illegal ones append nothing, trainer reports
append exactly the events the machine admits, and folding the stored events always gives
the live state. Command ids recorded in events are found again, live and after a reload,
pointing at the first event that recorded them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from backend import events as ev
from backend.events import NewEvent
from backend.fsm import IllegalCommand, fold
from backend.fsm.fold import admissible
from backend.projections import summarize
from backend.runs import RunService
from backend.store import EventStore

REPORTABLE = [*ev.TRAINER_TYPES, ev.STOP_ESCALATED, "bogus"]
COMMAND_IDS = st.one_of(st.none(), st.sampled_from(["c1", "c2", "c3"]))


class RunLifecycleMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = self.run(EventStore.open(":memory:", flush_window=0))
        self.service = RunService(self.store)
        self.heard: list[int] = []
        self.service.listen(lambda events: self.heard.extend(e.seq for e in events))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    @rule(target=runs, name=st.text(min_size=0, max_size=8))
    def create(self, name: str) -> str:
        before = self.store.last_seq
        event = self.run(self.service.create({"name": name}))
        assert self.store.last_seq == before + 1 and event.version == 1
        run_id: str = event.run_id
        return run_id

    @rule(
        run_id=runs,
        command=st.sampled_from(["start", "stop", "resume", "create", "nap"]),
        command_id=COMMAND_IDS,
        shutdown=st.booleans(),
    )
    def command(self, run_id: str, command: str, command_id: str | None, shutdown: bool) -> None:
        run = self.service.get(run_id).run
        before_seq, before_version = self.store.last_seq, run.version
        legal = command in run.legal_commands()
        data: dict[str, Any] = {} if command_id is None else {"command_id": command_id}
        if command == "stop" and shutdown:
            data["reason"] = "server_shutdown"
        try:
            self.run(self.service.command(run_id, command, data))
        except IllegalCommand as exc:
            assert not legal
            assert exc.legal == run.legal_commands()
            assert self.store.last_seq == before_seq and run.version == before_version
        else:
            assert legal
            assert self.store.last_seq == before_seq + 1 and run.version == before_version + 1

    @rule(
        run_id=runs,
        types=st.lists(st.sampled_from(REPORTABLE), max_size=6),
        interrupted=st.booleans(),
        iteration=st.integers(0, 3),
    )
    def report(self, run_id: str, types: list[str], interrupted: bool, iteration: int) -> None:
        run = self.service.get(run_id).run
        expected = sum(admissible(run, types))
        before = self.store.last_seq
        data = {"n": 1, "iteration": iteration, "path": f"/c{iteration}"}
        if interrupted:
            data.update(interrupted=True, checkpoint=f"/c{iteration}")
        stored = self.run(self.service.record(run_id, [NewEvent(t, data) for t in types]))
        assert len(stored) == expected == self.store.last_seq - before

    @invariant()
    def replay_equals_live(self) -> None:
        for run_id, live in self.service.runs.items():
            stored = self.run(self.store.read_run(run_id))
            replayed = fold(stored, run_id)
            assert replayed.problems == []
            assert (replayed.state, replayed.stopping, replayed.version) == (
                live.run.state,
                live.run.stopping,
                live.run.version,
            )
            assert summarize(stored, run_id).to_json() == live.to_json()

    @invariant()
    def command_ids_are_found_again(self) -> None:
        first: dict[str, tuple[str, int]] = {}
        for event in self.run(self.store.read_all(0, 100_000)):
            command_id = event.data.get("command_id")
            if event.type in ev.COMMAND_EVENTS.values() and command_id:
                first.setdefault(command_id, (event.run_id, event.version))
        reloaded = RunService(self.store)
        self.run(reloaded.load())
        for service in (self.service, reloaded):
            for command_id in ("c1", "c2", "c3"):
                found = service.find_command(command_id)
                where = None if found is None else (found[0].run.run_id, found[1].version)
                assert where == first.get(command_id)

    @invariant()
    def listeners_heard_every_event_once(self) -> None:
        assert self.heard == list(range(1, self.store.last_seq + 1))


RunLifecycleMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None
)
TestRunLifecycle = RunLifecycleMachine.TestCase
