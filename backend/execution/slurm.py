"""The Slurm executor: each attempt of a run is one Slurm batch job.

`SlurmExecutor(partition, account, time, extra, python).launch(job, slot)` writes the
job to `<log_path>/job.json` (`TrainJob.to_json`) and a batch script beside it, and
submits it with `sbatch --parsable` (Slurm's own CLI: we need the job id at once, no
pickled callables cross to the cluster, and the job runs our own entry point,
`python -m backend.trainer.batch <log_path>/job.json`, from the run's log folder; submitit
pickles a callable and owns its own folder layout, which fits none of that). Resources
come from the config: `SYSTEM.NUM_GPUS` → `--gpus-per-node` with as many tasks per node
(one DDP rank per GPU, started by `srun`), `SYSTEM.NUM_CPUS` → `--cpus-per-task`; the
server's `--slurm-*` options add the partition, account, time limit and any other
`sbatch` arguments. The job's stdout/stderr go to `slurm-<id>.out` / `.err` in the log
folder. Jobs are submitted `--no-requeue`: a requeued job would repeat its attempt's
event numbers; a preempted run ends in Error and is resumed from its checkpoint instead.

The attempt's events come from following its spool (`backend.execution.follow`), each
`(attempt, n)` once. Its state comes from polling `squeue -h -j ID -o "%T|%r|%Q"` about
once a second, and `scontrol show job` for the end state and exit code once squeue no
longer lists it (accounting may be off, so `sacct` is not used); every change becomes a
`job_state` fact with a hint (PENDING with Slurm's reason and queue position, RUNNING,
PREEMPTED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, CANCELLED, ...).

Stopping: `request_stop` and `terminate` send `scancel --signal=TERM --full` (the trainer
checkpoints and reports `stopped`); a job still PENDING is simply cancelled. `kill` sends
`scancel --signal=KILL --full`, then `scancel`. A `stopped` that nobody here asked for
(Slurm's own SIGTERM before a time limit, a preemption, a `scancel` behind Trainboard's
back) is held until the job's end state is known and recorded as `failed` with a hint
saying what happened (its checkpoint stays resumable).

`reattach(job, {"executor": "slurm", "job_id"}, known)` follows a job again after a
server restart: the spool from its start, skipping the event numbers already stored.
Torch-free, like the whole server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import events as ev
from backend.execution.executor import ExitStatus, Slot
from backend.execution.follow import SpoolFollower
from backend.execution.job import EVENTS_FILE, TrainJob, WireEvent

log = logging.getLogger(__name__)

NAME = "slurm"
JOB_FILE = "job.json"
SCRIPT_FILE = "slurm-job.sh"
POLL_S = 1.0  # squeue
SPOOL_POLL_S = 0.2  # the spool file (cheap)
COMMAND_TIMEOUT_S = 30.0  # one sbatch/squeue/scancel call
# After the job has ended, how long its last lines may take to appear on a shared
# filesystem (NFS attribute caching) before the attempt is declared ended without them.
SPOOL_GRACE_S = 5.0

ACTIVE = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
    | {"REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
)
# States that say the job's program ran (CANCELLED does not: it may never have started).
RAN = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "COMPLETED", "FAILED", "TIMEOUT"}) | {
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
}
# States that mean Slurm ended the job, not the trainer.
ENDED_BY_SLURM = frozenset(
    {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL"}
)


class SlurmError(RuntimeError):
    """A Slurm command failed; the message says what to do."""


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None


@dataclass(frozen=True)
class JobState:
    """One reading of a job's state."""

    state: str  # Slurm's, e.g. PENDING, RUNNING, COMPLETED; UNKNOWN once Slurm forgot it
    reason: str | None = None
    position: int | None = None  # 1-based among the partition's pending jobs
    exit_code: int | None = None  # once ended: the exit code, or -signal

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


# --- what each state means to a user ---------------------------------------------------------

