"""The executor interface: where and how one attempt of a run executes.

The supervisor owns a run's lifecycle (slots, recording, the stop escalation, settling how
an attempt ended); an executor owns the mechanics of one attempt somewhere — a spawned
child on this machine (`local`), a Slurm batch job (`slurm`). The supervisor only ever
talks to the two Protocols below, so both executors pass the same contract suite
(`tests/execution/contract.py`).

Guarantees an executor gives:
- `Attempt.batches()` yields the attempt's events in order, each `(attempt, n)` once, until
  the attempt has ended and everything it wrote has been read; then it is exhausted.
- `Attempt.exit_status()` is known once `batches()` is exhausted.
- `request_stop`, `terminate` and `kill` never raise and never block the event loop; they
  may be called in any order, any number of times, also after the attempt has ended.
- `Attempt.handle` is plain JSON, recorded in the `log` event at launch, and is enough for
  `Executor.reattach` to find the attempt again after a server restart.

Torch-free, like the whole server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from backend.execution.job import TrainJob, WireEvent

__all__ = ["Attempt", "Executor", "ExitStatus", "Slot", "TrainJob", "WireEvent"]


class ExitStatus(NamedTuple):
    """How an attempt's process ended, as far as the executor knows."""

    code: int | None  # the process's exit code (negative: killed by that signal)
    message: str | None = None  # when the executor knows why (Slurm: TIMEOUT, NODE_FAIL, ...)
    hint: str | None = None  # what the user can do about it; wins over `explain_exit`'s


@dataclass(frozen=True)
class Slot:
    """A share of this server's devices that one attempt trains on."""

    index: int
    devices: tuple[str, ...]  # ("cuda:0",), ("cuda:0", "cuda:1") or ("cpu",)

    @property
    def visible_devices(self) -> str | None:
        """`CUDA_VISIBLE_DEVICES` for a child on this slot ("0,1"); None on the CPU slot."""
        gpus = [d.partition(":")[2] for d in self.devices if d.startswith("cuda:")]
        return ",".join(gpus) if gpus else None


class Attempt(Protocol):
    """One attempt of one run, running somewhere; the supervisor watches it."""

    # JSON, recorded in the `log` event at launch and read back by reconcile:
    # {"executor": "local", "pid", "pid_started"} or {"executor": "slurm", "job_id"}.
    handle: Mapping[str, Any]

    def batches(self) -> AsyncIterator[list[WireEvent]]:
        """The attempt's events, in order, each (attempt, n) once, until it has ended and
        all it wrote is read (also yields `job_state` facts made by the executor)."""
        ...

    async def exit_status(self) -> ExitStatus:
        """How the attempt ended; call it once `batches()` is exhausted."""
        ...

    def request_stop(self) -> None:
        """Graceful stop: checkpoint, report `stopped`, exit (local: the stop flag;
        slurm: `scancel --signal=TERM --full`)."""
        ...

    def terminate(self) -> None:
        """Escalation step 1 (SIGTERM): the trainer still treats it as a graceful stop."""
        ...

    def kill(self) -> None:
        """Escalation step 2 (SIGKILL / `scancel --signal=KILL`): no checkpoint."""
        ...


class Executor(Protocol):
    """Launches attempts and finds them again after a server restart."""

    name: str  # "local" | "slurm": the `executor` of every handle it makes

    async def launch(self, job: TrainJob, slot: Slot) -> Attempt:
        """Start one attempt on `slot`; raises (any Exception, with a message for the
        user) when it cannot, and the supervisor records `failed`."""
        ...

    async def reattach(
        self, job: TrainJob, handle: Mapping[str, Any], known: set[int]
    ) -> Attempt | None:
        """After a server restart, follow the attempt `handle` names again, skipping
        events whose n is in `known` (already stored), so nothing is lost or duplicated.
        None when it cannot be followed (local: the pipe died with the server; reconcile
        then ends the orphan)."""
        ...
