"""The trainer child process: `main(job, conn, stop)` runs one attempt of one run.

The parent spawns `backend.execution.job.child_entry`, which calls `main` here. `main`:

1. installs SIGTERM and SIGINT handlers that request the same graceful stop as the
   `stop` flag;
2. opens the emitter (pipe + `events.jsonl` + `train.log` in the log folder) and creates
   the output folder;
3. routes Python `warnings` and `logging` records (WARNING and up, or whatever level a
   library set for its logger) to `log` events with `source: "trainer"`;
4. runs the training loop (or, with the `synthetic` option, `backend.trainer.synthetic`,
   which never imports torch), which treats a stop flag, SIGTERM or a dead parent alike:
   checkpoint, then `stopped`;
5. guarantees exactly one final event (`completed`, `failed` or `stopped`), sent and
   written, whatever happened (including errors outside the loop), then flushes, fsyncs
   and closes the pipe;
6. exits 0 after `completed` or `stopped`, 1 after `failed`.

Data-parallel (`backend.trainer.distributed`): this process is rank 0. A local DDP run
(`options["world_size"]` or the config) starts ranks 1..n-1 from the loop and reaps them
before the final event. Under srun / torchrun every task calls `run`; a task whose rank
is not 0 trains silently (no emitter, no files) and only its exit code tells.

Options (`TrainJob.options`): `flush_interval` (seconds, default 0.25), `threads` (CPU
threads for torch; default every CPU the process may use), `deterministic` (default:
on for the CPU, off for CUDA), `synthetic` (see `backend.trainer.synthetic`),
`visible_devices` (`CUDA_VISIBLE_DEVICES` of this attempt, set before CUDA starts),
`world_size`, `data_streams`, `dist_timeout_s` (see `backend.trainer.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as StopFlag
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from backend.events import FAILED, LOG
from backend.execution.job import TrainJob
from backend.trainer.emitter import DEFAULT_FLUSH_INTERVAL, SOURCE, Emitter, json_line

if TYPE_CHECKING:
    from backend.trainer.distributed import World

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether to stop: the parent's flag, SIGTERM, or the parent gone. Cheap to ask:
    a plain attribute test first, then the shared flag (a semaphore, ~1 µs)."""

    def __init__(self, flag: StopFlag | None, emitter: Emitter | None = None) -> None:
        self.flag = flag
        self.emitter = emitter
        self.signalled = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: the handler runs between bytecodes, in the middle of anything.
        self.signalled = True

    def __call__(self) -> bool:
        if self.signalled:
            return True
        if self.flag is not None and self.flag.is_set():
            return True
        return self.emitter is not None and self.emitter.check_parent()


def main(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    """The spawned child's body; ends the process with exit code 0 or 1."""
    # The handlers stay until the process exits: a late SIGTERM (the supervisor escalating
    # just as training ends) must not turn a clean exit into death by signal.
    raise SystemExit(run(job, conn, stop, restore_signals=False))


def run(
    job: TrainJob,
    conn: Connection | None,
    stop: StopFlag | None,
    *,
    restore_signals: bool = True,
) -> int:
    """Run one attempt and return the exit code (separate from `main` for in-process use)."""
    devices = job.options.get("visible_devices")
    if devices is not None:  # the slot's GPUs; CUDA reads this when it starts
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices)
    # A pipe means the server's local executor spawned us: never a cluster task, even when
    # the server itself runs inside a Slurm allocation (its SLURM_* variables leak here).
    world = _launched_world() if conn is None else None
    if world is not None and not world.is_main:
        from backend.trainer.distributed import run_rank

        return run_rank(job, world, None)
    request = StopRequest(stop)
    # SIGINT too: a Ctrl-C in the server's terminal reaches the whole process group, and
    # the child should then save a checkpoint rather than die mid-step.
    previous = install_stop_handlers(request)
    try:
        return _attempt(job, conn, request, world)
    finally:
        if restore_signals:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _launched_world() -> World | None:
    """The DDP world of a task srun or torchrun started (imports torch only then)."""
    sizes = (os.environ.get("WORLD_SIZE", "1"), os.environ.get("SLURM_NTASKS", "1"))
    if all(not size.isdigit() or int(size) <= 1 for size in sizes):
        return None
    from backend.trainer.distributed import from_environment

    return from_environment()


