"""Train the demo 2D config in a trainer child on this machine, as the server would.

`backend.demo.make_demo_dataset` writes the synthetic EM volumes and configs into a
temporary folder; the 2D config is loaded with `backend.config.load_config` and trained
in a spawned child (`backend.execution.job.child_entry`) that reports through a pipe.

    .venv/bin/python bench/train_demo.py [--override KEY VALUE ...] [--keep DIR]

Last line: `demo_val_dice=<final validation Dice> seconds=<wall time, spawn to exit>`
(target: Dice >= 0.85 within 120 s on two CPU cores).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.config import load_config
from backend.demo import make_demo_dataset
from backend.execution.job import TrainJob, child_entry, receive_batch


def train(directory: Path, overrides: list[str], seed: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    demo = make_demo_dataset(directory)
    print(f"demo dataset written in {time.perf_counter() - t0:.1f}s to {directory}")
    loaded = load_config(path=demo.config_2d, overrides=overrides)
    errors = [p for p in loaded.problems if p.level == "error"]
    if errors:
        raise SystemExit(f"config problems: {errors}")
    values: dict[str, Any] = loaded.values
    output = Path(values["DATASET"]["OUTPUT_PATH"])
    job = TrainJob(
        run_id="demo00000000",
        attempt=1,
        config=values,
        output_path=str(output),
        log_path=str(output / "log"),
        seed=seed,
    )
    solver = values["SOLVER"]
    print(
        f"training {values['MODEL']['ARCHITECTURE']} {values['MODEL']['FILTERS']} on "
        f"{values['MODEL']['INPUT_SIZE']} x {solver['SAMPLES_PER_BATCH']} for "
        f"{solver['ITERATION_TOTAL']} iterations ({solver['NAME']}, lr {solver['BASE_LR']})"
    )
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    stop = ctx.Event()  # keep a reference: the child unpickles it after start()
    process = ctx.Process(target=child_entry, args=(job, sender, stop))
    process.start()
    sender.close()
    dice = float("nan")
    final: tuple[str, dict[str, Any]] | None = None
    while True:
        try:
            batch = receive_batch(receiver)
        except EOFError:
            break
        for type_, data, _ts in batch:
            elapsed = time.perf_counter() - start
            if type_ == "trainer_ready":
                print(f"{elapsed:6.1f}s ready: {data['device']}, {data['parameters']} params")
            elif type_ == "validation":
                dice = data["dice"]
                print(
                    f"{elapsed:6.1f}s it {data['iteration']:4d}: val loss {data['loss']:.4f} "
                    f"dice {data['dice']:.4f} iou {data['iou']:.4f}"
                )
            elif type_ == "progress" and data["iteration"] % 50 < 3:
                print(f"{elapsed:6.1f}s it {data['iteration']:4d}: {data['its_per_s']:.2f} it/s")
            elif type_ in ("completed", "failed", "stopped"):
                final = (type_, data)
    process.join()
    seconds = time.perf_counter() - start
    if final is None or final[0] != "completed":
        print(f"the child did not complete: {final}, exit code {process.exitcode}")
    return dice, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--override", nargs=2, action="append", default=[], metavar="KEY VALUE")
    parser.add_argument("--keep", type=Path, help="write the dataset here and keep it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    overrides = [item for pair in args.override for item in pair]
    if args.keep:
        dice, seconds = train(args.keep, overrides, args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            dice, seconds = train(Path(tmp), overrides, args.seed)
    print(f"demo_val_dice={dice:.4f} seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
