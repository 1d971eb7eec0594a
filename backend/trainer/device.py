"""Where training runs: the device, mixed precision and CPU threads from SYSTEM/MODEL keys.

- A data-parallel (DDP) rank: its own device, `cuda:LOCAL_RANK` (or the CPU under gloo),
  and a share of the CPU threads (`backend.trainer.distributed`).
- SYSTEM.NUM_GPUS > 0 and CUDA available: the first GPU; with NUM_GPUS > 1 and
  `SYSTEM.PARALLEL: DP` (PyTC's default) `nn.DataParallel` over the GPUs asked for and
  visible, as PyTC: each iteration's SAMPLES_PER_BATCH is split across them. Asking for
  more than are visible is a warning, not an error.
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
    data_parallel: tuple[int, ...] = ()  # GPU ids of nn.DataParallel (PARALLEL: DP)

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


def choose_device(
    cfg: Config,
    *,
    threads: int | None = None,
    rank_device: torch.device | None = None,
    ranks: int = 1,
) -> DeviceChoice:
    """Pick the device for SYSTEM.NUM_GPUS and MODEL.MIXED_PRECESION, and set CPU threads.

    `rank_device` is a DDP rank's own device; `ranks` processes share this machine's CPUs."""
    notes: list[tuple[str, str]] = []
    wanted = int(cfg["SYSTEM"]["NUM_GPUS"])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    parallel: tuple[int, ...] = ()
    if rank_device is not None:
        device = rank_device
    elif wanted > 0 and available > 0:
        device = torch.device("cuda", 0)
        parallel = _data_parallel(cfg, wanted, available, notes)
    else:
        device = torch.device("cpu")
    if device.type == "cpu" and wanted > 0:
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
        n_threads = _set_threads(threads or max(1, default_threads(cfg) // max(1, ranks)))
    return DeviceChoice(device, amp, n_threads, notes, parallel)


def _data_parallel(
    cfg: Config, wanted: int, available: int, notes: list[tuple[str, str]]
) -> tuple[int, ...]:
    """GPU ids for nn.DataParallel (NUM_GPUS > 1 in one process), with notes."""
    if wanted > available:
        notes.append(
            (
                "warning",
                f"SYSTEM.NUM_GPUS is {wanted} but {available} GPU(s) are visible: "
                f"training on {available}",
            )
        )
    count = min(wanted, available)
    if count <= 1:
        return ()
    if str(cfg["SYSTEM"].get("PARALLEL", "DP")) == "DDP":
        return ()  # DDP with one visible GPU: a single process (the warning above says why)
    notes.append(
        (
            "info",
            f"SYSTEM.PARALLEL DP: nn.DataParallel over cuda:0..{count - 1}, each batch of "
            "SOLVER.SAMPLES_PER_BATCH split across them (SYSTEM.PARALLEL: DDP runs one "
            "process per GPU and is faster)",
        )
    )
    return tuple(range(count))


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
