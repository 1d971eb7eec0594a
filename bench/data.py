"""Can the data pipeline keep ahead of the model? PyTC's full default augmentor, measured.

Writes the demo dataset to a temporary folder, takes the 3D demo config with every
augmentation PyTC switches on by default (the demo itself switches them off), and measures:

- `samples_per_s`: augmented training samples per second made by the real loader
  (`backend.trainer.data.make_loader`) with 0 (in-process), 1 and 2 DataLoader workers,
  targets and weights included, at the demo 3D patch size;
- `train_steps_per_s`: optimizer steps per second of the demo 3D model on one fixed batch
  (forward, loss, backward, step), with the torch threads the trainer would use beside
  that many workers (`backend.trainer.device.default_threads`: the CPUs less one per
  worker, at least one);
- `ahead`: samples_per_s / (train_steps_per_s x SAMPLES_PER_BATCH). Above 1 the workers
  make batches faster than the model eats them, so augmentation costs no training time
  (when there is a core for the workers besides the model's).

    .venv/bin/python bench/data.py [--batches 24] [--steps 8]

Each figure is measured in this run; the ratio is what matters, not the absolute speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from backend.augment import BUILD_ORDER
from backend.config import load_config
from backend.demo import make_demo_dataset
from backend.trainer.data import PatchSampler, load_training_data, make_batch, make_loader
from backend.trainer.device import default_threads
from backend.trainer.losses import build_criterion
from backend.trainer.models import build_model
from backend.trainer.optim import build_optimizer


def pytc_default_config(directory: Path) -> dict[str, Any]:
    """The 3D demo config with PyTC's default augmentations all switched back on."""
    demo = make_demo_dataset(directory)
    overrides = [x for name in BUILD_ORDER for x in (f"AUGMENTOR.{name}.ENABLED", "True")]
    loaded = load_config(path=demo.config_3d, overrides=overrides)
    errors = [p for p in loaded.problems if p.is_error]
    if errors:
        raise SystemExit(f"config problems: {errors}")
    return loaded.values


def with_workers(cfg: dict[str, Any], workers: int) -> dict[str, Any]:
    return {**cfg, "SYSTEM": {**cfg["SYSTEM"], "NUM_CPUS": workers}}


def samples_per_s(cfg: dict[str, Any], batches: int) -> float:
    workers = int(cfg["SYSTEM"]["NUM_CPUS"])
    data = load_training_data(cfg)
    warmup = 2 + workers  # worker start-up and the prefetch queue filling
    loader = iter(
        make_loader(cfg, data, seed=0, start_iteration=0, stop_iteration=warmup + batches)
    )
    for _ in range(warmup):
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    elapsed = time.perf_counter() - start
    return batches * int(cfg["SOLVER"]["SAMPLES_PER_BATCH"]) / elapsed


def train_steps_per_s(cfg: dict[str, Any], steps: int) -> float:
    data = load_training_data(cfg)
    batch = make_batch(cfg, PatchSampler(cfg, data), 0)
    model = build_model(cfg)
    model.train()
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(cfg, model)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = criterion.compute(model(batch.image), batch.targets, batch.weights)
        torch.autograd.backward(loss)
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=24, help="batches timed per setting")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pytc_default_config(Path(tmp))
        sampler = PatchSampler(cfg, load_training_data(cfg))
        batch_size = int(cfg["SOLVER"]["SAMPLES_PER_BATCH"])
        print(
            f"patch {cfg['MODEL']['INPUT_SIZE']} from samples {list(sampler.sample_size)}, "
            f"{batch_size} per batch; augmentations: {', '.join(sampler.augmenter.names)}"
        )
        for workers in (0, 1, 2):
            config = with_workers(cfg, workers)
            threads = default_threads(config)
            torch.set_num_threads(threads)
            steps = train_steps_per_s(config, args.steps)
            rate = samples_per_s(config, args.batches)
            print(
                f"workers={workers} samples_per_s={rate:.1f} train_steps_per_s={steps:.2f} "
                f"(torch threads {threads}, needs {steps * batch_size:.1f} samples/s) "
                f"ahead={rate / (steps * batch_size):.2f}"
            )


if __name__ == "__main__":
    main()
