"""Crash recovery at server start: runs that a dead server left in Training.

A trainer child writes every event to `<log_path>/events.jsonl` as well as to the pipe,
each stamped with its `attempt` and `n` (the child's own counter). When the server died,
the child's last events may never have reached SQLite. For every run still Training:

0. The executor named in the attempt's launch handle (the `log` event recorded at launch)
   is asked to `reattach`: a Slurm job is followed again, from where the store stops, and
   the supervisor watches it as if it had launched it; nothing below happens. The local
   executor cannot (its pipe died with the server), so for it:
1. If the trainer of its current attempt is still alive (the pid and start time the
   supervisor recorded in a `log` event match a live process), it is an orphan whose
   pipe leads nowhere: it gets SIGTERM (a graceful stop: checkpoint, `stopped` in the
   file) and SIGKILL if it has not exited after `kill_grace_s`. Re-attaching is not
   possible, since the pipe died with the server; a resume starts a fresh child.
2. The file's events of the current attempt that the database lacks are appended, in
   file order, each `(attempt, n)` once, up to the attempt's final event: running
   reconcile again appends nothing. A recovered `stopped` that no user asked for (the
   trainer stopped because its server went away) is marked `interrupted: true`.
3. If that recovered no final event, `failed {interrupted: true}` ends the run in Error,
   from where it can be resumed from its last checkpoint — or, when a user's stop was
   under way, `stopped {forced: true}`: the Stopped they asked for, not an interruption.

Either way the run's summary then says it was interrupted (`RunSummary.interrupted`),
which `trainboard serve --auto-resume` reads (`auto_resume`).

Only the current attempt is read from the store: from the version of its `started` /
`resumed` event that the run's summary keeps (`RunSummary.attempt_version`), not from
the run's first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import events as ev
from backend import runspec
from backend.commands import Commands, Outcome
from backend.events import NewEvent
from backend.execution.job import EVENTS_FILE
from backend.execution.local import process_start_time
from backend.execution.supervisor import FINAL_TYPES, Supervisor
from backend.fsm.machine import State
from backend.projections import RunSummary
from backend.runs import RunService

log = logging.getLogger(__name__)

INTERRUPTED: dict[str, Any] = {
    "message": "interrupted: the server stopped while this run was training",
    "hint": "resume it to continue from the last checkpoint",
    "interrupted": True,
}
_CHUNK = 5_000  # recovered events per append


@dataclass
class _Attempt:
    """What the database knows of a run's current attempt (from its summary: nothing is
    read back from the store, so reconciling a long attempt costs what it lost, not what
    it wrote)."""

    attempt: int | None = None
    started_ts: float = 0.0
    # The highest `n` of its events already stored: the trainer numbers an attempt's lines
    # upwards and the server stores them in order, so every lower one is stored too.
    known_max: int = 0
    pid: int | None = None
    pid_started: int | None = None
    handle: dict[str, Any] | None = None  # the executor's, from the launch `log` event

    @property
    def known(self) -> set[int]:
        """The `n` already stored (for an executor that reattaches)."""
        return set(range(1, self.known_max + 1))


async def reconcile(
    service: RunService, supervisor: Supervisor | None = None, *, kill_grace_s: float = 10.0
) -> list[str]:
    """Reconcile every run left in Training; returns their ids. Idempotent."""
    live = set(supervisor.training()) if supervisor is not None else set()
    done = []
    for run_id, summary in list(service.runs.items()):
        if summary.state is State.TRAINING and run_id not in live:
            current = await _current_attempt(service, run_id)
            if supervisor is None or not await _reattach(service, supervisor, run_id, current):
                await reconcile_run(service, run_id, kill_grace_s=kill_grace_s, current=current)
            done.append(run_id)
    return done


async def _reattach(
    service: RunService, supervisor: Supervisor, run_id: str, current: _Attempt
) -> bool:
    """Whether the attempt's executor follows it again (then the supervisor watches it)."""
    handle = current.handle
    executor = supervisor.executor
    if handle is None or current.attempt is None or handle.get("executor") != executor.name:
        return False
    [created] = await service.store.read_run(run_id, 0, limit=1)
    try:
        job = runspec.job_for(run_id, created.data, current.attempt, None, supervisor.job_options)
        attempt = await executor.reattach(job, handle, current.known)
    except Exception:
        log.exception("run %s: the %s executor could not reattach", run_id, executor.name)
        return False
    if attempt is None:
        return False
    await supervisor.adopt(run_id, attempt)
    log.warning("run %s: reattached to its %s attempt %s", run_id, executor.name, handle)
    return True


