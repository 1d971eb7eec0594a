"""The local executor: each attempt is a spawned trainer child of this server's process.

The child reports over a one-way pipe (the wire format of `backend.execution.job`) and
stops on a shared stop flag or SIGTERM. A pump thread per child hands its batches to the
event loop; at most `MAX_QUEUED_BATCHES` wait there unread, then the thread blocks (a
semaphore the loop releases as it consumes), so a server that falls behind slows its
trainer down instead of growing without bound. A message that is not JSON lines becomes
an error `log` event; nothing but JSON crosses the pipe.

The pipe dies with the server, so `reattach` cannot follow an attempt again (reconcile
ends the orphan from its pid and recovers its spool).

Children are forked from a warm process (multiprocessing's forkserver, started at the
first launch, never a fork of the server itself) that has already imported torch and the
trainer: a start skips the ~5 s of imports, and the child exits with `os._exit` after its
final event instead of tearing torch down. Synthetic children (no torch) are spawned.
Torch-free: this server process never imports torch, only the forkserver and children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as StopFlag
from typing import Any

from backend import events as ev
from backend.execution.executor import Attempt, ExitStatus, Slot
from backend.execution.job import TrainJob, WireEvent, child_entry, decode_batch

log = logging.getLogger(__name__)

NAME = "local"
# Batches read from a pipe and not yet consumed by the loop: beyond this the pump waits.
MAX_QUEUED_BATCHES = 64
# How often the pump looks at the process when the pipe is quiet (a child whose pipe is
# held open by its own children, data-loader workers, is still seen to exit), and how
# often a blocked pump checks that the loop it feeds still runs.
_POLL_S = 0.5
# What the forkserver imports once, so that no child does: torch, torch._dynamo (every
# optimizer's constructor imports it, ~3 s) and the trainer with its numpy/scipy.
TRAINER_MODULES = ("torch", "torch._dynamo", "backend.trainer.child", "backend.trainer.loop")

Target = Callable[[TrainJob, Connection, StopFlag], None]


class LocalExecutor:
    """Starts one trainer child per attempt."""

    name = NAME

    def __init__(self, context: BaseContext | None = None, target: Target = child_entry) -> None:
        # Never a plain fork: the server's threads, sockets and SQLite handle must not be
        # copied into a trainer. A given context is used for every child.
        self.context = context
        self.target = target  # the child's entry point; tests may substitute one

    def context_for(self, job: TrainJob) -> BaseContext:
        """forkserver with the trainer preloaded; spawn for a child that never imports
        torch (a synthetic trainer: the forkserver's imports would cost it seconds)."""
        if self.context is not None:
            return self.context
        if job.options.get("synthetic"):
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(TRAINER_MODULES))
        return context

    async def launch(self, job: TrainJob, slot: Slot) -> LocalAttempt:
        devices = slot.visible_devices
        if devices is not None:  # the child sets CUDA_VISIBLE_DEVICES before CUDA starts
            job = replace(job, options={**job.options, "visible_devices": devices})
        context = self.context_for(job)
        parent_conn, child_conn = context.Pipe(duplex=False)
        stop_flag = context.Event()
        process = context.Process(  # type: ignore[attr-defined]
            target=_in_environment,
            args=(self.target, dict(os.environ), job, child_conn, stop_flag),
            name=f"trainboard-train-{job.run_id}",
            daemon=False,  # a daemonic process may not start data-loader workers
        )
        warm = context.get_start_method() == "forkserver"
        try:
            with _sigint_ignored():
                if warm:
                    # Started here, in the main thread, so that it and every child it
                    # forks inherit SIGINT ignored.
                    multiprocessing.forkserver.ensure_running()
                else:
                    process.start()
            if warm:  # the first fork waits for the forkserver's imports: not on the loop
                await asyncio.to_thread(process.start)
        except BaseException:
            parent_conn.close()
            raise
        finally:
            child_conn.close()  # the child holds the write end: EOF when it (and kin) exit
        return LocalAttempt(process, parent_conn, stop_flag)

    async def reattach(
        self, job: TrainJob, handle: Mapping[str, Any], known: set[int]
    ) -> Attempt | None:
        return None  # the pipe died with the server that spawned the child


class _Exit:
    """The pump's last item: the process has been reaped."""

    def __init__(self, code: int | None) -> None:
        self.code = code


