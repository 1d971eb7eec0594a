"""The application service: commands in, events out, one run at a time.

Every change to a run goes through here, whoever asks (REST, WebSocket, CLI, the
trainer supervisor): the state machine decides, the store appends, the in-memory run is
updated with the same `apply` a replay uses, and listeners hear about the new events.
A command's event records its client-chosen id (`data.command_id`); `find_command`
answers which run and event an id made, also after a restart.

The read models (a summary and a run page per run) are restored at start from their
snapshots plus the events after them (`backend.readmodels.snapshots`), or folded from the
whole log when a snapshot cannot be trusted; either way they equal a full fold.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from backend import events as ev
from backend.events import Event, NewEvent
from backend.experiments.sweeps import is_sweep
from backend.fsm.fold import admissible
from backend.fsm.machine import IllegalCommand, State, refusal
from backend.projections import CommandRecord, RunSummary
from backend.readmodels import snapshots
from backend.readmodels.runpage import RunPage
from backend.store import EventStore

log = logging.getLogger(__name__)
# Events that change which runs are queued, or their order.
_QUEUE_TYPES = frozenset({ev.QUEUED, ev.QUEUE_MOVED, ev.DEQUEUED, ev.STARTED})
Listener = Callable[[list[Event]], None]


class UnknownRun(KeyError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(run_id)

    def __str__(self) -> str:
        return f"no run with id '{self.run_id}'"


class RunService:
    """Commands and trainer reports for all runs, over one event store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.runs: dict[str, RunSummary] = {}
        self.pages: dict[str, RunPage] = {}  # loaded pages
        self.lazy_pages: set[str] = set()  # runs whose page waits in its snapshot (see page())
        self.changed: set[str] = set()  # runs whose page changed since the last snapshot
        self.snapshots = snapshots.Snapshotter(self)  # started by the server, not by tests
        self._command_runs: dict[str, str] = {}  # command id -> the run whose log records it
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Listener] = []
        self._queue: list[str] | None = None  # queued runs in order; None: to recompute

    async def load(self) -> snapshots.Restored:
        """Rebuild every run's read models (startup): from the snapshots and the events
        after them when they can be trusted, else from the whole log (logged)."""
        restored = await snapshots.restore(self)
        self._queue = None
        self.queue()
        return restored

    def queue(self) -> list[str]:
        """The queued runs, first to start first (by `queue_rank`, then run id); keeps
        each summary's `queue_position` in step."""
        if self._queue is None:
            for summary in self.runs.values():
                summary.queue_position = None
            queued = [s for s in self.runs.values() if s.queued]
            queued.sort(key=lambda s: (s.queue_rank or 0.0, s.run.run_id))
            for position, summary in enumerate(queued, 1):
                summary.queue_position = position
            self._queue = [s.run.run_id for s in queued]
        return self._queue

    async def fold_from(self, after: int, run_id: str | None = None) -> None:
        """Fold the stored events after seq `after` (of one run, or all) into the models."""
        while batch := await self._read_after(after, run_id):
            for event in batch:
                self.fold(event)
            after = batch[-1].seq

    async def _read_after(self, after: int, run_id: str | None) -> list[Event]:
        if run_id is None:
            return await self.store.read_all(after, limit=10_000)
        return await self.store.read_run_after_seq(run_id, after, limit=10_000)

    def fold(self, event: Event) -> None:
        """Apply one stored event from the log, leniently, to every read model."""
        if is_sweep(event.run_id):
            return  # a sweep's own stream: backend.experiments folds it
        summary = self.runs.get(event.run_id)
        if summary is None:
            summary = self.runs[event.run_id] = RunSummary.new(event.run_id)
        summary.replay(event)
        if event.type in _QUEUE_TYPES:
            self._queue = None
        if event.run_id not in self.lazy_pages:
            page = self.pages.get(event.run_id)
            if page is None:
                page = self.pages[event.run_id] = RunPage(event.run_id)
            if event.seq > page.seq:
                page.apply(event)
                self.changed.add(event.run_id)
        self._index(event)

    def clear(self) -> None:
        """Forget every read model (before a full fold)."""
        self.runs.clear()
        self.pages.clear()
        self.lazy_pages.clear()
        self._command_runs.clear()
        self._queue = None

    async def index_commands(self) -> None:
        """The command-id answers table, from the summaries (after a restore). An id that
        several runs recorded goes to the one that recorded it first in the log, as a
        full fold finds it (one indexed read per such id)."""
        owners: dict[str, list[str]] = {}
        for run_id, summary in self.runs.items():
            for command_id in summary.commands:
                owners.setdefault(command_id, []).append(run_id)
        self._command_runs.clear()
        for command_id, run_ids in owners.items():
            if len(run_ids) > 1:
                versions = [self.runs[r].commands[command_id].version for r in run_ids]
                seqs = [
                    await self.store.seq_of(r, v) for r, v in zip(run_ids, versions, strict=True)
                ]
                run_ids = [r for _, r in sorted(zip(seqs, run_ids, strict=True))]
            self._command_runs[command_id] = run_ids[0]

    async def page(self, run_id: str) -> RunPage:
        """A run's page; one still in its snapshot is loaded now (under the run's lock, so
        no append slips between its snapshot's tail and the page going live)."""
        self.get(run_id)
        if run_id in self.lazy_pages:
            async with self._lock(run_id):
                await self._load_page(run_id)
        return self.pages.setdefault(run_id, RunPage(run_id))

    async def _load_page(self, run_id: str) -> None:
        """Bring a page out of its snapshot; the caller holds the run's lock."""
        if run_id in self.lazy_pages:
            self.pages[run_id] = await snapshots.load_page(self, run_id)
            self.lazy_pages.discard(run_id)
            self.changed.add(run_id)  # the next set saves it with its tail

    def unload_idle_pages(self) -> int:
        """Leave the pages of runs not training, saved and unchanged since, to their
        snapshots (memory stays bounded by the runs in training); how many."""
        idle = [
            run_id
            for run_id in self.pages
            if run_id not in self.changed
            and self.runs[run_id].state is not State.TRAINING
            and not self._lock(run_id).locked()  # an append under way applies to this page
        ]
        for run_id in idle:
            del self.pages[run_id]
            self.lazy_pages.add(run_id)
        return len(idle)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every batch of newly stored events; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def find_command(self, command_id: str) -> tuple[RunSummary, CommandRecord] | None:
        """The run and the command that a command id was recorded with, if any."""
        run_id = self._command_runs.get(command_id)
        summary = None if run_id is None else self.runs.get(run_id)
        record = None if summary is None else summary.commands.get(command_id)
        return None if summary is None or record is None else (summary, record)

    def _index(self, event: Event) -> None:
        command_id = event.data.get("command_id")
        is_command = event.type in ev.COMMAND_EVENTS.values() or event.type in ev.COMMAND_ALIASES
        if isinstance(command_id, str) and is_command:
            self._command_runs.setdefault(command_id, event.run_id)

    def get(self, run_id: str) -> RunSummary:
        try:
            return self.runs[run_id]
        except KeyError:
            raise UnknownRun(run_id) from None

    def _lock(self, run_id: str) -> asyncio.Lock:
        return self._locks.setdefault(run_id, asyncio.Lock())

    async def create(self, data: Mapping[str, Any], run_id: str | None = None) -> Event:
        """Create a run (Idle) from already-validated data."""
        run_id = run_id or new_run_id()
        async with self._lock(run_id):
            summary = self.runs.get(run_id) or RunSummary.new(run_id)
            summary.run.check("create")
            [event] = await self._append(summary, [NewEvent(ev.CREATED, data)])
            self.runs[run_id] = summary
            return event

    async def command(
        self,
        run_id: str,
        command: str,
        data: Mapping[str, Any] | None = None,
        alias: str | None = None,
    ) -> Event:
        """Apply a client command (start, stop, resume, ...); IllegalCommand writes nothing.
        `alias` appends that event instead of the command's own (`queued` for a start that
        finds no free slot), if the machine allows it now."""
        async with self._lock(run_id):
            summary = self.get(run_id)
            event_type = summary.run.check(command)
            if alias is not None:
                assert ev.COMMAND_ALIASES.get(alias) == command, alias
                if not summary.run.allows(alias):
                    raise IllegalCommand(
                        run_id,
                        command,
                        summary.state or State.IDLE,
                        summary.run.legal_commands(),
                        refusal(alias),
                    )
                event_type = alias
            [event] = await self._append(summary, [NewEvent(event_type, data or {})])
            return event

    async def prepared_command(
        self,
        run_id: str,
        command: str,
        data: Mapping[str, Any],
        prepare: Callable[[RunSummary], Awaitable[Mapping[str, Any]]],
    ) -> Event:
        """A command whose data depends on the run as it is once the command is known legal
        (a tag set made from the current tags, a delete's removed files): `prepare` runs
        after the check, under the run's lock, so no other event can come in between."""
        async with self._lock(run_id):
            summary = self.get(run_id)
            event_type = summary.run.check(command)
            data = {**data, **await prepare(summary)}
            [event] = await self._append(summary, [NewEvent(event_type, data)])
            return event

    async def record(self, run_id: str, new_events: Sequence[NewEvent]) -> list[Event]:
        """Append facts reported by a trainer or the supervisor.

        Events the machine would reject (a late metric after the run ended, say) are
        dropped with a warning rather than corrupting the log.
        """
        async with self._lock(run_id):
            summary = self.get(run_id)
            verdicts = admissible(summary.run, [e.type for e in new_events])
            accepted = [e for e, ok in zip(new_events, verdicts, strict=True) if ok]
            if len(accepted) < len(new_events):
                dropped = [e.type for e, ok in zip(new_events, verdicts, strict=True) if not ok]
                log.warning("run %s: dropped events not legal now: %s", run_id, dropped)
            return await self._append(summary, accepted)

    async def _append(self, summary: RunSummary, new: Sequence[NewEvent]) -> list[Event]:
        if not new:
            return []
        run_id = summary.run.run_id
        stored = await self.store.append(run_id, new, summary.run.version)
        # A page left in its snapshot stays there: loading it is its snapshot plus the
        # run's events after it, these included (the run's lock keeps it from changing
        # meanwhile), so recording a run's end never refolds its whole page.
        page = None if run_id in self.lazy_pages else self.pages.setdefault(run_id, RunPage(run_id))
        for event in stored:
            summary.apply(event)
            if page is not None:
                page.apply(event)
            self._index(event)
            if event.type in _QUEUE_TYPES:
                self._queue = None
        if page is not None:
            self.changed.add(run_id)
        self.queue()  # positions in step before anyone reads a summary
        for listener in list(self._listeners):
            listener(stored)
        return stored


def new_run_id() -> str:
    """Short, sortable-enough, URL-safe run ids."""
    return uuid.uuid4().hex[:12]
