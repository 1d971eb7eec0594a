"""The device check: the demo trained on CUDA with mixed precision, then with DDP.

Meant for a machine with one or more NVIDIA GPUs; on one without CUDA it says
"no CUDA: skipped" and exits 0, so it can run anywhere. In the real trainer child:

1. one process on cuda:0, `MODEL.MIXED_PRECESION: True`, SAMPLES_PER_BATCH B;
2. DDP on every visible GPU (NCCL), B per rank, mixed precision; with a single GPU,
   two ranks share it over gloo (`SYSTEM.DISTRIBUTED_BACKEND: gloo`: NCCL refuses two
   ranks on one device), which checks the DDP code path on CUDA rather than its speed.

Each prints iterations per second (after a warm-up, from the `metric` events) and the
peak GPU memory rank 0 reports (`torch.cuda.max_memory_allocated`).

    .venv/bin/python bench/gpu_check.py [--iterations N] [--batch B]

Lines: `gpu_name=`, `gpu_count=`, `amp_its_per_s=`, `amp_peak_mib=`, `ddp_processes=`,
`ddp_backend=`, `ddp_its_per_s=`, `ddp_peak_mib=` (rank 0), `ddp_samples_per_s_ratio=`
(DDP's samples per second over the single process's).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddp import demo_job, train  # bench/ddp.py

PEAK = re.compile(r"peak GPU memory (\d+) MiB")


def peak_mib(logs: list[str]) -> float | None:
    found = [float(m.group(1)) for line in logs if (m := PEAK.search(line))]
    return max(found) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA: skipped (torch {torch.__version__}, cuda {torch.version.cuda})")
        return
    count = torch.cuda.device_count()
    print(f"gpu_name={torch.cuda.get_device_name(0)!r}")
    print(f"gpu_count={count}")
    amp = ("MODEL.MIXED_PRECESION", "True")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp)
        one = ("SYSTEM.NUM_GPUS", "1", *amp)
        rate, logs = train(demo_job(folder, "amp", args.iterations, args.batch, {}, one))
        print(f"amp_its_per_s={rate:.2f}")
        print(f"amp_peak_mib={peak_mib(logs)}")

        processes = count if count > 1 else 2
        backend = "nccl" if count > 1 else "gloo"
        ddp: tuple[str, ...] = ("SYSTEM.NUM_GPUS", str(count), "SYSTEM.PARALLEL", "DDP")
        ddp = (*ddp, *amp, "SYSTEM.DISTRIBUTED_BACKEND", backend)
        job = demo_job(folder, "ddp", args.iterations, args.batch, {"world_size": processes}, ddp)
        ddp_rate, ddp_logs = train(job)
        print(f"ddp_processes={processes}")
        print(f"ddp_backend={backend}")
        print(f"ddp_its_per_s={ddp_rate:.2f}")
        print(f"ddp_peak_mib={peak_mib(ddp_logs)}")
        print(f"ddp_samples_per_s_ratio={ddp_rate * processes / rate:.3f}")
        notes = [line for line in ddp_logs if "data-parallel" in line]
        print(f"ddp_note={notes[0] if notes else None!r}")


if __name__ == "__main__":
    main()
