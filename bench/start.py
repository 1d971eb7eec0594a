"""How long a Start takes to train, and an end to free its slot: warm forkserver vs spawn.

The demo's 2D config (`backend.demo.make_demo_dataset`), one iteration, launched through
`LocalExecutor` as the supervisor launches it, `--repeats` times with each way of making
the child, interleaved (ABAB) so that the machine's noise falls on both:

- warm: the executor's default, a fork of the forkserver that imported torch and the
  trainer once (its first start, which pays those imports, runs before the clock);
- spawn: a fresh interpreter per child, what every start cost before (the reference).

For each launch: launch -> `trainer_ready` (the run visibly training) and final event ->
the process reaped (when its slot and memory are free for the next run).

    .venv/bin/python bench/start.py [--repeats 3]

Last line: `start_to_ready_s=<warm median> spawn_start_to_ready_s=<spawn median>
ratio=<warm/spawn> end_to_exit_s=<warm median> spawn_end_to_exit_s=<spawn median>`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import events as ev
from backend.config import load_config
from backend.demo import make_demo_dataset
from backend.execution.executor import Slot
from backend.execution.job import TrainJob
from backend.execution.local import LocalExecutor

FINAL = (ev.COMPLETED, ev.FAILED, ev.STOPPED)


async def launch(executor: LocalExecutor, job: TrainJob) -> tuple[float, float]:
    """(launch -> trainer_ready, final event -> exit) in seconds."""
    began = time.perf_counter()
    attempt = await executor.launch(job, Slot(0, ("cpu",)))
    ready = ended = None
    async for batch in attempt.batches():
        now = time.perf_counter()
        for type_, data, _ts in batch:
            if type_ == ev.TRAINER_READY:
                ready = now - began
            elif type_ in FINAL:
                if type_ != ev.COMPLETED:
                    raise SystemExit(f"the demo run ended {type_}: {data}")
                ended = now
    status = await attempt.exit_status()
    if ready is None or ended is None or status.code != 0:
        raise SystemExit(f"the child exited {status} before it was ready or done")
    return ready, time.perf_counter() - ended


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        demo = make_demo_dataset(Path(tmp) / "demo")
        overrides = ["SOLVER.ITERATION_TOTAL", "1", "SOLVER.ITERATION_SAVE", "1"]
        values = load_config(path=demo.config_2d, overrides=overrides).values
        output = Path(values["DATASET"]["OUTPUT_PATH"])

        def job(n: int) -> TrainJob:
            return TrainJob(
                f"start{n:07d}", 1, values, str(output / str(n)), str(output / f"log{n}")
            )

        ways = {
            "warm": LocalExecutor(),
            "spawn": LocalExecutor(context=multiprocessing.get_context("spawn")),
        }
        numbers = itertools.count(1)
        await launch(ways["warm"], job(0))  # the forkserver's imports, once per server
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for n in range(args.repeats):
            for name, executor in ways.items():
                ready, exit_ = await launch(executor, job(next(numbers)))
                timings[name].append((ready, exit_))
                print(
                    f"{name:>5} #{n + 1}: ready in {ready:.2f} s, exit {exit_:.2f} s after its end"
                )
    median = {
        name: (statistics.median(r for r, _ in t), statistics.median(e for _, e in t))
        for name, t in timings.items()
    }
    (warm_ready, warm_exit), (spawn_ready, spawn_exit) = median["warm"], median["spawn"]
    print(
        f"start_to_ready_s={warm_ready:.3f} spawn_start_to_ready_s={spawn_ready:.3f} "
        f"ratio={warm_ready / spawn_ready:.3f} end_to_exit_s={warm_exit:.3f} "
        f"spawn_end_to_exit_s={spawn_exit:.3f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