def _attempt(
    job: TrainJob, conn: Connection | None, request: StopRequest, world: World | None = None
) -> int:
    try:
        emitter = _open_emitter(job, conn)
    except Exception as exc:
        return _fail_without_files(conn, job, exc)
    request.emitter = emitter
    exit_code = 1
    try:
        write_resolved_config(job)
        with _logs_to(emitter):
            outcome = _loop(job, emitter, request, world).run()
        emitter.finish(outcome.type, outcome.data)
        exit_code = outcome.exit_code
    except BaseException as exc:  # a bug outside the loop, KeyboardInterrupt, ...
        emitter.finish(FAILED, _failed_data(exc, "the trainer crashed outside the loop"))
    finally:
        emitter.close()
    return exit_code


def _loop(job: TrainJob, emitter: Emitter, request: StopRequest, world: World | None) -> Any:
    """The training loop, or the synthetic one (imported without torch)."""
    if job.options.get("synthetic"):
        from backend.trainer.synthetic import SyntheticLoop

        return SyntheticLoop(job, emitter, request)
    from backend.trainer.loop import TrainingLoop

    return TrainingLoop(job, emitter, request, world=world)


class _LogEvents(logging.Handler):
    """`logging` records (and, through `captureWarnings`, `warnings`) as `log` events."""

    def __init__(self, emitter: Emitter) -> None:
        super().__init__(logging.DEBUG)
        self.emitter = emitter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {"level": _level(record.levelno), "message": record.getMessage().strip()}
            data |= {"source": SOURCE, "logger": record.name}
            self.emitter.emit_threadsafe(LOG, data)
        except Exception:
            self.handleError(record)


def _level(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


@contextlib.contextmanager
def _logs_to(emitter: Emitter) -> Iterator[None]:
    """Route the child's `logging` records and `warnings` to log events meanwhile."""
    handler = _LogEvents(emitter)
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)


def install_stop_handlers(request: StopRequest) -> dict[int, Any]:
    # Python only lets the main thread set handlers (in-process callers may use another).
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, request.on_signal) for sig in _STOP_SIGNALS}


def _open_emitter(job: TrainJob, conn: Connection | None) -> Emitter:
    monitor = job.config.get("MONITOR", {})
    log_every = int((monitor.get("ITERATION_NUM") or [20])[0])
    Path(job.output_path).mkdir(parents=True, exist_ok=True)
    return Emitter(
        conn,
        job.log_path,
        attempt=job.attempt,
        flush_interval=float(job.options.get("flush_interval", DEFAULT_FLUSH_INTERVAL)),
        log_every=log_every,
    )


RESOLVED_CONFIG = "config.yaml"


def write_resolved_config(job: TrainJob) -> Path:
    """The resolved config (every default filled) as `config.yaml` next to the run's logs,
    so the folder explains itself; `trainboard train config.yaml` repeats the run."""
    import yaml

    path = Path(job.log_path) / RESOLVED_CONFIG
    partial = path.with_name(f".{RESOLVED_CONFIG}.partial")
    header = f"# Resolved config of run {job.run_id}, attempt {job.attempt}, seed {job.seed}\n"
    partial.write_text(header + yaml.safe_dump(job.config, sort_keys=False), encoding="utf-8")
    partial.replace(path)
    return path


def _failed_data(exc: BaseException, hint: str) -> dict[str, Any]:
    return {
        "message": f"{type(exc).__name__}: {exc}",
        "hint": hint,
        "traceback": "".join(traceback.format_exception(exc)),
        "iteration": None,
    }


def _fail_without_files(conn: Connection | None, job: TrainJob, exc: Exception) -> int:
    """The log folder cannot be written: report over the pipe alone, then exit 1."""
    hint = (
        f"make the log folder {job.log_path} and DATASET.OUTPUT_PATH {job.output_path} "
        "writable, or choose other paths"
    )
    data = _failed_data(exc, hint) | {"attempt": job.attempt, "n": 1}
    if conn is not None:
        try:
            conn.send_bytes(json_line(FAILED, data, time.time()))
            conn.close()
        except (OSError, EOFError, ValueError):
            pass
    print(f"trainer child {os.getpid()}: {data['message']}", flush=True)
    return 1
