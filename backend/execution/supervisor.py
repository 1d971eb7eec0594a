"""The supervisor: the lifecycle of every attempt, whichever executor runs it.

Commands still go through `RunService` (the state machine decides, the store appends);
the supervisor adds what needs an attempt: a slot from the scheduler (or a place in the
queue when none is free), launching through the executor after `started`/`resumed` is
stored, recording the attempt's event batches, the stop escalation's timing
(`request_stop`, then `terminate`, then `kill`), and settling an attempt that ended
without a final event from its `ExitStatus` (`failed`, or `stopped {forced: true}` during
a stop). When a slot frees, the first queued run that fits starts (`start_queued`).
See docs/execution.md.

Executor-agnostic and torch-free: `backend.execution.local` spawns the trainer children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend import events as ev
from backend import runspec
from backend.config import load_config
from backend.events import Event, NewEvent
from backend.execution.executor import Attempt, Executor, ExitStatus, Slot
from backend.execution.job import TrainJob
from backend.execution.local import LocalExecutor, process_start_time
from backend.execution.scheduler import CPU, Scheduler, default_slots, rank_after, rank_at
from backend.fsm.machine import IllegalCommand, State, legal_commands
from backend.projections import SERVER_SHUTDOWN
from backend.runs import RunService

log = logging.getLogger(__name__)

__all__ = ["FINAL_TYPES", "Busy", "Supervisor", "explain_exit", "process_start_time"]

FINAL_TYPES = frozenset({ev.COMPLETED, ev.FAILED, ev.STOPPED})
# How long a new start waits for a finished attempt on its devices that has not exited
# yet (it holds GPU memory until it does) before killing it.
_EXIT_WAIT_S = 10.0


class Busy(Exception):
    """No slot is free for a resume (the queue holds Idle runs only): HTTP 409 `busy`."""

    def __init__(self, training_run_id: str, max_concurrent: int = 1) -> None:
        self.training_run_id = training_run_id
        self.max_concurrent = max_concurrent
        super().__init__(
            f"run '{training_run_id}' is training and at most {max_concurrent} run(s) may "
            "train at once; wait for it to finish or stop it first"
        )


@dataclass(eq=False)
class _Run:
    """One attempt as the supervisor sees it, from reserving its slot to its end."""

    run_id: str
    number: int  # the attempt's number
    slot: Slot
    attempt: Attempt | None = None
    # The final event went through: the slot is free, late events are dropped.
    ended: bool = False
    stop_requested_at: float | None = None  # monotonic
    exit: ExitStatus | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # skip the rest of a grace
    done: asyncio.Event = field(default_factory=asyncio.Event)  # ended and recorded
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Supervisor:
    """Attempts of the runs of one `RunService`, on one executor's slots."""

    def __init__(
        self,
        service: RunService,
        *,
        executor: Executor | None = None,
        scheduler: Scheduler | None = None,
        max_concurrent: int | None = None,
        stop_grace_s: float = 30.0,
        kill_grace_s: float = 10.0,
        job_options: Mapping[str, Any] | None = None,
        queue: bool = True,
    ) -> None:
        self.service = service
        self.queue = queue  # False: a start with no free slot is Busy, as a resume is
        self.executor: Executor = executor or LocalExecutor()
        self.scheduler = scheduler or Scheduler(default_slots(max_concurrent))
        self.stop_grace_s = stop_grace_s
        self.kill_grace_s = kill_grace_s
        self.job_options = dict(job_options or {})  # passed to every TrainJob.options
        self._active: dict[str, _Run] = {}  # runs holding a slot (starting or training)
        self._exiting: set[_Run] = set()  # final event in, attempt not yet over
        self._needs: dict[str, int] = {}  # run id -> slots it takes (from its config)
        self._pumping: asyncio.Task[None] | None = None
        self._pump_again = False
        self._closing = False

    @property
    def max_concurrent(self) -> int:
        return len(self.scheduler.slots)

    # --- commands ---------------------------------------------------------------------------

    async def start(self, run_id: str, command_id: str | None = None) -> Event:
        """Start an Idle run: IllegalCommand, the stored `started` event, or — no slot
        free, or runs queued before it — the stored `queued` event."""
        event = await self._launch(run_id, "start", command_id)
        assert event is not None
        return event

    async def resume(self, run_id: str, command_id: str | None = None) -> Event:
        """Resume a Stopped or Error run from its latest checkpoint (fresh if it has none);
        Busy when no slot is free."""
        event = await self._launch(run_id, "resume", command_id)
        assert event is not None
        return event

    async def create_and_start(
        self, run_id: str, created: Mapping[str, Any], command_id: str | None = None
    ) -> tuple[Event, Event]:
        """Create a run and start it at once: the `created` event, then `started` — or
        `queued` when no slot is free. The slot is taken first, so no other start can
        come between the two."""
        self._check_open()
        need = self._need_of(run_id, created)
        slot = None if self._queue_ahead(run_id) else self.scheduler.take(run_id, need)
        if slot is None:
            if not self.queue:
                raise Busy(next(iter(self._active), ""), self.max_concurrent)
            first = await self.service.create(created, run_id)
            return first, await self._enqueue(run_id, command_id)
        child = self._active[run_id] = _Run(run_id, 1, slot)
        try:
            job = runspec.job_for(run_id, created, 1, None, self.job_options)
            first = await self.service.create(created, run_id)
            await self._reap_exiting(slot)
            started = await self.service.command(
                run_id, "start", _with_id({"attempt": 1}, command_id)
            )
        except BaseException:
            self._forget(child)
            raise
        await self._spawn(child, job)
        return first, started

    async def dequeue(
        self, run_id: str, command_id: str | None = None, reason: str = "cancelled"
    ) -> Event:
        """Take a queued run out of the queue (it stays Idle): `dequeued`."""
        data = _with_id({"reason": reason}, command_id)
        return await self.service.command(run_id, "dequeue", data)

    async def move(
        self,
        run_id: str,
        command_id: str | None = None,
        *,
        before: str | None = None,
        position: int | None = None,
    ) -> Event:
        """Reorder a queued run: just before the queued run `before` (None: last), or to
        1-based `position`: `queue_moved`. ValueError when `before` is not queued."""
        order = [r for r in self.service.queue() if r != run_id]
        ranks = [self.service.get(r).queue_rank or 0.0 for r in order]
        if position is None:
            if before is not None and before not in order:
                raise ValueError(f"run '{before}' is not queued; move before a queued run")
            position = len(order) + 1 if before is None else order.index(before) + 1
        data = _with_id({"rank": rank_at(ranks, position)}, command_id)
        return await self.service.command(run_id, "move", data)

    async def stop(
        self, run_id: str, command_id: str | None = None, reason: str | None = None
    ) -> Event:
        """Ask a training run to stop; returns `stop_requested`. The run stays Training
        (stopping) until the attempt reports `stopped` or the escalation ends it. `reason`
        (`server_shutdown`) is recorded with the request."""
        data: dict[str, Any] = {"deadline_s": self.stop_grace_s}
        if reason is not None:
            data["reason"] = reason
        event = await self.service.command(run_id, "stop", _with_id(data, command_id))
        child = self._active.get(run_id)
        if child is None:
            # Training with no attempt here (nothing to wait for): end it now.
            summary = self.service.get(run_id)
            await self._record(
                run_id,
                ev.STOPPED,
                {
                    "iteration": summary.iteration,
                    "checkpoint": summary.last_checkpoint,
                    "forced": True,
                    "message": "no trainer process was running for this run",
                },
            )
            return event
        child.stop_requested_at = time.monotonic()
        if child.attempt is not None:  # else _spawn begins the stop once it has one
            self._begin_stop(child)
        return event

    def escalate(self, run_id: str) -> bool:
        """Cut the current grace period short (a second Ctrl-C): send the next signal now.
        False when the run has no stop under way here."""
        child = self._active.get(run_id)
        if child is None or child.stop_requested_at is None:
            return False
        child.hurry.set()
        return True

    def training(self) -> list[str]:
        """Runs holding a slot (starting, training or stopping)."""
        return list(self._active)

    def pid(self, run_id: str) -> int | None:
        """The local trainer process of a run's attempt, if it has one here."""
        child = self._active.get(run_id)
        pid = child.attempt.handle.get("pid") if child and child.attempt else None
        return pid if isinstance(pid, int) else None

    def queue_table(self) -> dict[str, Any]:
        """`GET /api/queue`: the slots and who holds them, and the queued runs in order."""
        return {"slots": self.scheduler.table(), "queued": list(self.service.queue())}

    async def wait(self, run_id: str) -> State | None:
        """Wait until no attempt of this run is left, everything it sent recorded; its state."""
        while children := [
            c for c in (*self._active.values(), *self._exiting) if c.run_id == run_id
        ]:
            await asyncio.gather(*(c.done.wait() for c in children))
        return self.service.get(run_id).state

    async def shutdown(self) -> None:
        """Stop every attempt gracefully and wait for them: at most about stop_grace_s +
        kill_grace_s, thanks to the escalation. Queued runs stay queued (the next start
        of the server starts them)."""
        self._closing = True
        if self._pumping is not None:
            await asyncio.gather(self._pumping, return_exceptions=True)
        for run_id, child in list(self._active.items()):
            if child.stop_requested_at is None:
                with contextlib.suppress(IllegalCommand):
                    await self.stop(run_id, reason=SERVER_SHUTDOWN)
        children = [*self._active.values(), *self._exiting]
        await asyncio.gather(*(c.done.wait() for c in children))

    # --- the queue --------------------------------------------------------------------------

    async def start_queued(self) -> None:
        """Start queued runs, first first, while the first fits in the free slots (also
        after a server restart: the queue is rebuilt from events)."""
        while self.queue and not self._closing:
            order = self.service.queue()
            if not order:
                return
            run_id = order[0]
            if run_id in self._active:
                return  # a start of it is under way; its launch kicks the queue again
            try:
                started = await self._launch(run_id, "start", None, from_queue=True)
            except IllegalCommand:
                return  # started meanwhile by its own start command (a race, not a fault)
            except Exception as exc:
                # It could never start (its config, its devices): out of the queue, so it
                # does not hold the others back.
                log.warning("run %s: cannot start from the queue: %s", run_id, exc)
                with contextlib.suppress(IllegalCommand):
                    await self.dequeue(run_id, reason=f"failed: {exc}")
                continue
            if started is None:
                return  # no room for the first: it waits, and the rest behind it

    def _kick(self) -> None:
        """A slot freed: run `start_queued` (once at a time; again if kicked meanwhile)."""
        if self._closing:
            return
        if self._pumping is not None and not self._pumping.done():
            self._pump_again = True
            return
        self._pumping = asyncio.create_task(self._pump_queue())

    async def _pump_queue(self) -> None:
        while True:
            self._pump_again = False
            try:
                await self.start_queued()
            except Exception:
                log.exception("could not start queued runs")
            if not self._pump_again:
                return

    def _queue_ahead(self, run_id: str) -> bool:
        """Whether other queued runs come before `run_id` (a new start waits behind them)."""
        if not self.queue:
            return False
        order = self.service.queue()
        return bool(order) and order[0] != run_id

    async def _enqueue(self, run_id: str, command_id: str | None) -> Event:
        summary = self.service.get(run_id)
        if summary.queued:
            why = f"it is already queued, at position {summary.queue_position}"
            raise IllegalCommand(run_id, "start", State.IDLE, summary.run.legal_commands(), why)
        ranks = [self.service.get(r).queue_rank or 0.0 for r in self.service.queue()]
        data = _with_id({"rank": rank_after(ranks)}, command_id)
        return await self.service.command(run_id, "start", data, alias=ev.QUEUED)

    # --- starting ---------------------------------------------------------------------------

    async def _launch(
        self, run_id: str, command: str, command_id: str | None, from_queue: bool = False
    ) -> Event | None:
        self._check_open()
        summary = self.service.get(run_id)
        summary.run.check(command)  # IllegalCommand before anything else
        created = await self._created(run_id)
        need = self._need_of(run_id, created)
        # From here to the slot, no await: two starts cannot both take the last slot.
        self._check_open()
        summary = self.service.get(run_id)
        summary.run.check(command)
        if run_id in self._active:
            # Another start of this run is under way and has not stored its event yet.
            raise IllegalCommand(
                run_id, command, State.TRAINING, legal_commands(State.TRAINING), "it is starting"
            )
        waits = command == "start" and not from_queue and self._queue_ahead(run_id)
        slot = None if waits else self.scheduler.take(run_id, need)
        if slot is None:
            if from_queue:
                return None
            if command == "resume" or not self.queue:
                holder = next(iter(self._active), "")
                raise Busy(holder, self.max_concurrent)
            return await self._enqueue(run_id, command_id)
        child = self._active[run_id] = _Run(run_id, summary.attempts + 1, slot)
        try:
            latest = summary.resumable_from if command == "resume" else None
            checkpoint = None if latest is None else str(latest["path"])
            job = runspec.job_for(
                run_id,
                created,
                child.number,
                checkpoint,
                self.job_options,
                summary.own_checkpoints,
            )
            await self._reap_exiting(slot)
            data: dict[str, Any] = _with_id({"attempt": child.number}, command_id)
            if command == "resume":
                data["checkpoint"] = checkpoint
            event = await self.service.command(run_id, command, data)
        except BaseException:
            self._forget(child)
            raise
        await self._spawn(child, job)
        return event

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("the supervisor is shutting down")

    def _need_of(self, run_id: str, created: Mapping[str, Any]) -> int:
        """Slots the run takes (NoRoom when it could never start here); cached per run."""
        need = self._needs.get(run_id)
        if need is None:
            loaded = load_config(text=str(created.get("config") or ""))
            need = self._needs[run_id] = self.scheduler.need(loaded.values)
        self.scheduler.check(need)
        return need

    async def _created(self, run_id: str) -> Mapping[str, Any]:
        [created] = await self.service.store.read_run(run_id, 0, limit=1)
        return created.data

    async def _reap_exiting(self, slot: Slot) -> None:
        """Let finished attempts on these devices end before a new one needs their memory
        (bounded: see `_reap`)."""
        on_it = [c for c in self._exiting if _shares(c.slot, slot)]
        await asyncio.gather(*(c.done.wait() for c in on_it))

    async def _spawn(self, child: _Run, job: TrainJob) -> None:
        run_id = child.run_id
        try:
            attempt = await self.executor.launch(job, child.slot)
        except Exception as exc:
            log.exception("run %s: cannot start the trainer", run_id)
            self._forget(child)
            await self._record(
                run_id,
                ev.FAILED,
                {
                    "message": f"could not start the trainer ({self.executor.name}): {exc}",
                    "hint": "check the server's log; the run can be resumed once fixed",
                    "attempt": child.number,
                },
            )
            child.done.set()
            return
        child.attempt = attempt
        await self._record(run_id, ev.LOG, _launch_log(attempt.handle, child))
        self._task(child, self._watch(child, attempt))
        if child.stop_requested_at is not None:  # stopped while it was being launched
            self._begin_stop(child)
        self._kick()  # slots may still be free for what is queued (a head started by hand)

    async def adopt(self, run_id: str, attempt: Attempt) -> None:
        """Watch an attempt that an executor found again after a server restart
        (`Executor.reattach`): as if this supervisor had launched it."""
        summary = self.service.get(run_id)
        slot = self.scheduler.take(run_id, 1) or Slot(-1, ())  # over the limit, if need be
        child = self._active[run_id] = _Run(run_id, summary.attempts, slot, attempt)
        self._task(child, self._watch(child, attempt))
        if summary.run.stopping:  # a stop asked before the restart: carry it on (again)
            child.stop_requested_at = time.monotonic()
            self._begin_stop(child)

    # --- watching ---------------------------------------------------------------------------

    async def _watch(self, child: _Run, attempt: Attempt) -> None:
        """Record the attempt's batches in order; when it is over, settle how it ended."""
        try:
            async for batch in attempt.batches():
                await self._ingest(child, batch)
            child.exit = await attempt.exit_status()
            child.exited.set()
            await self._settle(child)
        finally:
            self._release(child)
            self._exiting.discard(child)
            for task in child.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            child.done.set()

    async def _ingest(self, child: _Run, wire: list[Any]) -> None:
        new: list[NewEvent] = []
        final = child.ended
        for item in wire:
            if final:
                log.warning("run %s: dropped an event after the final one: %r", child.run_id, item)
                continue
            parsed = _parse_wire(item)
            if parsed is None:
                log.warning(
                    "run %s: dropped a malformed event from the trainer: %r", child.run_id, item
                )
                continue
            new.append(parsed)
            final = parsed.type in FINAL_TYPES
        if new:
            await self._record_events(child.run_id, new)
        if final and not child.ended:
            child.ended = True
            self._release(child)
            self._exiting.add(child)  # until it is over
            self._task(child, self._reap(child))

    async def _settle(self, child: _Run) -> None:
        """The attempt is over and all it sent is read: record the end it did not report.
        The executor's message and hint (a Slurm TIMEOUT, say) win over `explain_exit`."""
        if not child.ended:  # killed between writing its spool and sending: the rest is there
            from backend.execution.reconcile import recover_spool  # reconcile imports this module

            await recover_spool(self.service, child.run_id)
        summary = self.service.get(child.run_id)
        status = child.exit or ExitStatus(None)
        if child.ended or summary.state is not State.TRAINING:
            if status.code:
                log.info("run %s: trainer exited with code %s", child.run_id, status.code)
            return
        if child.stop_requested_at is not None:
            # A stop was under way: the user gets the Stopped they asked for.
            data: dict[str, Any] = {
                "iteration": summary.iteration,
                "checkpoint": summary.last_checkpoint,
                "forced": True,
                "exit_code": status.code,
            }
            if status.message:
                data["message"] = status.message
            await self._record(child.run_id, ev.STOPPED, data)
            return
        message, hint = explain_exit(status.code)
        await self._record(
            child.run_id,
            ev.FAILED,
            {
                "message": status.message or message,
                "hint": status.hint or hint,
                "exit_code": status.code,
                "iteration": summary.iteration,
            },
        )

    async def _reap(self, child: _Run) -> None:
        """An attempt that reported its end should be over at once; kill it if it
        lingers, since it still holds its memory (a GPU's, say) and everyone waiting."""
        if await self._exits_within(child, _EXIT_WAIT_S) or child.attempt is None:
            return
        log.warning(
            "run %s: the trainer did not exit after its final event; killing it", child.run_id
        )
        child.attempt.kill()

    def _release(self, child: _Run) -> None:
        """Free the attempt's slot (it may still be exiting), and start what is queued."""
        if self._active.get(child.run_id) is child:
            self._forget(child)
            self._kick()

    def _forget(self, child: _Run) -> None:
        if self._active.get(child.run_id) is child:
            del self._active[child.run_id]
            self.scheduler.release(child.run_id)

    # --- stopping ---------------------------------------------------------------------------

    def _begin_stop(self, child: _Run) -> None:
        assert child.attempt is not None
        child.attempt.request_stop()
        self._task(child, self._escalate(child))

    async def _escalate(self, child: _Run) -> None:
        """terminate() after the stop grace, kill() after the kill grace; each recorded."""
        assert child.attempt is not None and child.stop_requested_at is not None
        for sig, grace in (
            (signal.SIGTERM, self.stop_grace_s),
            (signal.SIGKILL, self.kill_grace_s),
        ):
            if await self._exits_within(child, grace) or child.ended:
                return
            if sig is signal.SIGTERM:
                child.attempt.terminate()  # the trainer treats it as a graceful stop
            else:
                child.attempt.kill()
            after = round(time.monotonic() - child.stop_requested_at, 3)
            await self._record(
                child.run_id, ev.STOP_ESCALATED, {"signal": sig.name, "after_s": after}
            )

    async def _exits_within(self, child: _Run, seconds: float) -> bool:
        child.hurry.clear()
        waits = [asyncio.create_task(child.exited.wait()), asyncio.create_task(child.hurry.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return child.exited.is_set()

    # --- helpers ----------------------------------------------------------------------------

    def _task(self, child: _Run, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        child.tasks.add(task)
        task.add_done_callback(child.tasks.discard)

    async def _record(self, run_id: str, type_: str, data: dict[str, Any]) -> None:
        await self._record_events(run_id, [NewEvent(type_, data, time.time())])

    async def _record_events(self, run_id: str, new: list[NewEvent]) -> None:
        try:
            await self.service.record(run_id, new)
        except Exception:
            # A store that cannot write must not leave the attempt unwatched.
            log.exception("run %s: could not record %d event(s)", run_id, len(new))


def _shares(a: Slot, b: Slot) -> bool:
    """Whether two slots share memory that an attempt holds until it exits: the same slot,
    or a GPU in common (CPU slots share only the machine's RAM, which is not reserved)."""
    return a.index == b.index or bool((set(a.devices) & set(b.devices)) - {CPU})


def _launch_log(handle: Mapping[str, Any], child: _Run) -> dict[str, Any]:
    """The `log` event recorded at launch: the handle (reconcile reads it back), the
    devices, and a line for people."""
    where = ", ".join(child.slot.devices)
    if isinstance(handle.get("pid"), int):
        what = f"trainer process {handle['pid']} started"
    else:
        what = f"{handle.get('executor')} job {handle.get('job_id')} submitted"
    message = f"{what} on {where} (attempt {child.number})"
    return {**handle, "level": "info", "message": message, "devices": list(child.slot.devices)}


def _with_id(data: dict[str, Any], command_id: str | None) -> dict[str, Any]:
    """A command event's data, with the client's command id when it gave one."""
    return data if command_id is None else {**data, "command_id": command_id}


def _parse_wire(item: Any) -> NewEvent | None:
    """One `(type, data, ts)` from an attempt, or None if it is not a trainer event."""
    try:
        type_, data, ts = item
    except (TypeError, ValueError):
        return None
    if type_ not in ev.TRAINER_TYPES or not isinstance(data, dict):
        return None
    return NewEvent(type_, data, float(ts) if isinstance(ts, int | float) else None)


# --- exit codes -----------------------------------------------------------------------------

_OOM_HINT = (
    "killed by SIGKILL — probably out of memory (the kernel's OOM killer); "
    "lower SOLVER.SAMPLES_PER_BATCH or MODEL.INPUT_SIZE"
)
_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: _OOM_HINT,
    signal.SIGTERM: (
        "terminated by SIGTERM from outside Trainboard (a job scheduler, a system shutdown "
        "or a `kill`); resume it to continue from the last checkpoint"
    ),
    signal.SIGINT: "interrupted by SIGINT (Ctrl-C); resume it to continue from the last checkpoint",
    signal.SIGSEGV: (
        "crashed with a segmentation fault: usually a native library (CUDA driver, a volume "
        "reader) or a corrupt input file; see train.log in the run's log folder"
    ),
    signal.SIGABRT: (
        "aborted by a native library (CUDA, cuDNN, NCCL); see train.log in the run's log "
        "folder and the server's output"
    ),
    signal.SIGBUS: (
        "bus error: often shared memory (/dev/shm) too small for data-loader workers; "
        "lower SYSTEM.NUM_CPUS"
    ),
}


def explain_exit(code: int | None) -> tuple[str, str]:
    """(message, hint) for a trainer that exited with `code` without a final event."""
    if code is None:
        return "the trainer process vanished", "see the server's output"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = _SIGNAL_HINTS.get(-code, f"killed by {name}; resume it to continue")
        return f"the trainer process was killed by {name} (exit code {code})", hint
    if code == 0:
        return (
            "the trainer process exited without reporting how training ended",
            "this is a bug in the trainer; see train.log in the run's log folder",
        )
    return (
        f"the trainer process exited with code {code} before reporting an error",
        "it probably failed while starting (an import or a library error); see the "
        "server's output and train.log in the run's log folder",
    )
