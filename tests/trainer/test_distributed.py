"""Data-parallel training with real gloo process groups on the CPU (backend.trainer.distributed).

Every multi-process test spawns the real trainer child (rank 0), which starts rank 1
itself. The tiny U-Net has no normalisation layers and trains with SGD, so a batch's
gradient is exactly the mean of its halves' gradients: two ranks of SAMPLES_PER_BATCH 2
then compute what one process computes with 4 samples drawn from the same two streams
(`data_streams: 2`), up to float rounding.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from backend.config import load_config, paths, validate
from backend.execution.job import TrainJob
from backend.trainer.checkpoint import read_checkpoint
from backend.trainer.data import (
    count_validation_batches,
    distribute_volumes,
    load_training_data,
    validation_batches,
)
from backend.trainer.distributed import RankFailure, ddp_processes, free_port, from_environment
from tests.trainer.helpers import (
    ChildRun,
    read_jsonl,
    resolve,
    spawn_child,
    tiny_config,
    tiny_job,
)

REPO = Path(__file__).resolve().parents[2]

# Two ranks against one process: losses agree to float32 rounding (measured: 1.2e-7).
LOSS_TOLERANCE = 1e-5

Spawn = Callable[[TrainJob], ChildRun]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[ChildRun] = []
    yield lambda job: spawn_child(job, started)
    for child in started:
        child.kill()


def ddp_job(tmp_path: Path, world_size: int, **kwargs: Any) -> TrainJob:
    options = {"world_size": world_size, **kwargs.pop("options", {})}
    solver = {"NAME": "SGD", "BASE_LR": 0.001, **kwargs}
    return tiny_job(tmp_path, overrides=["MODEL.NORM_MODE", "none"], options=options, **solver)


def losses(child: ChildRun) -> dict[int, float]:
    return {d["iteration"]: d["loss"] for d in child.of("metric")}


def rank_pids(child: ChildRun) -> list[int]:
    for data in child.of("log"):
        found = re.search(r"ranks 1\.\.\d+ are processes \[([\d, ]+)\]", data["message"])
        if found:
            return [int(p) for p in found.group(1).split(",")]
    raise AssertionError(f"no log event names the ranks' processes: {child.of('log')}")


def gone(pid: int) -> bool:
    """No such process, or a zombie (exited; only its parent's reaping is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pids: list[int], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return all(gone(pid) for pid in pids)


# --- the same global batch on one process and on two; stop and resume ----------------------


@pytest.mark.timeout(900)  # three spawns (1, 2, 2 processes); minutes on a loaded machine
def test_two_gloo_ranks_follow_one_process_stop_together_and_resume_exactly(
    tmp_path: Path, spawn: Spawn
) -> None:
    """One process with 4 samples from the two rank streams is the reference; two ranks of
    2 samples each train, stop together, resume and end on the reference's losses."""
    settings = {"ITERATION_TOTAL": 30, "ITERATION_SAVE": 1000, "ITERATION_VAL": 1000}
    one = spawn(
        ddp_job(tmp_path / "one", 1, SAMPLES_PER_BATCH=4, options={"data_streams": 2}, **settings)
    )
    assert one.drain() == 0, one.of("failed")
    reference = losses(one)

    job = ddp_job(tmp_path / "two", 2, SAMPLES_PER_BATCH=2, **settings)
    first = spawn(job)
    first.receive_until(lambda c: len(c.of("metric")) >= 3)
    first.stop.set()
    assert first.drain() == 0, first.of("failed")
    [stopped] = first.of("stopped")
    at = stopped["iteration"]
    assert 3 <= at < 30
    assert max(losses(first)) == at  # every rank stopped there: none ran past it
    assert [d["world_size"] for d in first.of("trainer_ready")] == [2]
    assert wait_gone(rank_pids(first))

    saved = read_checkpoint(stopped["checkpoint"])
    assert saved["iteration"] == at
    assert not any(key.startswith("module.") for key in saved["state_dict"])
    assert len(saved["rng_states"]) == 2  # each rank resumes its own RNG

    resumed = spawn(replace(job, attempt=2, resume_from=stopped["checkpoint"]))
    assert resumed.drain() == 0, resumed.of("failed")
    assert resumed.of("trainer_ready")[0]["start_iteration"] == at
    assert resumed.types().count("completed") == 1  # rank 0 alone reports

    ranks = losses(first) | losses(resumed)
    assert sorted(ranks) == list(range(1, 31))
    for iteration, loss in reference.items():
        assert ranks[iteration] == pytest.approx(loss, abs=LOSS_TOLERANCE), iteration
    [val_one], [val_two] = one.of("validation"), resumed.of("validation")
    assert val_two["dice"] == pytest.approx(val_one["dice"], abs=1e-6)
    assert val_two["loss"] == pytest.approx(val_one["loss"], abs=LOSS_TOLERANCE)


@pytest.mark.timeout(600)  # two spawns of two and one processes; minutes on a loaded machine
def test_a_two_rank_checkpoint_resumes_in_one_process(tmp_path: Path, spawn: Spawn) -> None:
    two = spawn(ddp_job(tmp_path, 2, ITERATION_TOTAL=4, ITERATION_SAVE=4, ITERATION_VAL=1000))
    assert two.drain() == 0, two.of("failed")
    [done] = two.of("completed")
    job = ddp_job(tmp_path, 1, ITERATION_TOTAL=6, ITERATION_SAVE=6, ITERATION_VAL=1000)
    alone = spawn(replace(job, attempt=2, resume_from=done["checkpoint"]))
    assert alone.drain() == 0, alone.of("failed")
    assert sorted(losses(alone)) == [5, 6]


# --- failures ------------------------------------------------------------------------------


def test_a_killed_rank_ends_the_run_in_error_naming_it(tmp_path: Path, spawn: Spawn) -> None:
    child = spawn(ddp_job(tmp_path, 2, ITERATION_TOTAL=100000))
    child.receive_until(lambda c: len(c.of("metric")) >= 2)
    [rank1] = rank_pids(child)
    os.kill(rank1, signal.SIGKILL)
    assert child.drain() == 1
    [failed] = child.of("failed")
    assert "rank 1 of 2" in failed["message"] and "SIGKILL" in failed["message"]
    assert failed["exit_code"] == -signal.SIGKILL and failed["rank"] == 1
    assert "resume" in failed["hint"]
    assert child.types()[-1] == "failed"
    assert wait_gone([rank1, child.process.pid])


def test_a_dead_rank0_takes_its_ranks_with_it(tmp_path: Path, spawn: Spawn) -> None:
    child = spawn(ddp_job(tmp_path, 2, ITERATION_TOTAL=100000))
    child.receive_until(lambda c: len(c.of("metric")) >= 2)
    ranks = rank_pids(child)
    child.process.kill()
    child.process.join(10)
    assert wait_gone(ranks)


# --- where the world comes from ------------------------------------------------------------

ENVIRONMENTS = [
    # (environment, (rank, size, local_rank, addr, port, local_size) or None)
    ({}, None),
    ({"RANK": "0", "WORLD_SIZE": "1"}, None),
    (
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h1"}
        | {"MASTER_PORT": "29500", "LOCAL_WORLD_SIZE": "2"},
        (3, 4, 1, "h1", 29500, 2),
    ),
    (
        {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}
        | {"SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234"}
        | {"SLURM_NTASKS_PER_NODE": "1(x2)"},
        (1, 2, 1, "gpu07", 20000 + 1234, 1),
    ),
    (
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "node3,node4"}
        | {"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "12345"},
        (0, 2, 0, "10.0.0.5", 12345, 1),
    ),
]


@pytest.mark.parametrize(("env", "expected"), ENVIRONMENTS)
def test_the_world_of_a_launched_task(env: dict[str, str], expected: Any) -> None:
    world = from_environment(env)
    if expected is None:
        assert world is None
        return
    assert world is not None and world.launched
    got = (world.rank, world.size, world.local_rank, world.addr, world.port, world.local_size)
    assert got == expected


PROCESSES = [
    # (SYSTEM / DATASET values, visible GPUs, processes)
    ({"NUM_GPUS": 4, "PARALLEL": "DDP"}, 4, 4),
    ({"NUM_GPUS": 4, "PARALLEL": "DDP"}, 2, 2),  # at most the GPUs this slot has
    ({"NUM_GPUS": 4, "PARALLEL": "DP"}, 4, 1),  # DataParallel: one process
    ({"NUM_GPUS": 2, "DISTRIBUTED": True}, 2, 2),
    ({"NUM_GPUS": 2, "DATASET.DISTRIBUTED": True}, 2, 2),
    ({"NUM_GPUS": 1, "PARALLEL": "DDP"}, 1, 1),
    ({"NUM_GPUS": 2, "PARALLEL": "DDP"}, 0, 1),  # no CUDA: one CPU process
]


@pytest.mark.parametrize(("values", "visible", "processes"), PROCESSES)
def test_processes_of_a_local_ddp_run(values: dict[str, Any], visible: int, processes: int) -> None:
    system = {k: v for k, v in values.items() if "." not in k}
    dataset = {"DISTRIBUTED": values.get("DATASET.DISTRIBUTED", False)}
    assert ddp_processes({"SYSTEM": system, "DATASET": dataset}, visible) == processes


def test_distributed_volumes_are_split_as_pytc_splits_files() -> None:
    assert distribute_volumes(["a", "b", "c"], 0, 2) == ["a", "b"]
    assert distribute_volumes(["a", "b", "c"], 1, 2) == ["c", "a"]
    assert distribute_volumes(["a"], 1, 2) == ["a"]
    assert distribute_volumes(["a", "b", "c", "d"], 1, 2) == ["c", "d"]


def test_validation_shards_cover_every_tile_once(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = resolve(tiny_config(tmp_path / "data", tmp_path / "out", SAMPLES_PER_BATCH=1))
    data = load_training_data(cfg)
    whole = [t.origin for b in validation_batches(cfg, data) for t in b.tiles]
    parts = [
        [t.origin for b in validation_batches(cfg, data, shard=(r, 3)) for t in b.tiles]
        for r in range(3)
    ]
    assert sorted(o for part in parts for o in part) == sorted(whole)
    assert len(whole) == count_validation_batches(cfg, data)


FAILURES = [
    # (exit code, report, words the message must hold, cause)
    (-9, {}, ("rank 1 of 2", "SIGKILL", "-9"), "resources"),
    (1, {}, ("rank 1 of 2", "exited with code 1"), "code"),
    (
        1,
        {
            "message": "out of memory",
            "hint": "lower SOLVER.SAMPLES_PER_BATCH",
            "cause": "resources",
        },
        ("rank 1 of 2 failed: out of memory",),
        "resources",
    ),
]


@pytest.mark.parametrize(("code", "report", "words", "cause"), FAILURES)
def test_a_rank_failure_names_the_rank_and_its_exit(
    code: int, report: dict[str, Any], words: tuple[str, ...], cause: str
) -> None:
    event = RankFailure(1, 2, code, report).event()
    for word in words:
        assert word in event["message"]
    assert event["cause"] == cause and event["hint"] and event["exit_code"] == code


# --- launched by the cluster (srun): every task runs the batch entry ------------------------


@pytest.mark.timeout(600)  # two Python processes importing torch; minutes on a loaded machine
def test_two_srun_tasks_train_as_one_run_and_only_rank0_writes(tmp_path: Path) -> None:
    job = ddp_job(tmp_path, 2, ITERATION_TOTAL=4, ITERATION_SAVE=4, ITERATION_VAL=4)
    job = replace(job, options={k: v for k, v in job.options.items() if k != "world_size"})
    job_file = tmp_path / "job.json"
    job_file.write_bytes(job.to_json())
    port = str(free_port())
    tasks = []
    for rank in (0, 1):
        env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2"}
        env |= {"SLURM_LOCALID": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        command = [sys.executable, "-m", "backend.trainer.batch", str(job_file)]
        tasks.append(subprocess.Popen(command, env=env, cwd=REPO))
    try:
        codes = [task.wait(timeout=600) for task in tasks]
    finally:
        for task in tasks:
            task.kill()
    assert codes == [0, 0]
    events = read_jsonl(job.log_path)
    types = [e["type"] for e in events]
    assert types.count("trainer_ready") == 1 and types.count("completed") == 1
    [ready] = [e["data"] for e in events if e["type"] == "trainer_ready"]
    assert ready["world_size"] == 2
    assert [e["data"]["iteration"] for e in events if e["type"] == "metric"] == [1, 2, 3, 4]


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "words"),
    [
        ({"NUM_GPUS": 4, "PARALLEL": "DDP"}, "training uses 2 GPU(s) in 2 DDP processes"),
        ({"NUM_GPUS": 4, "PARALLEL": "DP"}, "training uses 2 GPU(s) ("),
    ],
)
def test_more_gpus_than_visible_is_a_warning_saying_what_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: dict[str, Any], words: str
) -> None:
    monkeypatch.setattr(paths, "visible_gpus", lambda: 2)  # this machine has no GPU
    tree = tiny_config(tmp_path / "data", tmp_path / "out")
    tree["SYSTEM"] |= system
    problems = validate(load_config(yaml.safe_dump(tree)))
    [gpus] = [p for p in problems if p.key == "SYSTEM.NUM_GPUS"]
    assert gpus.level == "warning" and words in f"{gpus.message} ("
    assert not [p for p in problems if "accepted, not used" in p.message and "SYSTEM" in p.key]