async def reconcile_run(
    service: RunService,
    run_id: str,
    *,
    kill_grace_s: float = 10.0,
    current: _Attempt | None = None,
) -> int:
    """Recover one run's lost events and end it; returns how many events were recovered."""
    if current is None:
        current = await _current_attempt(service, run_id)
    if current.pid is not None and current.pid_started is not None:
        await _end_orphan(current.pid, current.pid_started, kill_grace_s)
    summary = service.get(run_id)
    user_stop = summary.run.stopping and summary.stop_reason is None
    recovered = await recover_spool(service, run_id, current, server_gone=not user_stop)
    if service.get(run_id).state is State.TRAINING:
        await service.record(run_id, [_ending(service.get(run_id), user_stop)])
    log.info("run %s: reconciled, %d event(s) recovered from the log folder", run_id, recovered)
    return recovered


async def recover_spool(
    service: RunService,
    run_id: str,
    current: _Attempt | None = None,
    *,
    server_gone: bool = False,
) -> int:
    """Append the current attempt's events that its spool (`events.jsonl`) holds and the
    store lacks, in file order; returns how many. Also used by the supervisor when a
    child dies: it may have written a batch to its spool and died before sending it.
    With `server_gone` (reconciliation), a recovered `stopped` is marked `interrupted`:
    the trainer stopped because its server went away."""
    if current is None:
        current = await _current_attempt(service, run_id)
    recovered = 0
    log_path = service.get(run_id).log_path
    if log_path and current.attempt is not None:
        chunk: list[NewEvent] = []
        for new in _missing(Path(log_path) / EVENTS_FILE, run_id, current):
            if new.type == ev.STOPPED and server_gone:
                chunk.append(NewEvent(new.type, {**new.data, "interrupted": True}, new.ts))
            else:
                chunk.append(new)
            if len(chunk) >= _CHUNK:
                recovered += len(await service.record(run_id, chunk))
                chunk = []
        recovered += len(await service.record(run_id, chunk))
    return recovered


def _ending(summary: RunSummary, user_stop: bool) -> NewEvent:
    """How a run the file did not end is ended: the Stopped a user had asked for (as the
    supervisor does when a stopping child dies), else interrupted."""
    if not user_stop:
        return NewEvent(ev.FAILED, dict(INTERRUPTED), time.time())
    latest = summary.resumable_from
    data = {
        "iteration": summary.iteration,
        "checkpoint": latest["path"] if latest else None,
        "forced": True,
        "message": "the server stopped before the trainer confirmed the stop",
    }
    return NewEvent(ev.STOPPED, data, time.time())


async def auto_resume(commands: Commands) -> dict[str, Outcome]:
    """Resume every run that a server stop or crash interrupted (its summary says so),
    oldest interruption first, through the command path and its concurrency limit. A run
    that cannot start now stays as it is, with a warning in the server's log and, as a
    `log` event, on the run (the browser shows it). Each resume carries the id
    `auto-resume:<run>:<attempt>`, so it happens at most once."""
    waiting = [
        summary
        for summary in commands.service.runs.values()
        if summary.interrupted is not None and "resume" in summary.run.legal_commands()
    ]
    waiting.sort(key=lambda summary: (summary.interrupted or {}).get("at") or 0.0)
    outcomes: dict[str, Outcome] = {}
    for summary in waiting:
        run_id = summary.run.run_id
        command_id = f"auto-resume:{run_id}:{summary.attempts + 1}"
        outcome = outcomes[run_id] = await commands.run("resume", run_id, None, command_id)
        if outcome.ok:
            log.warning("run %s: resumed after the server restart", run_id)
        else:
            why = outcome.body["error"]["message"]
            log.warning("run %s: not resumed automatically: %s", run_id, why)
            await _tell_run(commands.service, run_id, f"not resumed automatically: {why}")
    return outcomes