class LocalAttempt:
    """One spawned child, its pipe and its stop flag."""

    def __init__(self, process: BaseProcess, conn: Connection, stop_flag: StopFlag) -> None:
        self.process = process
        self.pid = process.pid
        self.handle: Mapping[str, Any] = {
            "executor": NAME,
            "pid": process.pid,
            "pid_started": process_start_time(process.pid) if process.pid else None,
        }
        self._conn = conn
        self._stop_flag = stop_flag
        self._exit: ExitStatus | None = None
        self._queue: asyncio.Queue[list[WireEvent] | _Exit] = asyncio.Queue()
        self._room = threading.Semaphore(MAX_QUEUED_BATCHES)
        self._pump = threading.Thread(
            target=_pump,
            args=(process, conn, asyncio.get_running_loop(), self._queue, self._room),
            name=f"trainboard-pipe-{process.pid}",
            daemon=True,
        )
        self._pump.start()

    async def batches(self) -> AsyncIterator[list[WireEvent]]:
        """Everything the child sent, batches that piled up merged into one, then done."""
        while self._exit is None:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            merged: list[WireEvent] = []
            for item in items:
                if isinstance(item, _Exit):
                    self._exit = ExitStatus(item.code)
                else:
                    self._room.release()
                    merged += item
            if merged:
                yield merged
        self._conn.close()

    async def exit_status(self) -> ExitStatus:
        assert self._exit is not None, "exit_status() before batches() was exhausted"
        return self._exit

    def request_stop(self) -> None:
        self._stop_flag.set()

    def terminate(self) -> None:
        if self._exit is None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self.process.terminate()  # the child treats it as a graceful stop

    def kill(self) -> None:
        if self._exit is None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self.process.kill()


def _in_environment(
    target: Target, environ: dict[str, str], job: TrainJob, conn: Connection, stop: StopFlag
) -> None:
    """The child's first step: the server's environment as it is now (the forkserver's
    dates from its start), and out of the forkserver's reach (see `_leave_forkserver`)."""
    os.environ.clear()
    os.environ.update(environ)
    _leave_forkserver()
    target(job, conn, stop)


def _leave_forkserver() -> None:
    """Close the forkserver's "alive" pipe that a forked child inherits. While any child
    holds it the forkserver outlives a killed server, and the child's parent (the
    forkserver) never changes: closed, the forkserver exits with the server and the child,
    re-parented, sees the server is gone (`Emitter.check_parent`) as a spawned one does."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int) and multiprocessing.parent_process() is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _pump(
    process: BaseProcess,
    conn: Connection,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[list[WireEvent] | _Exit],
    room: threading.Semaphore,
) -> None:
    """Thread: hand each batch from the pipe to the loop, then the exit code once reaped.

    A thread, not `loop.add_reader`: `recv` blocks until a whole message is in, and a
    child stopped (SIGSTOP) halfway through a large send must not freeze the server.
    """

    def put(item: list[WireEvent] | _Exit) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def make_room() -> bool:
        """Block until the loop has room for one more batch; False once it is gone."""
        while not room.acquire(timeout=_POLL_S):
            if loop.is_closed():
                return False
        return True

    open_ = True
    while True:
        ready = wait([conn, process.sentinel] if open_ else [process.sentinel], timeout=_POLL_S)
        if open_ and conn in ready:
            if not make_room():  # backpressure: the child waits on its pipe meanwhile
                return
            open_, batch = _receive(conn)
            if batch is None:
                room.release()
            elif not put(batch):
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
        if not make_room():
            return
        open_, batch = _receive(conn)
        if batch is None:
            room.release()
        elif not put(batch):
            return
    process.join()
    put(_Exit(process.exitcode))


def _receive(conn: Connection) -> tuple[bool, list[WireEvent] | None]:
    """(pipe still open, the batch or None)."""
    try:
        message = conn.recv_bytes()
    except (EOFError, OSError):
        return False, None
    if message[:1] == b"{":  # JSON lines: the child's spool bytes (backend.execution.job)
        return True, decode_batch(message)
    log.error("dropped a message from a trainer that is not JSON lines (%d bytes)", len(message))
    text = (
        f"a message of {len(message)} bytes from the trainer was dropped: it is not JSON "
        f"lines (it starts {message[:40]!r})"
    )
    return True, [(ev.LOG, {"level": "error", "message": text}, time.time())]


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
