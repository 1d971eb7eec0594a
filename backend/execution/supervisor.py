"""The supervisor: the only code that starts, stops, signals and reaps trainer children.

Commands still go through `RunService` (the state machine decides, the store appends);
the supervisor adds what needs a process: the concurrency limit, spawning the child
after `started`/`resumed` is stored, ingesting its event batches, the stop escalation,
and turning a child that died without a final event into `failed` (or, during a stop,
`stopped {forced: true}`). See docs/supervisor.md.

Torch-free: the child imports torch inside `backend.execution.job.child_entry`, never this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import multiprocessing
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as StopFlag
from typing import Any

from backend import events as ev
from backend import runspec
from backend.events import Event, NewEvent
from backend.execution.job import TrainJob, child_entry, decode_batch
from backend.fsm.machine import IllegalCommand, State, legal_commands
from backend.projections import SERVER_SHUTDOWN
from backend.runs import RunService

log = logging.getLogger(__name__)

FINAL_TYPES = frozenset({ev.COMPLETED, ev.FAILED, ev.STOPPED})
# How often the pipe reader looks at the process when the pipe is quiet: a child whose
# pipe is held open by its own children (data-loader workers) is still seen to exit.
_POLL_S = 0.5
# Batches read from a pipe and not yet recorded: beyond this the pipe thread stops reading,
# so a server that falls behind slows the trainer down instead of growing without bound.
_MAX_QUEUED_BATCHES = 64
# How long a new start waits for a finished child that has not exited yet (it holds
# GPU memory until it does) before killing it.
_EXIT_WAIT_S = 10.0


class Busy(Exception):
    """The concurrency limit is reached: HTTP 409 `busy`."""

    def __init__(self, training_run_id: str, max_concurrent: int = 1) -> None:
        self.training_run_id = training_run_id
        self.max_concurrent = max_concurrent
        super().__init__(
            f"run '{training_run_id}' is training and at most {max_concurrent} run(s) may "
            "train at once; wait for it to finish or stop it first"
        )


@dataclass(eq=False)
class _Child:
    """One attempt's trainer process, from reservation to reaping."""

    run_id: str
    attempt: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    stop_flag: StopFlag | None = None
    # The final event went through: the slot is free, late events are dropped.
    ended: bool = False
    stop_requested_at: float | None = None  # monotonic
    exit_code: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # skip the rest of a grace
    done: asyncio.Event = field(default_factory=asyncio.Event)  # reaped and recorded
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass(frozen=True)
class _Exit:
    code: int | None


