"""The trainer child as the supervisor runs it: a spawned process, batches over a pipe."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from backend.execution.job import TrainJob
from backend.trainer.checkpoint import PYTC_KEYS, read_checkpoint
from tests.trainer.helpers import ChildRun, read_jsonl, spawn_child, tiny_job
from tests.trainer.test_loop import losses, train

pytestmark = pytest.mark.slow

Spawn = Callable[[TrainJob], ChildRun]
LONG: dict[str, Any] = {"ITERATION_TOTAL": 3000, "ITERATION_SAVE": 1000, "ITERATION_VAL": 1000}


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[ChildRun] = []
    yield lambda job: spawn_child(job, started)
    for child in started:
        child.kill()


def has_metric(child: ChildRun) -> bool:
    return bool(child.of("metric"))


def test_a_spawned_run_completes(tmp_path: Path, spawn: Spawn) -> None:
    job = tiny_job(tmp_path)
    child = spawn(job)
    assert child.drain() == 0
    types = child.types()
    assert types[0] == "trainer_ready" and types[-1] == "completed"
    assert types.count("completed") == 1 and "failed" not in types
    assert len(child.batches) < len(types), "events travel in batches"
    assert "completed" in [t for t, _, _ in child.batches[-1]], "final event in the last batch"
    assert [m["iteration"] for m in child.of("metric")] == list(range(1, 25))
    assert child.of("progress")
    for validation in child.of("validation"):
        assert Path(validation["preview"]).is_file()
    for saved in child.of("checkpoint"):
        assert set(PYTC_KEYS) <= set(read_checkpoint(saved["path"]))
    names = sorted(p.name for p in Path(job.output_path).glob("checkpoint_*.pth.tar"))
    assert names == [
        "checkpoint_00010.pth.tar",
        "checkpoint_00020.pth.tar",
        "checkpoint_00024.pth.tar",
        "checkpoint_best.pth.tar",
    ]
    assert [r["type"] for r in read_jsonl(job.log_path)] == types
    assert "[Iteration 00020]" in (Path(job.log_path) / "train.log").read_text()


def test_stop_flag_checkpoints_and_resume_repeats_the_losses(tmp_path: Path, spawn: Spawn) -> None:
    total: dict[str, Any] = {"ITERATION_TOTAL": 80, "ITERATION_SAVE": 50, "ITERATION_VAL": 40}
    job = tiny_job(tmp_path / "split", **total)
    child = spawn(job)
    child.receive_until(has_metric)
    child.stop.set()
    assert child.drain() == 0
    assert child.types()[-1] == "stopped"
    stopped = child.of("stopped")[0]
    iteration = stopped["iteration"]
    assert 0 < iteration < 80, "stopped before the end"
    assert Path(stopped["checkpoint"]).name == f"checkpoint_{iteration:05d}.pth.tar"
    assert read_checkpoint(stopped["checkpoint"])["iteration"] == iteration

    resumed = spawn(replace(job, attempt=2, resume_from=stopped["checkpoint"]))
    assert resumed.drain() == 0
    assert resumed.of("trainer_ready")[0]["start_iteration"] == iteration
    assert resumed.types()[-1] == "completed"
    _, full = train(tiny_job(tmp_path / "full", **total))
    expected = losses(full)
    got = {m["iteration"]: m["loss"] for m in resumed.of("metric")}
    assert sorted(got) == list(range(iteration + 1, 81))
    for it, loss in got.items():
        assert abs(loss - expected[it]) <= 1e-5, it


def test_sigterm_is_a_graceful_stop(tmp_path: Path, spawn: Spawn) -> None:
    job = tiny_job(tmp_path, **LONG)
    child = spawn(job)
    child.receive_until(has_metric)
    os.kill(child.process.pid, signal.SIGTERM)
    assert child.drain() == 0
    stopped = child.of("stopped")
    assert len(stopped) == 1 and child.types()[-1] == "stopped"
    assert Path(stopped[0]["checkpoint"]).is_file()
    assert read_jsonl(job.log_path)[-1]["type"] == "stopped"


def test_a_dead_parent_is_a_stop(tmp_path: Path, spawn: Spawn) -> None:
    job = tiny_job(tmp_path, **LONG)
    child = spawn(job)
    child.receive_until(has_metric)
    child.conn.close()  # what the child sees when the server dies: a broken pipe
    child.process.join(60)
    assert child.process.exitcode == 0
    records = read_jsonl(job.log_path)
    assert records[-1]["type"] == "stopped"
    assert Path(records[-1]["data"]["checkpoint"]).is_file()


def test_sigkill_leaves_the_flushed_events_on_disk(tmp_path: Path, spawn: Spawn) -> None:
    job = tiny_job(tmp_path, **LONG)
    child = spawn(job)
    child.receive_until(lambda c: len(c.of("metric")) >= 5)
    time.sleep(0.2)  # a few more flushes
    child.process.kill()
    child.process.join(30)
    assert child.process.exitcode == -signal.SIGKILL
    records = read_jsonl(job.log_path)  # every line parses: nothing half-written
    received = child.events
    assert records[0]["type"] == "trainer_ready"
    assert len(records) >= len(received), "the file has at least what the pipe delivered"
    assert [r["data"]["n"] for r in records] == list(range(1, len(records) + 1))
    assert not any(r["type"] in ("completed", "failed", "stopped") for r in records)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("needs Linux /proc to find the DataLoader workers")
    return [int(p) for p in path.read_text().split()]


def test_a_group_sigterm_with_data_workers_is_still_a_stop(tmp_path: Path, spawn: Spawn) -> None:
    # SYSTEM.NUM_CPUS 1: batches come from a DataLoader worker process. A signal to the
    # whole process group (Ctrl-C, `timeout`) reaches it too; training must still stop
    # gracefully rather than fail with "DataLoader worker killed".
    job = tiny_job(tmp_path, overrides=["SYSTEM.NUM_CPUS", "1"], **LONG)
    child = spawn(job)
    child.receive_until(has_metric)
    workers = _children(child.process.pid)
    assert workers, "a DataLoader worker is running"
    for pid in workers:  # workers first, the worst order, with time to die if they would
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    os.kill(child.process.pid, signal.SIGTERM)
    assert child.drain() == 0, child.of("failed")
    assert child.types()[-1] == "stopped"


def test_warnings_and_logging_records_become_log_events(tmp_path: Path) -> None:
    import logging
    import warnings

    from backend.trainer.child import _logs_to
    from backend.trainer.emitter import Emitter

    emitter = Emitter(None, tmp_path, attempt=1)
    with _logs_to(emitter), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("the volume is float64; casting", UserWarning, stacklevel=1)
        logging.getLogger("some.library").error("could not open the cache")
        logging.getLogger("some.library").info("below WARNING: not shown by default")
    logging.getLogger("some.library").error("after the run: not an event")
    emitter.close()
    logs = [r["data"] for r in read_jsonl(tmp_path) if r["type"] == "log"]
    assert [(d["level"], d["logger"], d["source"]) for d in logs] == [
        ("warning", "py.warnings", "trainer"),
        ("error", "some.library", "trainer"),
    ]
    assert "the volume is float64; casting" in logs[0]["message"]
    assert logs[1]["message"] == "could not open the cache"
    assert "could not open the cache" in (tmp_path / "train.log").read_text()


def test_the_synthetic_trainer_runs_through_the_real_child(tmp_path: Path, spawn: Spawn) -> None:
    job = replace(tiny_job(tmp_path), options={"synthetic": {"rate": 5000, "seconds": 1}})
    child = spawn(job)
    assert child.drain() == 0
    types = child.types()
    assert types[0] == "trainer_ready" and types[-1] == "completed"
    metrics = child.of("metric")
    assert [m["iteration"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert child.of("completed")[0]["iteration"] == len(metrics) > 0
    assert [r["type"] for r in read_jsonl(job.log_path)] == types, "the spool is the pipe"
