"""`trainboard train`: validate, create, train in this terminal, land in the history."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.cli import main
from backend.events import Event
from backend.execution.job import EVENTS_FILE
from backend.fsm.machine import State
from backend.runs import RunService
from backend.store import EventStore
from backend.trainer.cli import Progress
from tests.trainer.helpers import tiny_config

ROOT = Path(__file__).parents[1]
TIMEOUT = 180.0


def write_config(tmp_path: Path, **solver: Any) -> Path:
    path = tmp_path / "tiny.yaml"
    tree = tiny_config(tmp_path / "data", tmp_path / "out", **solver)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def runs_in(db: Path) -> dict[str, Any]:
    async def load() -> dict[str, Any]:
        store = await EventStore.open(db)
        try:
            service = RunService(store)
            await service.load()
            return {run_id: s.to_json() for run_id, s in service.runs.items()}
        finally:
            await store.close()

    return asyncio.run(load())


# A parent that asserts it never imported torch, though its child trained with it.
TRAIN = (
    "import sys; from backend.cli import main; code = main(sys.argv[1:]); "
    "assert 'torch' not in sys.modules, 'the parent imported torch'; sys.exit(code)"
)


@pytest.mark.slow
def test_train_runs_to_complete_and_lands_in_the_history(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "events.db"
    args = ["train", str(config), "SOLVER.ITERATION_TOTAL", "12", "--db", str(db)]
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, *args, "--name", "from the cli", "--seed", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    [run] = runs_in(db).values()
    assert run["state"] == State.COMPLETE
    assert run["name"] == "from the cli" and run["iteration"] == run["total"] == 12
    assert f"run {run['run_id']} complete at iteration 12" in done.stdout
    assert "trainer ready" in done.stderr  # the progress output


@pytest.mark.slow
def test_ctrl_c_stops_gracefully_and_exits_130(tmp_path: Path) -> None:
    config = write_config(tmp_path, ITERATION_TOTAL=3000)
    db, log_path = tmp_path / "events.db", tmp_path / "log"
    args = ["train", str(config), "--db", str(db), "--log-path", str(log_path)]
    # A session of its own, so the Ctrl-C goes to its process group as a terminal's would.
    process = subprocess.Popen(
        [sys.executable, "-m", "backend", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        events_file = log_path / EVENTS_FILE
        while not (events_file.exists() and '"metric"' in events_file.read_text()):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, output
    assert "stopping: saving a checkpoint" in output
    [run] = runs_in(db).values()
    assert run["state"] == State.STOPPED and run["last_checkpoint"]
    assert "resume" in run["legal_commands"]


def test_an_invalid_config_lists_every_problem_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    text = config.read_text().replace("BASE_LR: 0.01", "BASE_LR: fast")
    config.write_text(text.replace("ARCHITECTURE: unet_2d", "ARCHITECTURE: unet_2d\n  FILTERZ: 4"))
    db = tmp_path / "events.db"
    assert main(["train", str(config), "SOLVER.NAME", "Adagrad", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert len(errors) >= 3, out
    assert any(line.startswith(f"{config}:") and "SOLVER.BASE_LR" in line for line in errors)
    assert any("SOLVER.NAME" in line for line in errors)
    assert "invalid:" in out
    assert not db.exists()


@pytest.mark.parametrize(
    "order",
    [
        ["CONFIG", "--base", "BASE", "--db", "DB", "SOLVER.BASE_LR", ".inf", "SOLVER.NAME", "X"],
        ["--db", "DB", "CONFIG", "SOLVER.BASE_LR", ".inf", "--base", "BASE", "SOLVER.NAME", "X"],
        ["CONFIG", "SOLVER.BASE_LR", ".inf", "--db", "DB", "SOLVER.NAME", "X", "--base", "BASE"],
    ],
)
def test_overrides_are_read_anywhere_on_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], order: list[str]
) -> None:
    config = write_config(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text("SOLVER:\n  WEIGHT_DECAY: -1.0\n")  # an error only the base can bring
    db = tmp_path / "events.db"
    names = {"CONFIG": str(config), "BASE": str(base), "DB": str(db)}
    assert main(["train", *[names.get(arg, arg) for arg in order]]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if ": error: " in line]
    for key in ("SOLVER.BASE_LR", "SOLVER.NAME", "SOLVER.WEIGHT_DECAY"):
        assert any(key in line for line in errors), (key, out)
    assert not db.exists()


def test_an_unreadable_config_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path / "missing.yaml"), "--db", str(tmp_path / "e.db")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_the_db_of_a_running_server_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "events.db"

    async def hold_and_train() -> int:
        store = await EventStore.open(db)  # another process's store, as far as SQLite knows
        try:
            return await asyncio.to_thread(main, ["train", str(config), "--db", str(db)])
        finally:
            await store.close()

    assert asyncio.run(hold_and_train()) == 1
    assert "in use by another Trainboard process" in capsys.readouterr().err


def test_the_progress_line() -> None:
    out = io.StringIO()
    progress = Progress("r1", 100, out=out)
    data = {"iteration": 25, "total": 100, "its_per_s": 12.5, "eta_s": 6.0}
    progress.on_events(
        [
            Event(1, "r1", 5, "metric", 0.0, {"iteration": 25, "loss": 0.4321}),
            Event(2, "r1", 6, "progress", 0.0, data),
            Event(3, "other", 1, "progress", 0.0, {"iteration": 99, "total": 100}),
            Event(4, "r1", 7, "validation", 0.0, {"iteration": 25, "dice": 0.9, "best": True}),
        ]
    )
    line = progress.line()
    assert "25/100" in line and "25%" in line and "12.5 it/s" in line
    assert "ETA 0:00:06" in line and "loss 0.4321" in line
    assert "validation at 25: dice 0.9000" in out.getvalue()


def test_a_config_caused_failure_prints_the_override_that_retries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from backend.trainer.cli import _report

    error = {"message": "the loss is nan", "hint": "lower SOLVER.BASE_LR", "cause": "config"}
    run = {"run_id": "r1", "last_checkpoint": None, "error": error}
    assert _report({**run, "error": {**error, "key": "SOLVER.BASE_LR", "suggested": 0.001}}, None)
    err = capsys.readouterr().err
    assert "  retry with: SOLVER.BASE_LR 0.001" in err
    _report(run, None)
    assert "retry with" not in capsys.readouterr().err