_PENDING_HINTS = {
    "Resources": "waiting for free resources (CPUs, GPUs or memory) on the partition",
    "Priority": "jobs of higher priority are ahead in the queue",
    "Dependency": "waiting for the job it depends on",
    "ReqNodeNotAvail": "the nodes it asked for are down, drained or reserved",
    "PartitionTimeLimit": "--slurm-time is longer than the partition allows: lower it",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionConfig": (
        "no node of the partition has what it asks for (CPUs, GPUs, memory): lower "
        "SYSTEM.NUM_CPUS or SYSTEM.NUM_GPUS, or choose another --slurm-partition; it will "
        "not start as it is"
    ),
    "BadConstraints": (
        "no node satisfies its constraints: check --slurm-extra, SYSTEM.NUM_CPUS and "
        "SYSTEM.NUM_GPUS; it will not start as it is"
    ),
    "QOSMaxJobsPerUserLimit": "you have as many jobs running as your QOS allows",
    "AssocGrpCPULimit": "your account's CPU limit is reached",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "JobHeldUser": "held by a user: `scontrol release JOBID` lets it run",
    "JobHeldAdmin": "held by an administrator",
    "BeginTime": "its start time has not come yet",
}


def _pending_hint(reason: str | None, job_id: str) -> str:
    if reason is None:
        return "submitted to Slurm; waiting for its scheduler"
    if reason in _PENDING_HINTS:
        return f"queued by Slurm: {_PENDING_HINTS[reason]}"
    return f"queued by Slurm ({reason}); `squeue -j {job_id} --start` says more"


def explain_state(state: str, job_id: str) -> tuple[str | None, str | None]:
    """(message, hint) for a job in `state` (None, None when there is nothing to say)."""
    resume = "resume it to continue from the last checkpoint"
    table: dict[str, tuple[str, str]] = {
        "CANCELLED": (
            f"the Slurm job {job_id} was cancelled outside Trainboard (scancel or an "
            "administrator)",
            f"{resume}; stop runs from Trainboard so they end Stopped",
        ),
        "TIMEOUT": (
            f"the Slurm job {job_id} reached its time limit",
            f"{resume}; a longer --slurm-time (or a shorter SOLVER.ITERATION_TOTAL) avoids it",
        ),
        "PREEMPTED": (
            f"the Slurm job {job_id} was preempted by a job of higher priority",
            resume,
        ),
        "NODE_FAIL": (f"the node running Slurm job {job_id} failed", resume),
        "BOOT_FAIL": (f"the node for Slurm job {job_id} failed to boot", resume),
        "DEADLINE": (f"the Slurm job {job_id} reached its deadline", resume),
        "OUT_OF_MEMORY": (
            f"the Slurm job {job_id} ran out of memory",
            "lower SOLVER.SAMPLES_PER_BATCH or MODEL.INPUT_SIZE, or ask for more memory "
            "with --slurm-extra '--mem=...'; then resume it",
        ),
        "FAILED": (
            f"the Slurm job {job_id} failed",
            "see slurm-JOBID.err and train.log in the run's log folder",
        ),
        "UNKNOWN": (
            f"Slurm no longer knows job {job_id} (it ended long ago, or the controller lost it)",
            f"see slurm-{job_id}.out in the run's log folder; {resume}",
        ),
    }
    message, hint = table.get(state, (None, None))
    return message, None if hint is None else hint.replace("JOBID", job_id)


# --- the executor ---------------------------------------------------------------------------


def ranks(job: TrainJob) -> int:
    """The DDP processes (Slurm tasks) of an attempt: `options["world_size"]` when given,
    else NUM_GPUS when PyTC's DDP switches are on (`SYSTEM.PARALLEL: DDP`,
    `SYSTEM.DISTRIBUTED`, `DATASET.DISTRIBUTED`), else one (as the trainer decides,
    `backend.trainer.distributed.ddp_processes`, which this torch-free module mirrors)."""
    if job.options.get("world_size"):
        return max(1, int(job.options["world_size"]))
    system, dataset = job.config.get("SYSTEM", {}), job.config.get("DATASET", {})
    gpus = int(system.get("NUM_GPUS") or 0)
    ddp = (
        str(system.get("PARALLEL", "DP")) == "DDP"
        or bool(system.get("DISTRIBUTED", False))
        or bool(dataset.get("DISTRIBUTED", False))
    )
    return gpus if gpus > 1 and ddp else 1


