"""What median pruning saves: the same sweep of short 2D demo trials, pruned and not.

`backend.demo.make_demo_dataset` writes the synthetic EM volumes and the 2D config into a
temporary folder; a sweep of `--trials` trials over SOLVER.BASE_LR (log-uniform) runs
twice on its own event store, through the same RunService, Supervisor, Commands and
SweepService a server wires (`backend.experiments.sweep_cli.local_stack`): once with the
median pruner, once without. Both use the random sampler with the same seed, so both
sweeps try the same learning rates and the comparison is the pruner's alone.

    .venv/bin/python bench/sweep.py [--trials 8] [--iterations 20] [--val-every 4]

Last line: `sweep_best_dice= seconds= pruned= no_prune_best_dice= no_prune_seconds=`
(goal: pruning saves >= 30% of the time, best Dice within 0.01 of the unpruned sweep).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as StopFlag
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.demo import make_demo_dataset
from backend.execution.executor import Slot
from backend.execution.job import TrainJob
from backend.execution.local import LocalExecutor
from backend.experiments.sweep_cli import local_stack
from backend.experiments.sweeps import SweepState


async def sweep(folder: Path, config: str, args: argparse.Namespace, pruner: str) -> dict[str, Any]:
    overrides = ["SOLVER.ITERATION_TOTAL", str(args.iterations)]
    overrides += ["SOLVER.ITERATION_VAL", str(args.val_every)]
    overrides += ["SOLVER.ITERATION_SAVE", str(args.iterations)]
    overrides += ["SOLVER.WARMUP_ITERS", str(max(1, args.iterations // 10))]
    # A lighter model on smaller crops than the demo's: trials short enough that a busy
    # two-core machine runs sixteen of them (the ratio is what is measured).
    overrides += ["MODEL.FILTERS", "[4, 8, 16, 32]", "SOLVER.SAMPLES_PER_BATCH", "2"]
    overrides += ["MODEL.INPUT_SIZE", "[1, 64, 64]", "MODEL.OUTPUT_SIZE", "[1, 64, 64]"]
    request = {
        "name": f"bench {pruner}",
        "config": config,
        "overrides": overrides,
        "space": {"SOLVER.BASE_LR": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True}},
        "objective": "max_dice",
        "trials": args.trials,
        "sampler": "random",
        "pruner": pruner,
        "seed": args.seed,
    }
    options = {"flush_interval": 0.05, "threads": args.threads}
    async with local_stack(folder / f"{pruner}.db", job_options=options) as s:
        began = time.perf_counter()
        outcome = await s.sweeps.run("create", None, request)
        if not outcome.ok:
            raise SystemExit(f"the sweep was refused: {outcome.body}")
        sweep_id = outcome.body["sweep"]["sweep_id"]
        ended = (SweepState.COMPLETE, SweepState.STOPPED)
        summary = await s.sweeps.wait(sweep_id, lambda x: x.state in ended)
        seconds = time.perf_counter() - began
        for t in summary.trials:
            lr = t.params["SOLVER.BASE_LR"]
            steps = [int(step) for step, _ in t.intermediate]
            print(
                f"  {pruner:>6} trial {t.number}: lr={lr:.2e} {t.state:<8} "
                f"value={t.value} last step={max(steps, default=0)}",
                flush=True,
            )
        return {
            "best": summary.to_json()["best_value"],
            "seconds": seconds,
            "pruned": summary.counts()["pruned"],
        }


def _nothing(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    conn.close()


async def warm_up(folder: Path) -> None:
    """One child through the local executor first: its forkserver imports torch once per
    server, and that first start must not count against whichever sweep runs first."""
    job = TrainJob("warm-up", 1, {}, str(folder / "out"), str(folder / "log"))
    attempt = await LocalExecutor(target=_nothing).launch(job, Slot(0, ("cpu",)))
    async for _ in attempt.batches():
        pass


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        folder = Path(tmp)
        await warm_up(folder)
        demo = make_demo_dataset(folder / "demo")
        config = demo.config_2d.read_text(encoding="utf-8")
        results = {}
        for pruner in args.pruners.split(","):
            results[pruner] = await sweep(folder, config, args, pruner)
            print(f"{pruner}: {results[pruner]}", flush=True)
    if set(results) != {"median", "none"}:
        return  # one sweep only (run the other in another process)
    pruned, full = results["median"], results["none"]
    saved = 1 - pruned["seconds"] / full["seconds"]
    print(
        f"pruning saved {saved:.0%} of the time; best Dice {pruned['best']:.4f} vs "
        f"{full['best']:.4f}"
    )
    print(
        f"sweep_best_dice={pruned['best']:.4f} seconds={pruned['seconds']:.1f} "
        f"pruned={pruned['pruned']} no_prune_best_dice={full['best']:.4f} "
        f"no_prune_seconds={full['seconds']:.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--val-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pruners", default="median,none", help="the sweeps to run, in order")
    asyncio.run(main(parser.parse_args()))