async def _tell_run(service: RunService, run_id: str, message: str) -> None:
    """A warning `log` event on the run itself, where the browser shows it (the server's
    log alone is read by nobody who looks at the run)."""
    data = {"level": "warning", "message": message, "source": "auto-resume"}
    await service.record(run_id, [NewEvent(ev.LOG, data, time.time())])


async def _current_attempt(service: RunService, run_id: str) -> _Attempt:
    """The current attempt, as the run's summary keeps it."""
    summary = service.get(run_id)
    if summary.attempt_version is None:
        return _Attempt()
    handle = dict(summary.launch) if summary.launch else None
    pid = handle.get("pid") if handle and handle.get("executor") == "local" else None
    return _Attempt(
        attempt=summary.attempts,
        started_ts=summary.attempt_ts or 0.0,
        known_max=summary.attempt_n,
        pid=pid if isinstance(pid, int) else None,
        pid_started=handle.get("pid_started") if pid is not None and handle else None,
        handle=handle,
    )


def _missing(path: Path, run_id: str, current: _Attempt) -> Iterator[NewEvent]:
    """The file's events of the current attempt that the database lacks, in file order."""
    try:
        lines = _tail_after(path, run_id, current)
    except OSError as exc:
        log.warning("run %s: cannot read %s: %s", run_id, path, exc)
        return
    for record in lines:
        type_, data, ts = record["type"], record["data"], record["ts"]
        n = data["n"]
        if n <= current.known_max:
            continue
        current.known_max = n
        yield NewEvent(type_, data, ts)
        if type_ in FINAL_TYPES:
            return  # the attempt ended there


def _tail_after(path: Path, run_id: str, current: _Attempt) -> list[dict[str, Any]]:
    """The current attempt's lines after its stored ones, in file order, read backwards
    from the end of the file: only as far back as the first line already stored (or of an
    earlier attempt), so the cost is what the database lacks, not the attempt's length."""
    found: list[dict[str, Any]] = []
    for line in _lines_backwards(path):
        record = _parse_line(line)
        if record is None or record.get("run_id", run_id) != run_id:
            continue  # a line torn by the crash, or another run's (a shared log folder)
        data, ts = record["data"], record["ts"]
        n = data.get("n")
        if ts < current.started_ts:
            break  # written before this attempt began: everything before it is older still
        if data.get("attempt") != current.attempt or not isinstance(n, int):
            continue
        if n <= current.known_max:
            break  # stored already, and so is everything before it
        found.append(record)
    found.reverse()
    return found


def _lines_backwards(path: Path, block: int = 1 << 20) -> Iterator[str]:
    """A file's lines, last first (the last one may be torn)."""
    with open(path, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines[0]  # may continue in the block before
            for line in reversed(lines[1:]):
                if line:
                    yield line.decode("utf-8", errors="replace")
        if rest:
            yield rest.decode("utf-8", errors="replace")


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    ok = (
        record.get("type") in ev.TRAINER_TYPES
        and isinstance(record.get("data"), dict)
        and isinstance(record.get("ts"), int | float)
    )
    return record if ok else None


async def _end_orphan(pid: int, started: int, grace_s: float) -> None:
    """Stop a trainer that outlived its server: SIGTERM, then SIGKILL after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if process_start_time(pid) != started:
            return  # gone (or the pid now belongs to another process): leave it alone
        log.warning("trainer process %d outlived its server: sending %s", pid, sig.name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        # Not our child: there is nothing to wait on but its /proc entry.
        while time.monotonic() < deadline and process_start_time(pid) == started:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