class SlurmExecutor:
    """Runs each attempt as a Slurm batch job."""

    name = NAME

    def __init__(
        self,
        partition: str | None = None,
        account: str | None = None,
        time: str | None = None,
        extra: str | Sequence[str] = (),
        python: str = sys.executable,
        *,
        poll_s: float = POLL_S,
        spool_poll_s: float = SPOOL_POLL_S,
    ) -> None:
        self.partition = partition
        self.account = account
        self.time = time
        self.extra = shlex.split(extra) if isinstance(extra, str) else list(extra)
        self.python = python
        self.poll_s = poll_s
        self.spool_poll_s = spool_poll_s

    def sbatch_args(self, job: TrainJob) -> list[str]:
        """The `sbatch` arguments of one attempt (without the script)."""
        system = job.config.get("SYSTEM", {})
        gpus = int(system.get("NUM_GPUS") or 0)
        cpus = max(1, int(system.get("NUM_CPUS") or 0))
        log_path = job.log_path
        args = [
            "--parsable",
            f"--job-name=trainboard-{job.run_id}",
            f"--chdir={log_path}",
            f"--output={log_path}/slurm-%j.out",
            f"--error={log_path}/slurm-%j.err",
            "--no-requeue",
            "--nodes=1",
            f"--ntasks-per-node={ranks(job)}",
            f"--cpus-per-task={cpus}",
        ]
        if gpus:
            args.append(f"--gpus-per-node={gpus}")
        for flag, value in (
            ("--partition", self.partition),
            ("--account", self.account),
            ("--time", self.time),
        ):
            if value:
                args.append(f"{flag}={value}")
        return args + self.extra

    def script(self, job: TrainJob) -> str:
        """The batch script: the trainer entry, under `srun` when there are several ranks."""
        entry = [self.python, "-m", "backend.trainer.batch", str(Path(job.log_path) / JOB_FILE)]
        if ranks(job) > 1:
            entry = ["srun", "--kill-on-bad-exit=1", *entry]
        return (
            "#!/bin/bash\n"
            f"# Trainboard run {job.run_id}, attempt {job.attempt}\n"
            f"cd {shlex.quote(job.log_path)}\n"
            f"exec {shlex.join(entry)}\n"
        )

    async def launch(self, job: TrainJob, slot: Slot) -> SlurmAttempt:
        log_dir = Path(job.log_path)
        script = log_dir / SCRIPT_FILE
        offset = self._write_job_files(job, script)
        out = await run_slurm(["sbatch", *self.sbatch_args(job), str(script)])
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch answered {out!r} instead of a job id")
        log.info("run %s: attempt %d submitted as Slurm job %s", job.run_id, job.attempt, job_id)
        follower = SpoolFollower(log_dir / EVENTS_FILE, job.attempt, offset=offset)
        return SlurmAttempt(self, job, job_id, follower)

    def _write_job_files(self, job: TrainJob, script: Path) -> int:
        """job.json and the batch script; the spool's size before this attempt."""
        script.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(script.parent / JOB_FILE, job.to_json())
        _write_atomically(script, self.script(job).encode())
        return SpoolFollower(script.parent / EVENTS_FILE, job.attempt).size()

    async def reattach(
        self, job: TrainJob, handle: Mapping[str, Any], known: set[int]
    ) -> SlurmAttempt | None:
        job_id = str(handle.get("job_id", ""))
        if handle.get("executor") != NAME or not job_id.isdigit():
            return None
        follower = SpoolFollower(Path(job.log_path) / EVENTS_FILE, job.attempt, known=known)
        log.info("run %s: following Slurm job %s again", job.run_id, job_id)
        return SlurmAttempt(self, job, job_id, follower)

    async def query(self, job_id: str) -> JobState:
        """The job's state now: squeue while Slurm lists it, then scontrol."""
        try:
            out = await run_slurm(["squeue", "-h", "-j", job_id, "-o", "%T|%r|%Q|%P"])
        except SlurmError:
            out = ""  # "Invalid job id": ended and purged, or never known
        line = out.strip().splitlines()[0] if out.strip() else ""
        if line:
            state, reason, _, partition = ([*line.split("|"), "", "", ""])[:4]
            position = None
            if state == "PENDING":
                position = await self._position(job_id, partition)
            return JobState(state, None if reason in ("None", "") else reason, position)
        return await self._ended(job_id)

    async def _position(self, job_id: str, partition: str) -> int | None:
        args = ["squeue", "-h", "-t", "PENDING", "-o", "%i", "--sort=-p,i"]
        if partition:
            args.append(f"--partition={partition}")
        try:
            ids = (await run_slurm(args)).split()
        except SlurmError:
            return None
        return ids.index(job_id) + 1 if job_id in ids else None

    async def _ended(self, job_id: str) -> JobState:
        try:
            out = await run_slurm(["scontrol", "show", "job", "-o", job_id])
        except SlurmError:
            return JobState("UNKNOWN")
        fields = dict(
            item.split("=", 1) for item in out.split() if "=" in item and not item.startswith("=")
        )
        state = fields.get("JobState", "UNKNOWN")
        reason = fields.get("Reason")
        code, _, sig = fields.get("ExitCode", "").partition(":")
        exit_code = None
        if code.isdigit():
            exit_code = -int(sig) if sig.isdigit() and int(sig) else int(code)
        return JobState(state, None if reason in (None, "None") else reason, None, exit_code)


