"""Where training runs: the device, mixed precision and CPU threads from SYSTEM/MODEL keys.

- SYSTEM.NUM_GPUS > 0 and CUDA available: the first GPU (Trainboard trains on one device;
  asking for more than exist is a warning, not an error).
- Otherwise the CPU, with a warning when GPUs were asked for but none is usable.
- MODEL.MIXED_PRECESION (PyTC's spelling): float16 autocast with a GradScaler on CUDA only;
  on the CPU it is ignored with a note, because CPU autocast is bfloat16 and rarely faster.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

Config = Mapping[str, Any]


@dataclass(frozen=True)
class DeviceChoice:
    """The device, whether mixed precision is on, and (level, message) notes for `log`."""

    device: torch.device
    amp: bool
    threads: int
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{self.device.index or 0} ({torch.cuda.get_device_name(self.device)})"
        return f"cpu ({self.threads} threads)"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's context: float16 autocast under AMP, else nothing."""
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        # A disabled scaler is a transparent pass-through: one code path for both cases.
        return torch.amp.GradScaler("cuda", enabled=self.amp)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_device(cfg: Config, *, threads: int | None = None) -> DeviceChoice:
    """Pick the device for SYSTEM.NUM_GPUS and MODEL.MIXED_PRECESION, and set CPU threads."""
    notes: list[tuple[str, str]] = []
    wanted = int(cfg["SYSTEM"]["NUM_GPUS"])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted > 0 and available > 0:
        device = torch.device("cuda", 0)
        if wanted > 1:
            notes.append(
                (
                    "warning",
                    f"SYSTEM.NUM_GPUS is {wanted}; Trainboard trains on one GPU "
                    f"({available} available), so cuda:0 is used",
                )
            )
    else:
        device = torch.device("cpu")
        if wanted > 0:
            notes.append(
                (
                    "warning",
                    f"SYSTEM.NUM_GPUS is {wanted} but no CUDA GPU is available to PyTorch "
                    f"{torch.__version__}: training on the CPU, which is much slower. "
                    "Set SYSTEM.NUM_GPUS 0 to silence this warning.",
                )
            )
    amp = bool(cfg["MODEL"].get("MIXED_PRECESION", False))
    if amp and device.type != "cuda":
        notes.append(("info", "MODEL.MIXED_PRECESION is ignored on the CPU (CUDA only)"))
        amp = False
    n_threads = torch.get_num_threads()
    if device.type == "cpu":
        n_threads = _set_threads(threads or default_threads(cfg))
    return DeviceChoice(device=device, amp=amp, threads=n_threads, notes=notes)


def default_threads(cfg: Config) -> int:
    """CPU threads for torch: every CPU this process may use, less one per data-loading
    worker (SYSTEM.NUM_CPUS): oversubscribed OpenMP threads spin against each other and
    can run several times slower than fewer threads."""
    workers = max(0, int(cfg["SYSTEM"].get("NUM_CPUS", 0)))
    cpus = available_cpus()
    return max(1, cpus - min(workers, cpus))


def _set_threads(n: int) -> int:
    n = max(1, n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
