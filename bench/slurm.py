"""How quickly runs start and stop on Slurm, on the test cluster of `tests/execution`.

Starts a real single-node cluster in a temporary folder (`SlurmCluster`: munged,
slurmctld, slurmd), then, a few times, launches one synthetic attempt through the
`SlurmExecutor` as the supervisor does and follows it:

- `slurm_submit_to_running_s`: from `launch` (writing job.json, `sbatch`) until the
  executor reports the job RUNNING (its `job_state` fact; squeue polled every
  `POLL_S`), as a user would see it;
- `slurm_submit_to_first_event_s`: until the trainer's first event is read from the
  spool (adds the job's Python start);
- `slurm_stop_to_stopped_s`: from `request_stop` (`scancel --signal=TERM --full`) until
  the trainer's `stopped` event is read from the spool.

Each figure is the median of `--repeat` jobs (default 3).

    .venv/bin/python bench/slurm.py [--repeat N]

`measure(repeat) -> dict[str, float]` returns the same figures (bench/ddp.py prints them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import events as ev
from backend.execution.executor import Slot
from backend.execution.job import TrainJob
from backend.execution.slurm import POLL_S, SlurmExecutor
from tests.execution.slurm_cluster import SlurmCluster, missing_programs

SYNTHETIC = {"flush_interval": 0.05, "synthetic": {"rate": 200, "seconds": 0}}
STOP_AFTER_S = 1.0  # of trainer events, before the stop is requested
LIMIT_S = 120.0


async def one_job(folder: Path, index: int) -> dict[str, float]:
    """Launch, wait until running, stop, and time each step of one attempt."""
    job = TrainJob(
        run_id=f"bench{index:07d}",
        attempt=1,
        config={"SYSTEM": {"NUM_GPUS": 0, "NUM_CPUS": 1}, "MONITOR": {"ITERATION_NUM": [50]}},
        output_path=str(folder / f"out{index}"),
        log_path=str(folder / f"log{index}"),
        options=SYNTHETIC,
    )
    began = time.perf_counter()
    attempt = await SlurmExecutor().launch(job, Slot(0, ("cpu",)))
    times: dict[str, float] = {}
    stop_at: float | None = None
    async with asyncio.timeout(LIMIT_S):
        async for batch in attempt.batches():
            now = time.perf_counter()
            for type_, data, _ in batch:
                if type_ == ev.JOB_STATE and data["state"] == "RUNNING":
                    times.setdefault("slurm_submit_to_running_s", now - began)
                elif type_ != ev.JOB_STATE:
                    times.setdefault("slurm_submit_to_first_event_s", now - began)
                if type_ == ev.STOPPED and stop_at is not None:
                    times["slurm_stop_to_stopped_s"] = now - stop_at
            first = times.get("slurm_submit_to_first_event_s")
            if stop_at is None and first is not None and now - began - first >= STOP_AFTER_S:
                stop_at = time.perf_counter()
                attempt.request_stop()
    status = await attempt.exit_status()
    if status.code != 0 or len(times) != 3:
        raise RuntimeError(f"job {attempt.handle} ended with {status}, measured {times}")
    return times


async def run_all(repeat: int, folder: Path) -> dict[str, float]:
    samples = [await one_job(folder, index) for index in range(repeat)]
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def measure(repeat: int = 3) -> dict[str, float]:
    """The medians, on a test cluster started (and stopped) for the measurement."""
    missing = missing_programs()
    if missing:
        raise RuntimeError(f"Slurm is not installed (missing {', '.join(missing)})")
    with tempfile.TemporaryDirectory(prefix="trainboard-bench-slurm-") as tmp:
        cluster = SlurmCluster(Path(tmp) / "cluster").start()
        saved = {key: os.environ.get(key) for key in cluster.env}
        os.environ.update(cluster.env)
        try:
            return asyncio.run(run_all(repeat, Path(tmp)))
        finally:
            cluster.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    figures = measure(args.repeat)
    print(f"(median of {args.repeat} jobs; squeue polled every {POLL_S:g} s)")
    for key, value in figures.items():
        print(f"{key}={value:.2f}")


if __name__ == "__main__":
    main()