# --- one attempt ----------------------------------------------------------------------------


class SlurmAttempt:
    """One Slurm job: its spool followed, its state polled, scancel to stop it."""

    def __init__(
        self, executor: SlurmExecutor, job: TrainJob, job_id: str, follower: SpoolFollower
    ) -> None:
        self.executor = executor
        self.job = job
        self.job_id = job_id
        self.handle: Mapping[str, Any] = {"executor": NAME, "job_id": job_id}
        self.follower = follower
        self.state: JobState | None = None
        self.stop_requested = False
        self.ran = False  # the job ran: it wrote events or Slurm said RUNNING
        self._status: ExitStatus | None = None
        self._signals: set[asyncio.Task[None]] = set()

    async def batches(self) -> AsyncIterator[list[WireEvent]]:
        held: WireEvent | None = None  # a `stopped` nobody here asked for
        next_poll = 0.0
        ended_at: float | None = None
        while True:
            events = self.follower.read()
            if events and events[-1][0] == ev.STOPPED and not self.stop_requested:
                held = events.pop()
            self.ran = self.ran or bool(events)
            if time.monotonic() >= next_poll or held is not None:
                next_poll = time.monotonic() + self.executor.poll_s
                fact = await self._poll()
                # After a final event passed on, a fact could not be stored: the run ended.
                if fact is not None and (held is not None or not self.follower.ended):
                    events.append(fact)
            if events:
                yield events
            assert self.state is not None
            if not self.state.active:
                if ended_at is None:
                    ended_at = time.monotonic()
                    continue  # read the spool once more now that the job has ended
                done = self.follower.ended or held is not None or not self.ran
                if done or time.monotonic() - ended_at >= SPOOL_GRACE_S:
                    break
            await asyncio.sleep(self.executor.spool_poll_s)
        if held is not None:
            yield [self._settle_held(held)]
        if self._signals:  # a scancel still under way: let it finish with the attempt
            await asyncio.wait(set(self._signals), timeout=COMMAND_TIMEOUT_S)
        self._status = self._exit_status()

    async def exit_status(self) -> ExitStatus:
        if self._status is None:
            self._status = self._exit_status()
        return self._status

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.state is None or self.state.state == "PENDING":
            self._scancel([])  # nothing is running yet: a signal would wait for it to start
        else:
            self._scancel(["--signal=TERM", "--full"])

    def terminate(self) -> None:
        self.stop_requested = True
        self._scancel(["--signal=TERM", "--full"])

    def kill(self) -> None:
        self.stop_requested = True
        self._scancel(["--signal=KILL", "--full"], then=[])

    # --- inside ---------------------------------------------------------------------------

    async def _poll(self) -> WireEvent | None:
        """Read the job's state; a `job_state` fact when it changed."""
        now = await self.executor.query(self.job_id)
        before, self.state = self.state, now
        self.ran = self.ran or now.state in RAN
        if before is not None and (before.state, before.reason, before.position) == (
            now.state,
            now.reason,
            now.position,
        ):
            return None
        if now.state == "COMPLETED" or (now.state == "UNKNOWN" and before is not None):
            return None  # the spool says how it ended; nothing to add
        data: dict[str, Any] = {"executor": NAME, "job_id": self.job_id, "state": now.state}
        if now.reason:
            data["reason"] = now.reason
        if now.position is not None:
            data["position"] = now.position
        if now.state == "PENDING":
            data["hint"] = _pending_hint(now.reason, self.job_id)
        elif not (now.state == "CANCELLED" and self.stop_requested):
            message, hint = explain_state(now.state, self.job_id)
            data |= {k: v for k, v in (("message", message), ("hint", hint)) if v}
        return (ev.JOB_STATE, data, time.time())

    def _settle_held(self, stopped: WireEvent) -> WireEvent:
        """A `stopped` no one here asked for: `failed` when Slurm ended the job."""
        _, data, ts = stopped
        state = self.state.state if self.state else "UNKNOWN"
        if self.stop_requested or state not in ENDED_BY_SLURM:
            return stopped
        message, hint = explain_state(state, self.job_id)
        failed = {
            "message": f"{message}; the trainer saved a checkpoint first",
            "hint": hint,
            "iteration": data.get("iteration"),
            "checkpoint": data.get("checkpoint"),
            "slurm_state": state,
            "attempt": data.get("attempt"),
            "n": data.get("n"),
        }
        return (ev.FAILED, failed, ts)

    def _exit_status(self) -> ExitStatus:
        state = self.state or JobState("UNKNOWN")
        if state.state == "COMPLETED" or (self.stop_requested and state.state == "CANCELLED"):
            return ExitStatus(state.exit_code)
        message, hint = explain_state(state.state, self.job_id)
        if state.state == "FAILED" and state.exit_code is not None:
            message = f"{message} (exit code {state.exit_code})"
        return ExitStatus(state.exit_code, message, hint)

    def _scancel(self, options: list[str], then: list[str] | None = None) -> None:
        """Send scancel (and then another) in the background: never raises, never blocks
        the loop. Nothing once the attempt is over (its job id may be reused one day)."""
        if self._status is not None:
            return
        commands = [["scancel", *options, self.job_id]]
        if then is not None:
            commands.append(["scancel", *then, self.job_id])
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with contextlib.suppress(OSError):
                subprocess.Popen(commands[0], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
        task = loop.create_task(self._scancel_now(commands))
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)

    async def _scancel_now(self, commands: list[list[str]]) -> None:
        for argv in commands:
            try:
                await run_slurm(argv)
            except (SlurmError, OSError) as exc:
                log.warning("Slurm job %s: %s", self.job_id, exc)


