"""Data-parallel speed on this machine: 2 gloo processes against 1, the same global batch.

The demo 2D config (`backend.demo`) trains in the real trainer child twice, measured in the
same run: once as one process with SAMPLES_PER_BATCH 2B (drawn from the two rank streams,
`data_streams: 2`) and every CPU, once as two DDP ranks (gloo) with B each and half the
CPUs each. Iterations per second come from the `metric` events' timestamps after a
warm-up, so process start, data loading and the final validation are left out.

    .venv/bin/python bench/ddp.py [--iterations N] [--batch B] [--repeat R] [--one-threads T]

Prints `ddp_its_per_s_1proc=`, `ddp_its_per_s_2proc=` and `ddp_speedup_2proc=` (the ratio,
the median of R pairs); then, when `bench/slurm.py` can run here (`sbatch` on the PATH),
its `slurm_submit_to_running_s=` and `slurm_stop_to_stopped_s=`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.config import load_config
from backend.demo import make_demo_dataset
from backend.execution.job import TrainJob, child_entry, receive_batch

WARMUP = 5  # iterations left out of the rate (first batches, DDP's first all-reduces)


def demo_job(
    directory: Path,
    name: str,
    iterations: int,
    batch: int,
    options: dict[str, Any],
    overrides: tuple[str, ...] = ("SYSTEM.NUM_GPUS", "0"),
) -> TrainJob:
    demo = make_demo_dataset(directory)
    output = directory / name
    settings = [
        *overrides,
        *("SYSTEM.NUM_CPUS", "0"),
        *("SOLVER.ITERATION_TOTAL", str(iterations), "SOLVER.SAMPLES_PER_BATCH", str(batch)),
        *("SOLVER.ITERATION_SAVE", "100000", "SOLVER.ITERATION_VAL", "100000"),
        *("DATASET.OUTPUT_PATH", str(output)),
    ]
    values = load_config(path=demo.config_2d, overrides=settings).values
    return TrainJob(
        run_id="ddpbench0000",
        attempt=1,
        config=values,
        output_path=str(output),
        log_path=str(output / "log"),
        seed=1,
        options={"flush_interval": 0.25, **options},
    )


def train(job: TrainJob) -> tuple[float, list[str]]:
    """Train `job` in a spawned child: iterations per second after the warm-up, and the
    messages of its `log` events."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    process = ctx.Process(target=child_entry, args=(job, sender, stop))
    process.start()
    sender.close()
    stamps: dict[int, float] = {}
    logs: list[str] = []
    failed = None
    try:
        while True:
            for type_, data, ts in receive_batch(receiver):
                if type_ == "metric":
                    stamps[data["iteration"]] = ts
                elif type_ == "log":
                    logs.append(str(data.get("message")))
                elif type_ == "failed":
                    failed = data
    except EOFError:
        pass
    process.join()
    if failed or process.exitcode != 0:
        raise SystemExit(f"training failed (exit {process.exitcode}): {failed}")
    last = max(stamps)
    return (last - WARMUP) / (stamps[last] - stamps[WARMUP]), logs


def its_per_s(job: TrainJob) -> float:
    return train(job)[0]


def slurm_figures() -> dict[str, float]:
    """bench/slurm.py's figures, when a test cluster can run here."""
    if shutil.which("sbatch") is None:
        print("slurm: sbatch not found, skipped")
        return {}
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import slurm

        figures: dict[str, float] = slurm.measure(1)
        return figures
    except Exception as exc:  # a cluster that cannot start here is reported, not fatal
        print(f"slurm: bench/slurm.py could not run here: {type(exc).__name__}: {exc}")
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4, help="per-rank batch B (global 2B)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--one-threads", type=int, default=0, help="threads of the 1-process run (0: every CPU)"
    )
    parser.add_argument("--no-slurm", action="store_true")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    one_rates, two_rates, ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        folder = Path(tmp)
        for r in range(args.repeat):
            single = demo_job(
                folder,
                f"one{r}",
                args.iterations,
                2 * args.batch,
                {"data_streams": 2, "threads": args.one_threads or cpus},
            )
            ranks = demo_job(
                folder,
                f"two{r}",
                args.iterations,
                args.batch,
                {"world_size": 2, "threads": max(1, cpus // 2)},
            )
            one, two = its_per_s(single), its_per_s(ranks)
            print(f"pair {r + 1}: 1 process {one:.2f} it/s, 2 processes {two:.2f} it/s")
            one_rates.append(one)
            two_rates.append(two)
            ratios.append(two / one)
    print(
        f"cpus={cpus} threads_1proc={args.one_threads or cpus} threads_per_rank="
        f"{max(1, cpus // 2)} global_batch={2 * args.batch} iterations={args.iterations}"
    )
    print(f"ddp_its_per_s_1proc={statistics.median(one_rates):.3f}")
    print(f"ddp_its_per_s_2proc={statistics.median(two_rates):.3f}")
    print(f"ddp_speedup_2proc={statistics.median(ratios):.3f}")
    if not args.no_slurm:
        for name, value in slurm_figures().items():
            print(f"{name}={value:.3f}")


if __name__ == "__main__":
    main()
