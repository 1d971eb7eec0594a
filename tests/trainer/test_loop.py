"""The training loop, run in-process on tiny configs (the child tests spawn real processes)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from backend.config import load_config, validate
from backend.execution.job import TrainJob, decode_batch
from backend.trainer.checkpoint import PYTC_KEYS, read_checkpoint
from backend.trainer.child import run
from backend.trainer.emitter import Emitter
from backend.trainer.loop import (
    NonFiniteLoss,
    TrainingLoop,
    describe_failure,
    lower_learning_rate,
)
from tests.trainer.helpers import read_jsonl, tiny_job

Event = tuple[str, dict[str, Any], float]


class ListConn:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def send_bytes(self, payload: bytes) -> None:  # the emitter's wire format
        self.events.extend(decode_batch(payload))

    def close(self) -> None:
        pass


def train_until(job: TrainJob, stop_at: int) -> list[Event]:
    """Run the loop as the child does, with a stop requested once `stop_at` iterations
    are done (the real flag is polled too often to count calls)."""
    conn = ListConn()
    emitter = Emitter(cast(Connection, conn), job.log_path, attempt=job.attempt)
    loop = TrainingLoop(job, emitter, lambda: loop.iteration >= stop_at)
    outcome = loop.run()
    emitter.finish(outcome.type, outcome.data)
    emitter.close()
    return conn.events


def train(job: TrainJob, stop: Any = None) -> tuple[int, list[Event]]:
    conn = ListConn()
    code = run(job, cast(Connection, conn), stop)
    return code, conn.events


def of(events: list[Event], type_: str) -> list[dict[str, Any]]:
    return [data for t, data, _ in events if t == type_]


def losses(events: list[Event]) -> dict[int, float]:
    return {d["iteration"]: d["loss"] for d in of(events, "metric")}


def test_a_full_run_reports_everything(tmp_path: Path) -> None:
    job = tiny_job(tmp_path)
    code, events = train(job)
    assert code == 0
    types = [t for t, _, _ in events]
    assert types[0] == "trainer_ready" and types[-1] == "completed"
    assert types.count("completed") == 1
    ready = of(events, "trainer_ready")[0]
    assert ready["device"].startswith("cpu") and ready["amp"] is False
    assert ready["parameters"] > 0 and ready["start_iteration"] == 0
    assert ready["train_shapes"] == [[6, 48, 48]] and ready["val_shapes"] == [[2, 48, 48]]
    assert ready["torch"] == torch.__version__

    metrics = of(events, "metric")
    assert [m["iteration"] for m in metrics] == list(range(1, 25))
    # PyTC's term names: {target}_{loss}_{target index}_{loss index}.
    assert set(metrics[0]["components"]) == {
        "0_WeightedBCEWithLogitsLoss_0_0",
        "0_DiceLoss_0_1",
    }
    assert math.isclose(metrics[0]["loss"], sum(metrics[0]["components"].values()), rel_tol=1e-5)
    assert metrics[20]["lr"] == pytest.approx(0.001), "MultiStepLR at STEPS 15"

    progress = of(events, "progress")
    assert progress and progress[-1]["iteration"] == 24 and progress[-1]["total"] == 24
    assert {"its_per_s", "eta_s", "elapsed_s"} <= set(progress[-1])

    validations = of(events, "validation")
    assert [v["iteration"] for v in validations] == [12, 24]
    for v in validations:
        assert 0.0 <= v["dice"] <= 1.0 and 0.0 <= v["iou"] <= v["dice"]
        assert Path(v["preview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(v["preview"]).name == f"val_{v['iteration']:05d}.png"
    assert validations[-1]["dice"] > 0.5, "the discs are easy: training must learn"

    saved = [(c["iteration"], Path(c["path"]).name, c["best"]) for c in of(events, "checkpoint")]
    regular = [(i, name) for i, name, best in saved if not best]
    assert regular == [
        (10, "checkpoint_00010.pth.tar"),
        (20, "checkpoint_00020.pth.tar"),
        (24, "checkpoint_00024.pth.tar"),
    ]
    assert any(best and name == "checkpoint_best.pth.tar" for _, name, best in saved)
    checkpoint = read_checkpoint(Path(job.output_path) / "checkpoint_00024.pth.tar")
    assert set(PYTC_KEYS) <= set(checkpoint) and checkpoint["iteration"] == 24

    completed = of(events, "completed")[0]
    assert completed["iteration"] == 24
    assert completed["metrics"]["dice"] == validations[-1]["dice"]
    assert completed["checkpoint"].endswith("checkpoint_00024.pth.tar")
    # Every event carries attempt and a gapless counter; the file holds the same events.
    assert [d["n"] for _, d, _ in events] == list(range(1, len(events) + 1))
    assert [r["type"] for r in read_jsonl(job.log_path)] == types


def test_stop_then_resume_repeats_the_uninterrupted_losses(tmp_path: Path) -> None:
    _, full = train(tiny_job(tmp_path / "full"))
    job = tiny_job(tmp_path / "split")
    first = train_until(job, 13)
    (stopped,) = of(first, "stopped")
    assert stopped["iteration"] == 13
    assert stopped["checkpoint"].endswith("checkpoint_00013.pth.tar")
    assert first[-1][0] == "stopped" and "completed" not in [t for t, _, _ in first]

    resumed_job = replace(job, attempt=2, resume_from=stopped["checkpoint"])
    code, second = train(resumed_job)
    assert code == 0
    assert of(second, "trainer_ready")[0]["start_iteration"] == 13
    expected, got = losses(full), losses(second)
    assert sorted(got) == list(range(14, 25))
    for iteration, loss in got.items():
        assert abs(loss - expected[iteration]) <= 1e-5, iteration
    assert of(second, "validation")[-1]["dice"] == pytest.approx(
        of(full, "validation")[-1]["dice"], abs=1e-6
    )
    assert {d["attempt"] for _, d, _ in second} == {2}


def test_gradient_accumulation_stops_on_a_step_boundary(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, ITERATION_STEP=4, ITERATION_TOTAL=12)
    events = train_until(job, 1)  # asked during the first window
    assert of(events, "stopped")[0]["iteration"] == 4


def test_non_finite_loss_fails_with_a_hint(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, NAME="SGD", BASE_LR=1e6)
    code, events = train(job)
    assert code == 1
    assert events[-1][0] == "failed"
    failed = of(events, "failed")[0]
    assert "at iteration" in failed["message"] and "1e+06" in failed["message"]
    assert "lower SOLVER.BASE_LR (now 1e+06), e.g. to 0.01," in failed["hint"]
    assert "SOLVER.CLIP_GRADIENTS" in failed["hint"]
    assert failed["iteration"] == of(events, "metric")[-1]["iteration"]
    last = of(events, "metric")[-1]
    assert last["loss"] is None and last["loss_repr"] in ("nan", "inf")


def test_unreadable_data_fails_naming_the_file(tmp_path: Path) -> None:
    job = tiny_job(tmp_path)
    broken = Path(job.config["DATASET"]["INPUT_PATH"]) / "train_image.npy"
    broken.write_bytes(b"garbage")
    code, events = train(job)
    assert code == 1 and [t for t, _, _ in events if t != "log"] == ["failed"]
    failed = of(events, "failed")[0]
    assert "train_image.npy" in failed["message"]
    assert "DATASET.INPUT_PATH" in failed["hint"]
    assert failed["traceback"].startswith("Traceback")


def test_pre_model_starts_from_given_weights(tmp_path: Path) -> None:
    source = tiny_job(tmp_path / "source")
    train(source)
    weights = Path(source.output_path) / "checkpoint_00024.pth.tar"
    tuned = ["MODEL.PRE_MODEL", str(weights), "SOLVER.ITERATION_RESTART", "True"]
    job = tiny_job(tmp_path / "tuned", overrides=tuned)
    code, events = train(job)
    assert code == 0
    assert of(events, "trainer_ready")[0]["start_iteration"] == 0
    loaded = [d["message"] for d in of(events, "log") if str(weights) in d["message"]]
    assert loaded and "run 0123456789ab's checkpoint" in loaded[0], "says whose it is"
    _, scratch = train(tiny_job(tmp_path / "scratch"))
    assert of(events, "metric")[0]["loss"] < of(scratch, "metric")[0]["loss"], "fine-tuned"


def test_pre_model_of_another_shape_fails_clearly(tmp_path: Path) -> None:
    source = tiny_job(tmp_path / "source", ITERATION_TOTAL=2, ITERATION_VAL=100)
    train(source)
    weights = Path(source.output_path) / "checkpoint_00002.pth.tar"
    job = tiny_job(
        tmp_path / "other", overrides=["MODEL.PRE_MODEL", str(weights), "MODEL.FILTERS", "[4, 6]"]
    )
    code, events = train(job)
    assert code == 1
    failed = of(events, "failed")[0]
    assert "does not fit this model" in failed["message"]
    assert str(weights) in failed["hint"]


def test_iteration_restart_resumes_weights_at_zero(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, ITERATION_TOTAL=6, ITERATION_SAVE=6, ITERATION_VAL=100)
    train(job)
    checkpoint = str(Path(job.output_path) / "checkpoint_00006.pth.tar")
    restart = tiny_job(tmp_path, ITERATION_TOTAL=4, ITERATION_VAL=100, ITERATION_RESTART=True)
    code, events = train(replace(restart, attempt=2, resume_from=checkpoint))
    assert code == 0
    assert of(events, "trainer_ready")[0]["start_iteration"] == 0
    assert [m["iteration"] for m in of(events, "metric")] == [1, 2, 3, 4]
    assert of(events, "metric")[0]["lr"] == pytest.approx(0.01), "a fresh schedule"


def test_held_out_validation_without_val_volumes(tmp_path: Path) -> None:
    job = tiny_job(
        tmp_path,
        ITERATION_TOTAL=3,
        overrides=["DATASET.VAL_IMAGE_NAME", "None", "DATASET.VAL_LABEL_NAME", "None"],
    )
    code, events = train(job)
    assert code == 0, of(events, "failed")
    assert of(events, "trainer_ready")[0]["val_shapes"] == [[1, 48, 48]]
    assert Path(of(events, "validation")[0]["preview"]).exists()


def test_float_volume_with_nan_is_strict_json(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, ITERATION_TOTAL=2)
    image = Path(job.config["DATASET"]["INPUT_PATH"]) / "train_image.npy"
    array = np.load(image).astype(np.float32)
    array[0, 0, 0] = np.nan
    np.save(image, array)
    code, _ = train(job)
    assert code == 1
    text = (Path(job.log_path) / "events.jsonl").read_text()

    def refuse(name: str) -> None:
        pytest.fail(f"{name} literal in events.jsonl")

    for line in text.splitlines():  # strict: no NaN or Infinity literal (messages may say so)
        json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize(
    ("exc", "message", "hint"),
    [
        (MemoryError(), "out of memory", "lower SOLVER.SAMPLES_PER_BATCH (now 2)"),
        (RuntimeError("CUDA out of memory. Tried"), "out of", "MODEL.INPUT_SIZE (now [1, 32, 32])"),
        (FileNotFoundError(2, "No such file", "/x/y.h5"), "file error", "check /x/y.h5"),
        (ValueError("MODEL.FILTERS must be"), "invalid configuration", "fix the config key"),
        (KeyError("boom"), "KeyError", "traceback shows where"),
    ],
)
def test_failure_hints(tmp_path: Path, exc: BaseException, message: str, hint: str) -> None:
    cfg = tiny_job(tmp_path).config
    failure = describe_failure(exc, cfg, lr=0.01)
    assert message in failure.message
    assert hint in failure.hint


def test_an_unwritable_log_folder_fails_over_the_pipe(tmp_path: Path) -> None:
    job = tiny_job(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, events = train(replace(job, log_path=str(blocker / "log")))
    assert code == 1
    assert [t for t, _, _ in events] == ["failed"]
    assert str(blocker / "log") in of(events, "failed")[0]["hint"]


@pytest.mark.parametrize(
    ("exc", "cause", "key", "suggested"),
    [
        (NonFiniteLoss(2, 0.01, math.inf), "config", "SOLVER.BASE_LR", 0.001),
        (MemoryError(), "resources", "SOLVER.SAMPLES_PER_BATCH", 1),
        (ValueError("MODEL.FILTERS must be increasing"), "config", "MODEL.FILTERS", None),
        (FileNotFoundError(2, "No such file", "/x/y.h5"), "resources", None, None),
        (KeyError("boom"), "code", None, None),
    ],
)
def test_failures_name_their_cause_key_and_a_value(
    tmp_path: Path, exc: BaseException, cause: str, key: str | None, suggested: Any
) -> None:
    cfg = tiny_job(tmp_path).config  # BASE_LR 0.01, SAMPLES_PER_BATCH 2
    failure = describe_failure(exc, cfg, lr=0.01)
    assert (failure.cause, failure.key, failure.suggested) == (cause, key, suggested)


@pytest.mark.parametrize(
    ("lr", "lower"), [(0.01, 0.001), (5.0, 0.01), (100000.0, 0.01), (math.inf, 0.001), (3e-7, 3e-8)]
)
def test_the_suggested_learning_rate_is_sane_and_validates(lr: float, lower: float) -> None:
    suggested = lower_learning_rate(lr)
    assert suggested == pytest.approx(lower) and 0 < suggested <= lr
    problems = validate(load_config(text="", overrides=["SOLVER.BASE_LR", repr(suggested)]))
    assert not [p for p in problems if p.key == "SOLVER.BASE_LR"]


def test_a_diverged_run_names_the_key_and_a_lower_rate(tmp_path: Path) -> None:
    code, events = train(tiny_job(tmp_path, BASE_LR=1e30, ITERATION_TOTAL=4))
    assert code == 1
    failed = of(events, "failed")[0]
    assert (failed["cause"], failed["key"]) == ("config", "SOLVER.BASE_LR")
    assert failed["suggested"] == pytest.approx(0.01)
    assert "e.g. to 0.01," in failed["hint"]


def test_pre_model_resumes_a_checkpoint_as_pytc_does(tmp_path: Path) -> None:
    source = tiny_job(tmp_path / "source", ITERATION_TOTAL=6, ITERATION_SAVE=6, ITERATION_VAL=100)
    train(source)
    weights = Path(source.output_path) / "checkpoint_00006.pth.tar"
    job = tiny_job(
        tmp_path / "next", ITERATION_TOTAL=8, overrides=["MODEL.PRE_MODEL", str(weights)]
    )
    code, events = train(job)
    assert code == 0
    assert of(events, "trainer_ready")[0]["start_iteration"] == 6
    assert [m["iteration"] for m in of(events, "metric")] == [7, 8]
    assert any("resumed at iteration 6, as PyTC does" in d["message"] for d in of(events, "log"))


@pytest.mark.parametrize("listed", [True, False], ids=["listed by the job", "found in OUTPUT"])
def test_resume_falls_back_to_the_runs_previous_checkpoint(tmp_path: Path, listed: bool) -> None:
    job = tiny_job(tmp_path, ITERATION_TOTAL=6, ITERATION_SAVE=3, ITERATION_VAL=100)
    train(job)
    out = Path(job.output_path)
    (out / "checkpoint_00006.pth.tar").write_bytes(b"torn")  # the latest is unreadable
    longer = tiny_job(tmp_path, ITERATION_TOTAL=8, ITERATION_SAVE=3, ITERATION_VAL=100)
    own = [str(out / "checkpoint_00006.pth.tar"), str(out / "checkpoint_00003.pth.tar")]
    resume = replace(
        longer, attempt=2, resume_from=own[0], own_checkpoints=tuple(own) if listed else ()
    )
    code, events = train(resume)
    assert code == 0
    assert of(events, "trainer_ready")[0]["start_iteration"] == 3
    warnings = [d["message"] for d in of(events, "log") if d["level"] == "warning"]
    assert any("checkpoint_00006" in w and "falling back" in w for w in warnings)


def test_resume_never_loads_another_runs_checkpoint(tmp_path: Path) -> None:
    other = replace(tiny_job(tmp_path / "a", ITERATION_TOTAL=3, ITERATION_VAL=100), run_id="other")
    train(other)
    theirs = str(Path(other.output_path) / "checkpoint_00003.pth.tar")
    mine = tiny_job(tmp_path / "b", ITERATION_TOTAL=3, ITERATION_VAL=100)
    code, events = train(replace(mine, attempt=2, resume_from=theirs))
    assert code == 1
    failed = of(events, "failed")[0]
    assert "belongs to run other, not to run 0123456789ab" in failed["message"]
    assert "no usable checkpoint of its own" in failed["message"]


def test_swa_averages_and_saves_its_model(tmp_path: Path) -> None:
    swa = ["SOLVER.SWA.ENABLED", "True", "SOLVER.SWA.START_ITER", "2"]
    swa += ["SOLVER.SWA.MERGE_ITER", "2", "SOLVER.SWA.BN_UPDATE_ITER", "2"]
    job = tiny_job(tmp_path, ITERATION_TOTAL=6, ITERATION_VAL=100, overrides=swa)
    code, events = train(job)
    assert code == 0
    saved = read_checkpoint(Path(job.output_path) / "checkpoint_swa.pth.tar")
    assert set(saved) == {"state_dict"}
    assert not any(k.startswith("module.") for k in saved["state_dict"])
    assert any("SWA: 2 averaged models" in d["message"] for d in of(events, "log"))
    lrs = [m["lr"] for m in of(events, "metric")]
    assert lrs[:3] == [0.01, 0.01, 0.01] and lrs[3] < 0.01, "SWALR anneals from index 2 on"


def test_swa_resumes_its_average_exactly(tmp_path: Path) -> None:
    swa = ["SOLVER.SWA.ENABLED", "True", "SOLVER.SWA.START_ITER", "1"]
    swa += ["SOLVER.SWA.MERGE_ITER", "1", "SOLVER.SWA.BN_UPDATE_ITER", "1"]
    settings: dict[str, Any] = {"ITERATION_TOTAL": 6, "ITERATION_VAL": 100, "overrides": swa}
    full = tiny_job(tmp_path / "full", **settings)
    _, uninterrupted = train(full)
    split = tiny_job(tmp_path / "split", **settings)
    (stopped,) = of(train_until(split, 3), "stopped")
    code, events = train(replace(split, attempt=2, resume_from=stopped["checkpoint"]))
    assert code == 0
    assert [m["lr"] for m in of(events, "metric")] == pytest.approx(
        [m["lr"] for m in of(uninterrupted, "metric")][3:], rel=1e-12
    ), "the SWA schedule goes on where it was"
    a = read_checkpoint(Path(full.output_path) / "checkpoint_swa.pth.tar")["state_dict"]
    b = read_checkpoint(Path(split.output_path) / "checkpoint_swa.pth.tar")["state_dict"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_configure_determinism_sets_torch_and_leaves_dynamo_unloaded() -> None:
    import subprocess
    import sys

    # A fresh interpreter: this one has imported torch._dynamo long ago.
    probe = (
        "import sys, torch\n"
        "from backend.config import load_config\n"
        "from backend.trainer.device import choose_device\n"
        "from backend.trainer.loop import configure_determinism\n"
        "cfg = load_config(text='SYSTEM: {NUM_GPUS: 0}').values\n"
        "configure_determinism(True, choose_device(cfg, threads=1))\n"
        "print(torch.are_deterministic_algorithms_enabled(),"
        " torch.is_deterministic_algorithms_warn_only_enabled(),"
        " 'torch._dynamo' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True", "False"], out.stderr