# --- `trainboard serve --executor slurm` ----------------------------------------------------


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """`--executor {local,slurm}` and the `--slurm-*` options of `trainboard serve`."""
    parser.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="where runs train: child processes of this server (local, the default) or "
        "Slurm batch jobs (slurm; the log folders must be on a filesystem the nodes share)",
    )
    group = parser.add_argument_group("Slurm (with --executor slurm)")
    group.add_argument("--slurm-partition", metavar="P", help="sbatch --partition")
    group.add_argument("--slurm-account", metavar="A", help="sbatch --account")
    group.add_argument("--slurm-time", metavar="T", help="sbatch --time (e.g. 04:00:00)")
    group.add_argument(
        "--slurm-extra",
        metavar="ARGS",
        default="",
        help='more sbatch arguments, as one shell-quoted string (e.g. "--qos=high --mem=64G")',
    )


def executor_from_args(args: argparse.Namespace) -> SlurmExecutor | None:
    """The executor the options ask for (None: local). SlurmError with what to do when
    slurm is asked for and cannot work here."""
    slurm_options = (args.slurm_partition, args.slurm_account, args.slurm_time, args.slurm_extra)
    if args.executor != NAME:
        if any(slurm_options):
            raise SlurmError("the --slurm-* options need --executor slurm")
        return None
    if not slurm_available():
        raise SlurmError(
            "--executor slurm needs Slurm's sbatch on PATH, and there is none: run the "
            "server on a login node of the cluster (or install Slurm's client tools, "
            "Debian: slurm-client), or use --executor local"
        )
    try:
        extra = shlex.split(args.slurm_extra or "")
    except ValueError as exc:
        raise SlurmError(f"--slurm-extra is not a valid shell-quoted string: {exc}") from None
    return SlurmExecutor(args.slurm_partition, args.slurm_account, args.slurm_time, extra)


# --- helpers --------------------------------------------------------------------------------


async def run_slurm(argv: list[str], timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run one Slurm command; its stdout, or SlurmError with its stderr."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise SlurmError(
            f"{argv[0]} is not on PATH: install Slurm's client tools on this machine "
            "(Debian: slurm-client), or serve with --executor local"
        ) from None
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        # Reaped either way: a process left to the garbage collector outlives its loop.
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise SlurmError(f"{argv[0]} did not answer within {timeout_s:.0f} s") from None
    if process.returncode != 0:
        text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise SlurmError(f"{shlex.join(argv[:1])} failed: {text}")
    return out.decode(errors="replace")


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    if path.suffix == ".sh":
        os.chmod(partial, 0o755)
    partial.replace(path)
