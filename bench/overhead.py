"""Training with Trainboard watching versus a bare PyTorch loop: same model, data,
iterations, threads, in the same process, interleaved (ABBA) repeats.

- bare: `make_loader` batches -> forward -> criterion -> backward -> step -> schedule.
- trainboard: `TrainingLoop.train()` as the child runs it: the same work plus metric and
  progress events every iteration, batches sent over a real pipe to a draining process
  every 0.25 s, events.jsonl / train.log writes, the stop flag (a multiprocessing Event)
  polled every iteration, deterministic algorithms on (the CPU default).

Only the iteration loop is timed in both (`TrainingLoop.train_seconds` and
`train_cpu_seconds`): validation and checkpoints are features with their own intervals,
set past the end here. Both wall and process CPU time are reported; CPU time (the
default for the last line) is what to trust on a machine other jobs share, wall time on a
quiet one. The pipe reader's CPU is not counted: in production it is the server's.

    .venv/bin/python bench/overhead.py [--iterations 40] [--repeats 4] [--override KEY VALUE]

Last line: `overhead_ratio=<t_trainboard / t_bare>` (best of the repeats of each, as timeit
advises; `--clock cpu|wall`; the medians are printed too; target <= 1.03).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from pipe_reader import start_reader  # bench/ is on sys.path: the script's folder

from backend.config import load_config
from backend.demo import make_demo_dataset
from backend.execution.job import TrainJob
from backend.trainer.child import StopRequest
from backend.trainer.data import TrainingData, load_training_data, make_loader
from backend.trainer.device import available_cpus
from backend.trainer.emitter import Emitter
from backend.trainer.loop import TrainingLoop
from backend.trainer.losses import build_criterion
from backend.trainer.models import build_model
from backend.trainer.optim import build_optimizer, build_scheduler

# The demo's 2D U-Net on smaller patches: short iterations make any per-iteration
# overhead show (the demo's own 128x128 x 8 would hide it behind compute).
DEFAULT_OVERRIDES = [
    "MODEL.INPUT_SIZE", "[1, 64, 64]",
    "MODEL.OUTPUT_SIZE", "[1, 64, 64]",
    "SOLVER.SAMPLES_PER_BATCH", "4",
    "SYSTEM.NUM_CPUS", "0",
]  # fmt: skip


Timing = tuple[float, float]  # (wall seconds, process CPU seconds)


def bare(cfg: dict[str, Any], data: TrainingData, seed: int, n: int, threads: int) -> Timing:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)  # plain PyTorch defaults
    torch.manual_seed(seed)
    model = build_model(cfg)
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    model.train()
    batches = iter(make_loader(cfg, data, seed, 0, n))
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        batch = next(batches)
        output = model(batch.image)
        loss, _ = criterion.compute(output, batch.targets, batch.weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start, time.process_time() - start_cpu


def trainboard(job: TrainJob, log_dir: Path) -> Timing:
    reader, sender = start_reader()
    flag = mp.get_context("spawn").Event()  # the same kind of flag the supervisor passes
    emitter = Emitter(sender, log_dir, attempt=1)
    loop = TrainingLoop(replace_log(job, log_dir), emitter, StopRequest(flag, emitter))
    loop.setup()
    outcome = loop.train()
    emitter.finish(outcome.type, outcome.data)
    emitter.close()
    reader.join(30)
    if reader.is_alive():
        raise SystemExit("the pipe reader did not see the end of the stream")
    if outcome.type != "completed":
        raise SystemExit(f"the Trainboard loop did not complete: {outcome.data}")
    return loop.train_seconds, loop.train_cpu_seconds


def replace_log(job: TrainJob, log_dir: Path) -> TrainJob:
    from dataclasses import replace

    return replace(job, log_path=str(log_dir), output_path=str(log_dir / "out"))


def stop_flag_cost() -> float:
    flag = mp.get_context("spawn").Event()
    request = StopRequest(flag)
    n = 200_000
    return timeit.timeit(request, number=n) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both loops (1: stable figures on a shared machine)",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="which time the last line compares (cpu: robust on a shared machine)",
    )
    parser.add_argument("--override", nargs=2, action="append", default=[], metavar="KEY VALUE")
    args = parser.parse_args()
    n = args.iterations
    overrides = DEFAULT_OVERRIDES + [item for pair in args.override for item in pair]
    overrides += ["SOLVER.ITERATION_TOTAL", str(n)]
    overrides += ["SOLVER.ITERATION_VAL", str(n + 1), "SOLVER.ITERATION_SAVE", str(n + 1)]
    threads = args.threads or available_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_dataset(Path(tmp) / "demo")
        cfg: dict[str, Any] = load_config(path=demo.config_2d, overrides=overrides).values
        data = load_training_data(cfg)
        job = TrainJob("bench0000000", 1, cfg, tmp, tmp, seed=0, options={"threads": threads})
        print(
            f"{cfg['MODEL']['ARCHITECTURE']} {cfg['MODEL']['FILTERS']} "
            f"{cfg['MODEL']['INPUT_SIZE']} x {cfg['SOLVER']['SAMPLES_PER_BATCH']}, "
            f"{n} iterations, {threads} threads, {args.repeats} ABBA repeats"
        )
        bare(cfg, data, 0, 3, threads)  # warm-up: allocator, kernels
        times: dict[str, list[Timing]] = {"trainboard": [], "bare": []}
        for r in range(args.repeats):
            order = ("bare", "trainboard") if r % 2 == 0 else ("trainboard", "bare")
            for name in order:
                if name == "bare":
                    timing = bare(cfg, data, 0, n, threads)
                else:
                    timing = trainboard(job, Path(tmp) / f"log{r}")
                times[name].append(timing)
                print(
                    f"  repeat {r} {name:>10}: wall {timing[0]:7.3f}s ({n / timing[0]:6.2f} it/s)"
                    f"  cpu {timing[1]:7.3f}s"
                )
    ratios = {}
    for k, clock in enumerate(("wall", "cpu")):
        tb = [t[k] for t in times["trainboard"]]
        ba = [t[k] for t in times["bare"]]
        ratios[clock] = min(tb) / min(ba)
        print(
            f"{clock:>4}: best of {args.repeats} bare {min(ba):.3f}s trainboard {min(tb):.3f}s "
            f"ratio {ratios[clock]:.4f}; medians ratio "
            f"{statistics.median(tb) / statistics.median(ba):.4f}"
        )
    print(f"stop flag check: {stop_flag_cost():.2f} µs per iteration")
    # Best-of-N, as timeit advises: other processes only ever add time. With --clock cpu
    # (the default) the figure is process CPU time, which other processes on a shared
    # machine disturb far less than wall time; --clock wall on a quiet machine.
    print(f"overhead_ratio={ratios[args.clock]:.4f}")


if __name__ == "__main__":
    main()
