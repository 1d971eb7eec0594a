"""The sweep application service: sweep commands in, sweep events out, trials as runs.

Every change to a sweep goes through `_append` (the sweep's machine decides, the store
appends to its `sweep-` stream, the summary applies the same event a replay would,
listeners such as the hub hear of it). Trials are ordinary runs created through
`Commands` (create with `start: true`), one per asked trial, with the command id
`<sweep id>:trial:<n>`: the run id follows from it, so a trial re-created after a crash
(between `trial_asked` and the run's `created`) is the same run, never a second one.

The service listens to run events: a trial's `validation` is reported to Optuna, and
when the pruner says so the run is stopped with the reason `pruned`; a trial's final
event settles it (`trial_told`), and `advance` keeps `parallel` trials in flight until
the budget is asked, then `sweep_completed` once every trial is told.

Restart: `load` folds every sweep stream (its snapshot plus its tail), rebuilds each
study from the events alone, re-reads the validations of trials in flight, then
advances every sweep: a trial whose run a server stop or crash interrupted is resumed
from its checkpoint, an asked trial without a run gets it, an ended one is told. The
budget is counted in `trial_asked` events, so a restarted sweep asks exactly the trials
it still owes. Sweep stop stops its running trials (reason `sweep_stopped`) and
cancels its queued ones; resume resumes them and asks on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from backend import errors
from backend import events as ev
from backend.commands import COMMANDS, Commands, Outcome, run_id_for
from backend.config import load_config, validate
from backend.errors import ApiError
from backend.events import Event, NewEvent
from backend.experiments import sweeps as sw
from backend.experiments.study import InvalidSweep, LiveStudy, metric_of, parse_spec
from backend.experiments.sweeps import SweepState, SweepSummary, Trial
from backend.fsm.machine import IllegalCommand, State
from backend.jsontext import loads
from backend.projections import SERVER_SHUTDOWN
from backend.readmodels import snapshots

log = logging.getLogger(__name__)
Listener = Callable[[list[Event]], None]

PRUNED = "pruned"  # the stop reason of a pruned trial
SWEEP_STOP = "sweep_stopped"  # the stop reason of a trial its sweep stopped
SNAPSHOT = "sweeps"  # the snapshot row of the sweep summaries
SNAPSHOT_FORMAT = 1
_FINAL = frozenset({ev.COMPLETED, ev.STOPPED, ev.FAILED})
# Stops that interrupt a trial rather than end it: it resumes when its sweep runs.
_RESUMABLE_STOPS = frozenset({SWEEP_STOP, SERVER_SHUTDOWN})


class UnknownSweep(KeyError):
    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id
        super().__init__(sweep_id)

    def __str__(self) -> str:
        return f"no sweep with id '{self.sweep_id}'; list the sweeps with GET /api/sweeps"


class SweepService:
    """Sweeps over the runs of one `Commands` (its RunService and supervisor)."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands
        self.service = commands.service
        self.store = commands.service.store
        self.sweeps: dict[str, SweepSummary] = {}
        self.studies: dict[str, LiveStudy] = {}
        self._trial_of: dict[str, tuple[str, int]] = {}  # run id -> (sweep id, number)
        self._command_sweeps: dict[str, str] = {}  # command id -> sweep id
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Listener] = []
        self._dirty: set[str] = set()  # sweeps to advance
        self._draining: set[str] = set()  # sweeps with an advance task under way
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pruning: set[str] = set()  # trial runs with a pruning stop sent
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self._unlisten: Callable[[], None] | None = None
        self._closed = False
        self.restored = (0, 0)  # at load: sweeps from the snapshot, sweep events folded

    # --- start and stop ---------------------------------------------------------------------

    async def load(self) -> None:
        """Fold every sweep (snapshot + tail), rebuild the studies, listen, advance all."""
        await self._restore()
        for summary in self.sweeps.values():
            self._index(summary)
            if summary.state is not SweepState.COMPLETE:
                self.studies[summary.sweep_id] = LiveStudy.rebuild(summary)
        self._unlisten = self.service.listen(self._on_run_events)
        for sweep_id, study in list(self.studies.items()):
            async with self._lock(sweep_id):
                for trial in self.sweeps[sweep_id].in_flight():
                    for step, value in await self._validations(sweep_id, trial):
                        study.report(trial.number, step, value)
        for sweep_id in list(self.studies):
            self._kick(sweep_id)

    async def close(self) -> None:
        """Stop listening and wait for the advances under way (the store stays open)."""
        self._closed = True
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every batch of new sweep events; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def get(self, sweep_id: str) -> SweepSummary:
        try:
            return self.sweeps[sweep_id]
        except KeyError:
            raise UnknownSweep(sweep_id) from None

    async def wait(self, sweep_id: str, until: Callable[[SweepSummary], bool]) -> SweepSummary:
        """Wait until `until(summary)` holds, looked at after every sweep or run event."""
        while not until(self.get(sweep_id)):
            await self._changed.wait()
        return self.get(sweep_id)

    def _pulse(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- snapshots --------------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        """Every sweep summary as JSON values (the snapshot set's `sweeps` row)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "sweeps": {sid: s.to_state() for sid, s in self.sweeps.items()},
        }

    async def _restore(self) -> None:
        """Sweep summaries from their snapshot, each checked against the store's version
        of its stream and its tail folded; any sweep the snapshot lacks or got wrong is
        folded from its own events. Flat in the log: reads only streams that moved."""
        saved: dict[str, SweepSummary] = {}
        for row in await self.store.load_snapshots(SNAPSHOT):
            if row.name != SNAPSHOT:
                continue
            try:
                state = snapshots._decode(row, self.store.last_seq, snapshots.schema_tag())
                if state["format"] != SNAPSHOT_FORMAT:
                    raise snapshots.SnapshotUnusable(f"sweeps format {state['format']}")
                saved = {k: SweepSummary.from_state(v) for k, v in state["sweeps"].items()}
            except (snapshots.SnapshotUnusable, KeyError, TypeError, ValueError) as exc:
                log.warning("sweep snapshot unusable (%s): folding the sweeps' events", exc)
                saved = {}
        self.sweeps.clear()
        folded = 0
        for sweep_id in self.store.run_ids():
            if not sw.is_sweep(sweep_id):
                continue
            summary = saved.get(sweep_id) or SweepSummary(sweep_id)
            if summary.version > self.store.run_version(sweep_id):
                summary = SweepSummary(sweep_id)  # ahead of the log: not to be trusted
            after = summary.version
            while batch := await self.store.read_run(sweep_id, after, limit=10_000):
                for event in batch:
                    summary.replay(event)
                after = batch[-1].version
                folded += len(batch)
            self.sweeps[sweep_id] = summary
        self.restored = (len(set(saved) & set(self.sweeps)), folded)

    def _index(self, summary: SweepSummary) -> None:
        for trial in summary.trials:
            self._trial_of[trial.run_id] = (summary.sweep_id, trial.number)
        for command_id in summary.commands:
            self._command_sweeps.setdefault(command_id, summary.sweep_id)

    # --- commands ---------------------------------------------------------------------------

    async def run(
        self,
        command: str,
        sweep_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        command_id: str | None = None,
    ) -> Outcome:
        """create / stop / resume a sweep; a repeated id is answered from its first event."""
        try:
            if command == "create":
                return await self._create(dict(data or {}), command_id)
            if command not in ("stop", "resume"):
                raise errors.bad_request(
                    f"unknown sweep command '{command}'; use create, stop or resume"
                )
            if not sweep_id:
                raise errors.bad_request(f"'{command}' needs a sweep_id")
            return await self._command(command, sweep_id, command_id)
        except ApiError as exc:
            return Outcome(exc.status, {"error": exc.to_json()})
        except InvalidSweep as exc:
            return Outcome(400, {"error": errors.bad_request(str(exc), **exc.details).to_json()})
        except UnknownSweep as exc:
            error = errors.not_found(str(exc), sweep_id=exc.sweep_id)
            return Outcome(404, {"error": error.to_json()})
        except sw.IllegalSweepCommand as exc:
            details = {
                "sweep_id": exc.sweep_id,
                "command": exc.command,
                "state": None if exc.state is None else str(exc.state),
                "legal_commands": exc.legal,
            }
            return Outcome(
                409, {"error": ApiError(409, "illegal_command", str(exc), details).to_json()}
            )

    def _answer(self, status: int, summary: SweepSummary, event: Event | None) -> Outcome:
        body: dict[str, Any] = {"sweep": summary.to_json()}
        if event is not None:
            body["event"] = event.to_json()
        return Outcome(status, body)

    async def _create(self, body: dict[str, Any], command_id: str | None) -> Outcome:
        sweep_id = sw.new_sweep_id() if command_id is None else sw.sweep_id_for(command_id)
        async with self._lock(sweep_id):
            if sweep_id in self.sweeps:  # a repeated create: its first answer
                summary = self.sweeps[sweep_id]
                [first] = await self.store.read_run(sweep_id, 0, limit=1)
                return self._answer(201, summary, first)
            spec = parse_spec(body)
            spec["output_root"] = await anyio.to_thread.run_sync(lambda: self._probe(spec))
            if command_id is not None:
                spec["command_id"] = command_id
            summary = self.sweeps[sweep_id] = SweepSummary(sweep_id)
            try:
                [event] = await self._append(summary, [NewEvent(sw.SWEEP_CREATED, spec)])
            except BaseException:
                del self.sweeps[sweep_id]
                raise
            self.studies[sweep_id] = LiveStudy(spec)
        self._kick(sweep_id)
        return self._answer(201, summary, event)

    def _probe(self, spec: Mapping[str, Any]) -> str:
        """Check the config with each parameter at both ends of its range (unknown keys,
        wrong types: a 422 listing every problem); the absolute base output folder."""
        base_dir = self.commands.base_dir
        values: dict[str, Any] = {}
        for end in (0, -1):
            overrides = list(spec["overrides"])
            for key, p in spec["space"].items():
                value = p["choices"][end] if p["type"] == "choice" else (p["low"], p["high"])[end]
                overrides += [key, repr(value)]
            loaded = load_config(text=spec["config"], base_text=spec["base"], overrides=overrides)
            problems = validate(loaded, check_paths=self.commands.check_paths, base_dir=base_dir)
            bad = [p for p in problems if p.is_error]
            if bad:
                shown = "; ".join(p.format() for p in bad[:3])
                raise ApiError(
                    422,
                    "invalid_config",
                    f"the sweep's config has {len(bad)} error(s) within its space: {shown}",
                    {"problems": [p.to_json() for p in problems]},
                )
            values = loaded.values
        root = Path(os.path.abspath(base_dir or Path.cwd()))
        return str(root / str(values["DATASET"]["OUTPUT_PATH"]))

    async def _command(self, command: str, sweep_id: str, command_id: str | None) -> Outcome:
        if command_id is not None and command_id in self._command_sweeps:
            recorded = self.get(self._command_sweeps[command_id])
            if recorded.commands[command_id][0] != command or recorded.sweep_id != sweep_id:
                raise ApiError(
                    409,
                    "id_reused",
                    f"command id '{command_id}' was already used; choose a fresh id (a UUID)",
                )
            version = int(recorded.commands[command_id][1])
            [first] = await self.store.read_run(sweep_id, version - 1, limit=1)
            return self._answer(200, recorded, first)
        async with self._lock(sweep_id):
            summary = self.get(sweep_id)
            event_type = summary.check(command)
            data = {} if command_id is None else {"command_id": command_id}
            [event] = await self._append(summary, [NewEvent(event_type, data)])
            if command == "stop":
                await self._stop_trials(summary)
        self._kick(sweep_id)
        return self._answer(200, summary, event)

    async def _stop_trials(self, summary: SweepSummary) -> None:
        """Stop the sweep's training trials; cancel its queued ones (the queue's `dequeue`)."""
        for trial in summary.in_flight():
            run = self.service.runs.get(trial.run_id)
            if run is None:
                continue
            if run.state is State.TRAINING and not run.run.stopping:
                with contextlib.suppress(IllegalCommand):
                    await self.commands.supervisor.stop(trial.run_id, None, reason=SWEEP_STOP)
            elif (
                run.state is State.IDLE and getattr(run, "queued", False) and "dequeue" in COMMANDS
            ):
                await self.commands.run("dequeue", trial.run_id, {})

    # --- the event path ---------------------------------------------------------------------

    async def _append(self, summary: SweepSummary, new: Sequence[NewEvent]) -> list[Event]:
        for item in new:
            if not summary.allows(item.type, dict(item.data)):
                raise RuntimeError(f"{summary.sweep_id}: '{item.type}' is not legal now")
        stored = await self.store.append(summary.sweep_id, new, summary.version)
        for event in stored:
            summary.apply(event)
        self._index(summary)
        for listener in list(self._listeners):
            try:
                listener(stored)
            except Exception:
                log.exception("a sweep listener failed")
        self._pulse()
        return stored

    def _lock(self, sweep_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sweep_id, asyncio.Lock())

    # --- run events -------------------------------------------------------------------------

    def _on_run_events(self, events: list[Event]) -> None:
        """RunService's listener (synchronous, inside its append: never raises)."""
        self._pulse()
        try:
            run_ended = False
            for event in events:
                if event.type in _FINAL:
                    run_ended = True
                found = self._trial_of.get(event.run_id)
                if found is None:
                    continue
                sweep_id, number = found
                if event.type == ev.VALIDATION:
                    self._on_validation(sweep_id, number, event)
                elif event.type in _FINAL or event.type in (ev.STARTED, ev.CREATED):
                    self._kick(sweep_id)
            if run_ended:  # a slot may have freed: sweeps waiting for one try again
                for sweep_id, summary in self.sweeps.items():
                    if summary.state is SweepState.RUNNING:
                        self._kick(sweep_id)
        except Exception:
            log.exception("sweeps: could not handle %d run event(s)", len(events))

    def _on_validation(self, sweep_id: str, number: int, event: Event) -> None:
        study, summary = self.studies.get(sweep_id), self.sweeps[sweep_id]
        value = None if study is None else metric_of(study.objective, event.data)
        step = event.data.get("iteration")
        if study is None or value is None or not isinstance(step, int):
            return
        prune = study.report(number, step, value)
        run_id = event.run_id
        running = summary.state is SweepState.RUNNING and not summary.stopping
        if prune and running and run_id not in self._pruning:
            self._pruning.add(run_id)
            log.info("sweep %s: pruning trial %d (run %s) at %d", sweep_id, number, run_id, step)
            self._spawn(self._prune(run_id))

    async def _prune(self, run_id: str) -> None:
        with contextlib.suppress(IllegalCommand):
            await self.commands.supervisor.stop(run_id, None, reason=PRUNED)

    async def _validations(self, sweep_id: str, trial: Trial) -> list[tuple[int, float]]:
        """A trial's validation values from its run's stored events (after a restart)."""
        if trial.run_id not in self.service.runs:
            return []
        objective = self.sweeps[sweep_id].spec["objective"]
        found, after = [], 0
        while rows := await self.store.read_rows(after, 10_000, trial.run_id):
            for _seq, _run, _version, kind, _ts, data in rows:
                if kind == ev.VALIDATION:
                    parsed = loads(data)
                    value, step = metric_of(objective, parsed), parsed.get("iteration")
                    if value is not None and isinstance(step, int):
                        found.append((step, value))
            after = rows[-1][0]
        return found

    # --- advancing a sweep ------------------------------------------------------------------

    def _kick(self, sweep_id: str) -> None:
        """Advance this sweep soon (coalesced: one advance task per sweep at a time)."""
        if self._closed:
            return
        self._dirty.add(sweep_id)
        if sweep_id not in self._draining:
            self._draining.add(sweep_id)
            self._spawn(self._drain(sweep_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, sweep_id: str) -> None:
        try:
            while sweep_id in self._dirty and not self._closed:
                self._dirty.discard(sweep_id)
                try:
                    await self.advance(sweep_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(
                        "sweep %s: advancing failed (retried on the next event)", sweep_id
                    )
        finally:
            self._draining.discard(sweep_id)

    async def advance(self, sweep_id: str) -> None:
        """Settle ended trials, launch asked ones, ask new ones up to `parallel`, and end
        the sweep (completed, or stopped) when nothing is left in flight."""
        async with self._lock(sweep_id):
            summary = self.sweeps[sweep_id]
            if summary.state is SweepState.COMPLETE:
                return
            for trial in summary.in_flight():
                await self._settle(summary, trial)
            running = summary.state is SweepState.RUNNING and not summary.stopping
            parallel = int(summary.spec.get("parallel", 1))
            while (
                running
                and len(summary.in_flight()) < parallel
                and len(summary.trials) < summary.budget
            ):
                trial = await self._ask(summary)
                if not await self._launch(summary, trial):
                    break
            if summary.state is SweepState.RUNNING:
                if len(summary.trials) == summary.budget and not summary.in_flight():
                    await self._append(summary, [NewEvent(sw.SWEEP_COMPLETED, summary.counts())])
                    self.studies.pop(sweep_id, None)
                elif summary.stopping and not any(self._active(t) for t in summary.in_flight()):
                    await self._append(summary, [NewEvent(sw.SWEEP_STOPPED, summary.counts())])

    def _active(self, trial: Trial) -> bool:
        """Whether a trial's run is training, starting or queued (a stop waits for it)."""
        run = self.service.runs.get(trial.run_id)
        if run is None:
            return False
        if trial.run_id in self.commands.supervisor.training():
            return True
        return run.state is State.TRAINING or bool(getattr(run, "queued", False))

    async def _ask(self, summary: SweepSummary) -> Trial:
        number = len(summary.trials)
        params, attrs = self.studies[summary.sweep_id].ask(number)
        run_id = run_id_for(sw.trial_command_id(summary.sweep_id, number))
        data = {"number": number, "params": params, "run_id": run_id, "system_attrs": attrs}
        await self._append(summary, [NewEvent(sw.TRIAL_ASKED, data)])
        return summary.trials[number]

    def _trial_request(self, summary: SweepSummary, trial: Trial) -> dict[str, Any]:
        spec = summary.spec
        overrides = list(spec["overrides"])
        for key, value in trial.params.items():
            overrides += [key, repr(value)]
        output = os.path.join(spec["output_root"], summary.sweep_id, f"trial-{trial.number}")
        overrides += ["DATASET.OUTPUT_PATH", repr(output)]
        request: dict[str, Any] = {
            "name": f"{spec['name']} · trial {trial.number}",
            "config": spec["config"],
            "base": spec["base"],
            "overrides": overrides,
            "start": True,
        }
        if spec.get("seed") is not None:
            request["seed"] = spec["seed"]
        return request

    async def _launch(self, summary: SweepSummary, trial: Trial) -> bool:
        """Create (and start, or queue) a trial's run; False when no slot is free now."""
        annotations = {
            "sweep": {"id": summary.sweep_id, "number": trial.number, "params": dict(trial.params)},
            "tags": [f"sweep:{summary.sweep_id}"],
        }
        outcome = await self.commands.run(
            "create",
            None,
            self._trial_request(summary, trial),
            sw.trial_command_id(summary.sweep_id, trial.number),
            annotations=annotations,
        )
        if outcome.ok:
            return True
        error = outcome.body.get("error", {})
        if error.get("code") == "busy" or outcome.status >= 500:
            return False  # tried again when a run ends
        reason = f"the trial's run could not be created: {error.get('message')}"
        await self._tell(summary, trial, "fail", None, reason)
        return True

    async def _settle(self, summary: SweepSummary, trial: Trial) -> None:
        """Bring one in-flight trial forward by its run's state."""
        running = summary.state is SweepState.RUNNING and not summary.stopping
        run = self.service.runs.get(trial.run_id)
        if run is None:
            if running:
                await self._launch(summary, trial)
            return
        state, reason = run.state, run.stop_reason
        if getattr(run, "deleted", False):  # its run was deleted (a tombstone): it is over
            await self._tell(summary, trial, "fail", None, "its run was deleted")
            return
        if state is State.TRAINING or trial.run_id in self.commands.supervisor.training():
            return
        if state is State.IDLE:
            if running and not getattr(run, "queued", False):
                await self._start(trial, "start")
            return
        study = self.studies[summary.sweep_id]
        if state is State.COMPLETE:
            await self._tell(summary, trial, "complete", study.value(trial.number), None)
        elif reason == PRUNED:
            await self._tell(summary, trial, "pruned", study.last(trial.number), None)
        elif run.interrupted or reason in _RESUMABLE_STOPS:
            if running:
                await self._start(trial, "resume")
        elif state is State.STOPPED:
            await self._tell(summary, trial, "fail", None, "stopped by a user")
        else:
            message = (run.error or {}).get("message") or "the trial's run failed"
            await self._tell(summary, trial, "fail", None, str(message))

    async def _start(self, trial: Trial, command: str) -> None:
        # No command id: the run's machine already refuses a second start or resume, and
        # a refusal (no free slot) must not be remembered as this trial's answer.
        outcome = await self.commands.run(command, trial.run_id, {})
        if not outcome.ok and outcome.body.get("error", {}).get("code") != "busy":
            log.warning("trial run %s: %s refused: %s", trial.run_id, command, outcome.body)

    async def _tell(
        self,
        summary: SweepSummary,
        trial: Trial,
        state: str,
        value: float | None,
        reason: str | None,
    ) -> None:
        study = self.studies[summary.sweep_id]
        if state == "complete" and value is None:
            state, reason = "fail", "no validation result: validate before the last iteration"
        data: dict[str, Any] = {
            "number": trial.number,
            "state": state,
            "value": value,
            "intermediate": study.intermediate(trial.number),
        }
        if reason:
            data["reason"] = reason
        await self._append(summary, [NewEvent(sw.TRIAL_TOLD, data)])
        study.tell(trial.number, state, value)
        self._pruning.discard(trial.run_id)
