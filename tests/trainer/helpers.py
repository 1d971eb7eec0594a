"""Tiny configs and volumes for trainer tests: a 2D U-Net that trains in seconds on 2 CPUs.

`tiny_job(tmp_path, ...)` writes two small synthetic `.npy` volumes (bright discs on a
noisy background, the discs are the labels) and returns a TrainJob whose config is the
real resolved config (`backend.config.load_config`) with every default filled in.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from backend.config import load_config
from backend.execution.job import EVENTS_FILE, TrainJob, WireEvent, child_entry, receive_batch

SPAWN = mp.get_context("spawn")


def write_volumes(directory: Path, seed: int = 0) -> dict[str, str]:
    """Train (6x48x48) and val (2x48x48) uint8 images with disc labels, as .npy files."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = {}
    for split, depth in (("train", 6), ("val", 2)):
        label = np.zeros((depth, 48, 48), dtype=np.uint16)
        yy, xx = np.mgrid[:48, :48]
        for z in range(depth):
            for k in range(3):
                cy, cx = rng.integers(8, 40, 2)
                label[z][(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = k + 1
        image = 60 + 120 * (label > 0) + rng.normal(0, 15, label.shape)
        np.save(directory / f"{split}_image.npy", np.clip(image, 0, 255).astype(np.uint8))
        np.save(directory / f"{split}_label.npy", label)
        names[split] = split
    return {
        "IMAGE_NAME": "train_image.npy",
        "LABEL_NAME": "train_label.npy",
        "VAL_IMAGE_NAME": "val_image.npy",
        "VAL_LABEL_NAME": "val_label.npy",
    }


def tiny_config(data_dir: Path, output: Path, **solver: Any) -> dict[str, Any]:
    """The YAML tree of a tiny 2D run on the volumes of `write_volumes`."""
    config: dict[str, Any] = {
        "SYSTEM": {"NUM_GPUS": 0, "NUM_CPUS": 0},
        "MODEL": {
            "ARCHITECTURE": "unet_2d",
            "FILTERS": [4, 8],
            "ISOTROPY": [False, False],
            "INPUT_SIZE": [1, 32, 32],
            "OUTPUT_SIZE": [1, 32, 32],
            "TARGET_OPT": ["0"],
            "LOSS_OPTION": [["WeightedBCEWithLogitsLoss", "DiceLoss"]],
            "LOSS_WEIGHT": [[1.0, 0.5]],
            "WEIGHT_OPT": [["1", "0"]],
            "OUTPUT_ACT": [["none", "sigmoid"]],
        },
        "DATASET": {
            "INPUT_PATH": str(data_dir),
            **write_volumes(data_dir),
            "OUTPUT_PATH": str(output),
            "PAD_SIZE": [0, 4, 4],
            "DO_2D": True,
        },
        "SOLVER": {
            "NAME": "Adam",
            "LR_SCHEDULER_NAME": "MultiStepLR",
            "STEPS": [15, 25],
            "BASE_LR": 0.01,
            "SAMPLES_PER_BATCH": 2,
            "ITERATION_TOTAL": 24,
            "ITERATION_SAVE": 10,
            "ITERATION_VAL": 12,
            **solver,
        },
        "MONITOR": {"ITERATION_NUM": [5, 50]},
    }
    return config


def resolve(tree: dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """The resolved values of a YAML tree (every PyTC default filled in)."""
    loaded = load_config(yaml.safe_dump(tree), overrides=overrides or [])
    values: dict[str, Any] = loaded.values
    return values


def tiny_job(
    tmp_path: Path,
    *,
    attempt: int = 1,
    resume_from: str | None = None,
    overrides: list[str] | None = None,
    options: dict[str, Any] | None = None,
    **solver: Any,
) -> TrainJob:
    output = tmp_path / "out"
    tree = tiny_config(tmp_path / "data", output, **solver)
    return TrainJob(
        run_id="0123456789ab",
        attempt=attempt,
        config=resolve(tree, overrides),
        output_path=str(output),
        log_path=str(output / "log"),
        seed=7,
        resume_from=resume_from,
        options={"flush_interval": 0.05, "threads": 1, **(options or {})},
    )


def with_solver(job: TrainJob, **solver: Any) -> TrainJob:
    config = json.loads(json.dumps(job.config))
    config["SOLVER"].update(solver)
    return replace(job, config=config)


@dataclass
class ChildRun:
    """A spawned trainer child and every event batch it sent."""

    process: Any
    conn: Connection
    stop: Any
    batches: list[list[WireEvent]] = field(default_factory=list)

    @property
    def events(self) -> list[WireEvent]:
        return [event for batch in self.batches for event in batch]

    def types(self) -> list[str]:
        return [event[0] for event in self.events]

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [data for t, data, _ in self.events if t == type_]

    def receive_until(self, predicate: Any, timeout: float = 120.0) -> None:
        """Receive batches until `predicate(self)` holds or the pipe closes."""
        while not predicate(self):
            if not self.conn.poll(timeout):
                raise TimeoutError(f"no event for {timeout}s; got {self.types()}")
            try:
                self.batches.append(receive_batch(self.conn))
            except EOFError:
                return

    def kill(self) -> None:
        """Teardown: never leave a child behind, whatever the test did."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()

    def drain(self, timeout: float = 120.0) -> int | None:
        """Receive everything until the child closes the pipe, then join it."""
        self.receive_until(lambda _: False, timeout)
        self.process.join(timeout)
        code: int | None = self.process.exitcode
        return code


def spawn_child(job: TrainJob, started: list[ChildRun] | None = None) -> ChildRun:
    parent_conn, child_conn = SPAWN.Pipe(duplex=False)
    stop = SPAWN.Event()
    # Not daemonic, as the supervisor: a daemonic process may not start DataLoader workers.
    process = SPAWN.Process(target=child_entry, args=(job, child_conn, stop), daemon=False)
    process.start()
    child_conn.close()  # the child holds its own copy; EOF then means the child closed it
    child = ChildRun(process, parent_conn, stop)
    if started is not None:
        started.append(child)
    return child


def read_jsonl(log_path: str | Path) -> list[dict[str, Any]]:
    path = Path(log_path) / EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line]
