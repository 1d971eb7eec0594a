"""The resolved config the child writes next to the run's logs (`config.yaml`): it loads
back to the very values the run trained with."""

from __future__ import annotations

from pathlib import Path

import yaml

from backend.config import load_config
from backend.execution.job import TrainJob
from backend.trainer.child import write_resolved_config


def test_the_log_folder_explains_the_run(tmp_path: Path) -> None:
    values = load_config(text="SOLVER:\n  BASE_LR: 0.005\nMODEL:\n  ARCHITECTURE: unet_2d\n").values
    job = TrainJob(
        run_id="abc123",
        attempt=2,
        config=values,
        output_path=str(tmp_path),
        log_path=str(tmp_path),
        seed=7,
    )
    path = write_resolved_config(job)
    text = path.read_text(encoding="utf-8")
    assert path == tmp_path / "config.yaml"
    assert text.startswith("# Resolved config of run abc123, attempt 2, seed 7\n")
    assert yaml.safe_load(text) == values
    assert load_config(text=text).values == values  # `trainboard train config.yaml` repeats it
    assert not list(tmp_path.glob(".*partial"))
