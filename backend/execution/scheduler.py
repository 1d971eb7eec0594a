"""The one scheduler: which devices a run trains on, and where queued runs go.

Slots are devices. By default there is one slot per visible GPU (found without torch:
`CUDA_VISIBLE_DEVICES`, else `nvidia-smi -L`, else the driver's /proc entries) and one CPU
slot when there is none; `trainboard serve --max-concurrent N` makes N slots instead
(cycling over the GPUs, or N CPU slots). A run that trains with DDP on k GPUs
(`SYSTEM.NUM_GPUS` = k > 1 with `SYSTEM.PARALLEL: DDP`, `SYSTEM.DISTRIBUTED` or
`DATASET.DISTRIBUTED`) takes k slots at once; any other run takes one.

`Scheduler` only decides (synchronously, so two starts cannot both take the last slot);
the supervisor starts, and the queue's order is the runs' `queue_rank`
(`RunService.queue`): `rank_after` / `rank_at` compute the ranks the queue events record.
Torch-free.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.execution.executor import Slot

CPU = "cpu"


class NoRoom(Exception):
    """A run needs more devices than this server has: it could never start."""

    def __init__(self, need: int, have: int) -> None:
        self.need, self.have = need, have
        super().__init__(
            f"the run trains with DDP on {need} GPUs and this server has {have} slot(s); "
            f"lower SYSTEM.NUM_GPUS to at most {have}, or start the server with more GPUs"
        )


class Scheduler:
    """A fixed set of slots and which run holds each."""

    def __init__(self, slots: Sequence[Slot]) -> None:
        if not slots:
            raise ValueError("a scheduler needs at least one slot")
        self.slots = list(slots)
        self._holders: dict[int, str] = {}  # slot index -> run id

    @property
    def gpu(self) -> bool:
        return any(d != CPU for slot in self.slots for d in slot.devices)

    def need(self, config: Mapping[str, Any]) -> int:
        """How many slots a run with this (resolved) config takes."""
        if not self.gpu:
            return 1  # on the CPU, a run (even a gloo DDP run) takes the one CPU slot
        system = config.get("SYSTEM") or {}
        dataset = config.get("DATASET") or {}
        gpus = int(system.get("NUM_GPUS") or 0)
        ddp = (
            system.get("PARALLEL") == "DDP"
            or bool(system.get("DISTRIBUTED"))
            or bool(dataset.get("DISTRIBUTED"))
        )
        return gpus if ddp and gpus > 1 else 1

    def check(self, need: int) -> None:
        """NoRoom if `need` slots could never be free at once."""
        if need > len(self.slots):
            raise NoRoom(need, len(self.slots))

    def free(self) -> list[Slot]:
        return [s for s in self.slots if s.index not in self._holders]

    def holds(self, run_id: str) -> bool:
        return run_id in self._holders.values()

    def take(self, run_id: str, need: int = 1) -> Slot | None:
        """The slot `run_id` now holds (`need` slots merged into one), or None if not
        enough are free."""
        self.check(need)
        free = self.free()
        if len(free) < need:
            return None
        taken = free[:need]
        for slot in taken:
            self._holders[slot.index] = run_id
        devices = tuple(dict.fromkeys(d for slot in taken for d in slot.devices))
        return Slot(taken[0].index, devices)

    def release(self, run_id: str) -> None:
        for index in [i for i, holder in self._holders.items() if holder == run_id]:
            del self._holders[index]

    def table(self) -> list[dict[str, Any]]:
        """`GET /api/queue`'s slots: index, devices, the run holding it (or None)."""
        return [
            {"index": s.index, "devices": list(s.devices), "run_id": self._holders.get(s.index)}
            for s in self.slots
        ]


def default_slots(
    max_concurrent: int | None = None, gpus: Sequence[str] | None = None
) -> list[Slot]:
    """One slot per GPU (one CPU slot without), or `max_concurrent` slots when given."""
    gpus = visible_gpus() if gpus is None else list(gpus)
    devices = [f"cuda:{g}" for g in gpus] or [CPU]
    count = len(devices) if max_concurrent is None else max_concurrent
    if count < 1:
        raise ValueError("max_concurrent must be at least 1")
    return [Slot(i, (devices[i % len(devices)],)) for i in range(count)]


def visible_gpus() -> list[str]:
    """The GPUs this server may give its children, as `CUDA_VISIBLE_DEVICES` names them
    ("0", "1", or UUIDs), without CUDA or torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        names = [n.strip() for n in env.split(",") if n.strip()]
        # CUDA stops at the first invalid entry ("-1" hides every GPU).
        valid = []
        for name in names:
            if name.startswith("-"):
                break
            valid.append(name)
        return valid
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None and listed.returncode == 0:
        return [
            str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")
        ]
    root = Path("/proc/driver/nvidia/gpus")
    try:
        return [str(i) for i, _ in enumerate(sorted(root.iterdir()))] if root.is_dir() else []
    except OSError:
        return []


# --- ranks: the queue's order ----------------------------------------------------------


def rank_after(ranks: Sequence[float]) -> float:
    """A rank after every queued run: the default of a `queued` event."""
    return max(ranks, default=0.0) + 1.0


def rank_at(ranks: Sequence[float], position: int) -> float:
    """The rank that puts a run at 1-based `position` among the queued runs whose ranks
    (in queue order, the run itself left out) are `ranks`; past the end is the end."""
    if not ranks:
        return 1.0
    if position <= 1:
        return ranks[0] - 1.0
    if position > len(ranks):
        return ranks[-1] + 1.0
    return (ranks[position - 2] + ranks[position - 1]) / 2.0