class Supervisor:
    """Trainer children for the runs of one `RunService`."""

    def __init__(
        self,
        service: RunService,
        *,
        max_concurrent: int = 1,
        stop_grace_s: float = 30.0,
        kill_grace_s: float = 10.0,
        context: BaseContext | None = None,
        job_options: Mapping[str, Any] | None = None,
        target: Callable[[TrainJob, Connection, StopFlag], None] = child_entry,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.service = service
        self.max_concurrent = max_concurrent
        self.stop_grace_s = stop_grace_s
        self.kill_grace_s = kill_grace_s
        # spawn, never fork: the server's threads, sockets and SQLite handle must not be
        # copied into a process that then imports torch.
        self.context = context or multiprocessing.get_context("spawn")
        self.job_options = dict(job_options or {})  # passed to every TrainJob.options
        self.target = target  # the child's entry point; tests may substitute one
        self._active: dict[str, _Child] = {}  # runs holding a slot (starting or training)
        self._exiting: set[_Child] = set()  # final event in, process not yet reaped
        self._closing = False

    # --- commands ---------------------------------------------------------------------------

    async def start(self, run_id: str, command_id: str | None = None) -> Event:
        """Start an Idle run: IllegalCommand, Busy, or the stored `started` event."""
        return await self._launch(run_id, "start", command_id)

    async def resume(self, run_id: str, command_id: str | None = None) -> Event:
        """Resume a Stopped or Error run from its latest checkpoint (fresh if it has none)."""
        return await self._launch(run_id, "resume", command_id)

    async def create_and_start(
        self, run_id: str, created: Mapping[str, Any], command_id: str | None = None
    ) -> tuple[Event, Event]:
        """Create a run and start it at once: Busy, with nothing created, when no slot is
        free; else the `created` and `started` events. The slot is taken first, so no
        other start can come between the two."""
        if self._closing:
            raise RuntimeError("the supervisor is shutting down")
        self._reserve(run_id)
        child = self._active[run_id] = _Child(run_id, 1)
        try:
            job = runspec.job_for(run_id, created, 1, None, self.job_options)
            first = await self.service.create(created, run_id)
            await self._reap_exiting()
            started = await self.service.command(
                run_id, "start", _with_id({"attempt": 1}, command_id)
            )
        except BaseException:
            del self._active[run_id]
            raise
        await self._spawn(child, job)
        return first, started

    async def stop(
        self, run_id: str, command_id: str | None = None, reason: str | None = None
    ) -> Event:
        """Ask a training run to stop; returns `stop_requested`. The run stays Training
        (stopping) until the child reports `stopped` or the escalation ends it. `reason`
        (`server_shutdown`) is recorded with the request."""
        data: dict[str, Any] = {"deadline_s": self.stop_grace_s}
        if reason is not None:
            data["reason"] = reason
        event = await self.service.command(run_id, "stop", _with_id(data, command_id))
        child = self._active.get(run_id)
        if child is None:
            # Training with no process here (nothing to wait for): end it now.
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
        if child.process is not None:  # else _spawn begins the stop once it has one
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
        """Runs holding a training slot (starting, training or stopping)."""
        return list(self._active)

    def pid(self, run_id: str) -> int | None:
        child = self._active.get(run_id)
        return child.process.pid if child and child.process else None

    async def wait(self, run_id: str) -> State | None:
        """Wait until no child of this run is left, everything it sent recorded; its state."""
        while children := [
            c for c in (*self._active.values(), *self._exiting) if c.run_id == run_id
        ]:
            await asyncio.gather(*(c.done.wait() for c in children))
        return self.service.get(run_id).state

    async def shutdown(self) -> None:
        """Stop every child gracefully and wait for them: at most about stop_grace_s +
        kill_grace_s, thanks to the escalation."""
        self._closing = True
        for run_id, child in list(self._active.items()):
            if child.stop_requested_at is None:
                with contextlib.suppress(IllegalCommand):
                    await self.stop(run_id, reason=SERVER_SHUTDOWN)
        children = [*self._active.values(), *self._exiting]
        await asyncio.gather(*(c.done.wait() for c in children))

    # --- starting ---------------------------------------------------------------------------

    async def _launch(self, run_id: str, command: str, command_id: str | None) -> Event:
        if self._closing:
            raise RuntimeError("the supervisor is shutting down")
        summary = self.service.get(run_id)
        summary.run.check(command)  # IllegalCommand before anything else
        if run_id in self._active:
            # Another start of this run is under way and has not stored its event yet.
            raise IllegalCommand(
                run_id, command, State.TRAINING, legal_commands(State.TRAINING), "it is starting"
            )
        self._reserve(run_id)
        child = self._active[run_id] = _Child(run_id, summary.attempts + 1)
        try:
            latest = summary.resumable_from if command == "resume" else None
            checkpoint = None if latest is None else str(latest["path"])
            job = runspec.job_for(
                run_id,
                await self._created(run_id),
                child.attempt,
                checkpoint,
                self.job_options,
                summary.own_checkpoints,
            )
            await self._reap_exiting()
            data: dict[str, Any] = _with_id({"attempt": child.attempt}, command_id)
            if command == "resume":
                data["checkpoint"] = checkpoint
            event = await self.service.command(run_id, command, data)
        except BaseException:
            del self._active[run_id]
            raise
        await self._spawn(child, job)
        return event

    def _reserve(self, run_id: str) -> None:
        """Busy unless a slot is free. Synchronous, so two starts cannot both take the last."""
        if len(self._active) >= self.max_concurrent:
            raise Busy(next(iter(self._active)), self.max_concurrent)

    async def _created(self, run_id: str) -> Mapping[str, Any]:
        [created] = await self.service.store.read_run(run_id, 0, limit=1)
        return created.data

    async def _reap_exiting(self) -> None:
        """Let finished children exit before a new one needs their memory (bounded: see
        `_reap`)."""
        await asyncio.gather(*(c.done.wait() for c in list(self._exiting)))

    async def _spawn(self, child: _Child, job: TrainJob) -> None:
        run_id = child.run_id
        parent_conn, child_conn = self.context.Pipe(duplex=False)
        stop_flag = self.context.Event()
        process = self.context.Process(  # type: ignore[attr-defined]
            target=self.target,
            args=(job, child_conn, stop_flag),
            name=f"trainboard-train-{run_id}",
            daemon=False,  # a daemonic process may not start data-loader workers
        )
        try:
            with _sigint_ignored():
                process.start()
        except Exception as exc:
            log.exception("run %s: cannot start the trainer", run_id)
            parent_conn.close()
            child_conn.close()
            del self._active[run_id]
            await self._record(
                run_id,
                ev.FAILED,
                {
                    "message": f"could not start the trainer process: {exc}",
                    "hint": "check the server's log; the run can be resumed once fixed",
                    "attempt": child.attempt,
                },
            )
            return
        child_conn.close()  # the child holds the write end: EOF when it (and its kin) exit
        child.process, child.conn, child.stop_flag = process, parent_conn, stop_flag
        await self._record(
            run_id,
            ev.LOG,
            {
                "level": "info",
                "message": f"trainer process {process.pid} started (attempt {child.attempt})",
                "pid": process.pid,
                "pid_started": process_start_time(process.pid) if process.pid else None,
            },
        )
        queue: asyncio.Queue[list[Any] | _Exit] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=_pump,
            args=(process, parent_conn, loop, queue),
            name=f"trainboard-pipe-{run_id}",
            daemon=True,
        ).start()
        self._task(child, self._watch(child, queue))
        if child.stop_requested_at is not None:  # stopped while it was being spawned
            self._begin_stop(child)

    # --- watching ---------------------------------------------------------------------------

    async def _watch(self, child: _Child, queue: asyncio.Queue[list[Any] | _Exit]) -> None:
        """Record the child's batches in order; when it has exited, settle how it ended."""
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():  # batches that piled up go in one append
                    items.append(queue.get_nowait())
                batches = [i for i in items if not isinstance(i, _Exit)]
                await self._ingest(child, [e for batch in batches for e in batch])
                if isinstance(items[-1], _Exit):
                    child.exit_code = items[-1].code
                    child.exited.set()
                    await self._settle(child)
                    return
        finally:
            self._release(child)
            self._exiting.discard(child)
            for task in child.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            if child.conn is not None:
                child.conn.close()
            child.done.set()

    async def _ingest(self, child: _Child, wire: list[Any]) -> None:
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
            self._exiting.add(child)  # until it is reaped
            self._task(child, self._reap(child))

    async def _settle(self, child: _Child) -> None:
        """The child exited and its pipe is drained: record the end it did not report."""
        if not child.ended:  # killed between writing its spool and sending: the rest is there
            from backend.execution.reconcile import recover_spool  # reconcile imports this module

            await recover_spool(self.service, child.run_id)
        summary = self.service.get(child.run_id)
        if child.ended or summary.state is not State.TRAINING:
            if child.exit_code:
                log.info("run %s: trainer exited with code %s", child.run_id, child.exit_code)
            return
        code = child.exit_code
        if child.stop_requested_at is not None:
            # A stop was under way: the user gets the Stopped they asked for.
            await self._record(
                child.run_id,
                ev.STOPPED,
                {
                    "iteration": summary.iteration,
                    "checkpoint": summary.last_checkpoint,
                    "forced": True,
                    "exit_code": code,
                },
            )
            return
        message, hint = explain_exit(code)
        await self._record(
            child.run_id,
            ev.FAILED,
            {"message": message, "hint": hint, "exit_code": code, "iteration": summary.iteration},
        )

    async def _reap(self, child: _Child) -> None:
        """A child that reported its end should exit at once; kill it if it lingers, since
        it still holds its memory (a GPU's, say) and everyone waiting on it."""
        if await self._exits_within(child, _EXIT_WAIT_S) or child.process is None:
            return
        log.warning(
            "run %s: the trainer did not exit after its final event; killing it", child.run_id
        )
        child.process.kill()

    def _release(self, child: _Child) -> None:
        """Free the child's slot (its process may still be exiting)."""
        if self._active.get(child.run_id) is child:
            del self._active[child.run_id]

    # --- stopping ---------------------------------------------------------------------------

    def _begin_stop(self, child: _Child) -> None:
        assert child.stop_flag is not None
        child.stop_flag.set()
        self._task(child, self._escalate(child))

    async def _escalate(self, child: _Child) -> None:
        """SIGTERM after the stop grace, SIGKILL after the kill grace; each one recorded."""
        assert child.process is not None and child.stop_requested_at is not None
        for sig, grace in (
            (signal.SIGTERM, self.stop_grace_s),
            (signal.SIGKILL, self.kill_grace_s),
        ):
            if await self._exits_within(child, grace) or child.ended:
                return
            if sig is signal.SIGTERM:
                child.process.terminate()  # the child treats it as a graceful stop
            else:
                child.process.kill()
            after = round(time.monotonic() - child.stop_requested_at, 3)
            await self._record(
                child.run_id, ev.STOP_ESCALATED, {"signal": sig.name, "after_s": after}
            )

    async def _exits_within(self, child: _Child, seconds: float) -> bool:
        child.hurry.clear()
        waits = [asyncio.create_task(child.exited.wait()), asyncio.create_task(child.hurry.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return child.exited.is_set()

    # --- helpers ----------------------------------------------------------------------------

    def _task(self, child: _Child, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        child.tasks.add(task)
        task.add_done_callback(child.tasks.discard)

    async def _record(self, run_id: str, type_: str, data: dict[str, Any]) -> None:
        await self._record_events(run_id, [NewEvent(type_, data, time.time())])

    async def _record_events(self, run_id: str, new: list[NewEvent]) -> None:
        try:
            await self.service.record(run_id, new)
        except Exception:
            # A store that cannot write must not leave the child unwatched.
            log.exception("run %s: could not record %d event(s)", run_id, len(new))


def _with_id(data: dict[str, Any], command_id: str | None) -> dict[str, Any]:
    """A command event's data, with the client's command id when it gave one."""
    return data if command_id is None else {**data, "command_id": command_id}


def _parse_wire(item: Any) -> NewEvent | None:
    """One `(type, data, ts)` from the pipe, or None if it is not a trainer event."""
    try:
        type_, data, ts = item
    except (TypeError, ValueError):
        return None
    if type_ not in ev.TRAINER_TYPES or not isinstance(data, dict):
        return None
    return NewEvent(type_, data, float(ts) if isinstance(ts, int | float) else None)


def _pump(
    process: BaseProcess,
    conn: Connection,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[list[Any] | _Exit],
) -> None:
    """Thread: hand each batch from the pipe to the loop, then the exit code once reaped.

    A thread, not `loop.add_reader`: `recv` blocks until a whole message is in, and a
    child stopped (SIGSTOP) halfway through a large send must not freeze the server.
    """

    def put(item: list[Any] | _Exit) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    open_ = True
    while True:
        ready = wait([conn, process.sentinel] if open_ else [process.sentinel], timeout=_POLL_S)
        if open_ and conn in ready:
            while queue.qsize() >= _MAX_QUEUED_BATCHES and not loop.is_closed():
                time.sleep(0.005)  # backpressure: the child waits on its pipe meanwhile
            open_, batch = _receive(conn)
            if batch is not None and not put(batch):
                return
            continue
        if process.exitcode is not None:
            break
    while open_:  # whatever it sent before it exited
        try:
            if not conn.poll():
                break
        except OSError:
            break
        open_, batch = _receive(conn)
        if batch is not None:
            put(batch)
    process.join()
    put(_Exit(process.exitcode))


def _receive(conn: Connection) -> tuple[bool, list[Any] | None]:
    """(pipe still open, the batch or None)."""
    try:
        message = conn.recv_bytes()
    except (EOFError, OSError):
        return False, None
    if message[:1] == b"{":  # JSON lines: the child's spool bytes (backend.execution.job)
        return True, decode_batch(message)
    try:
        batch = _PlainUnpickler(io.BytesIO(message)).load()
    except Exception as exc:  # not plain data: skip it, keep reading
        log.error("dropped a batch from a trainer that is not plain data: %s", exc)
        text = f"a batch of events from the trainer was dropped: it is not plain data ({exc})"
        return True, [(ev.LOG, {"level": "error", "message": text}, time.time())]
    return True, batch if isinstance(batch, list) else [batch]


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (the wire format's lists, tuples, dicts, strings and
    numbers), so a batch can neither run code in the server nor import torch into it.

    A value of another class becomes the text it was built from when that is all it
    holds (torch's version string is a `str` subclass); anything richer is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        return _as_text(f"{module}.{name}")


def _as_text(qualname: str) -> type:
    def new(cls: type, *args: Any) -> str:
        if len(args) == 1 and isinstance(args[0], str | int | float):
            return str(args[0])
        raise pickle.UnpicklingError(f"{qualname} is not plain data")

    # A type, because pickle's NEWOBJ insists on one; calling it returns a plain str.
    return type("Foreign", (), {"__new__": new})


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start children with SIGINT ignored (Python keeps an inherited SIG_IGN).

    Ctrl-C in a terminal reaches the whole process group; the child must stop through the
    supervisor (checkpoint, `stopped`), not die of KeyboardInterrupt halfway through.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


def process_start_time(pid: int) -> int | None:
    """A live process's start time in clock ticks since boot (Linux), to recognise it
    later even if its pid has been reused; None if there is no such process (a zombie
    counts as gone) or /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    try:
        return None if fields[0] in "ZX" else int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None
