"""The Slurm executor against a real single-node Slurm cluster (`slurm_cluster`).

Each run is a real batch job (`sbatch`) running `python -m backend.trainer.batch`; the
server side is a real `RunService` on a real SQLite store with a `Supervisor` on the
`SlurmExecutor`. The synthetic trainer keeps the set short; real training on Slurm
(start, stop and resume, a server crash, a killed job) is the contract suite's,
`test_contract_slurm.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend import events as ev
from backend import runspec
from backend.events import Event
from backend.execution.job import EVENTS_FILE, TrainJob
from backend.execution.reconcile import reconcile
from backend.execution.slurm import (
    JOB_FILE,
    SCRIPT_FILE,
    SlurmExecutor,
    explain_state,
)
from backend.execution.supervisor import Supervisor
from backend.fsm.machine import State
from backend.runs import RunService
from backend.store import EventStore
from tests.execution.slurm_cluster import SlurmCluster
from tests.server.live import LiveServer, make_settings, tiny_yaml, wait_for
from tests.trainer.helpers import tiny_config

pytestmark = pytest.mark.anyio

TIMEOUT = 120.0
SYNTHETIC = {"flush_interval": 0.05, "synthetic": {"rate": 200, "seconds": 0}}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunService]:
    store = await EventStore.open(tmp_path / "events.db")
    svc = RunService(store)
    await svc.load()
    yield svc
    await store.close()


def executor() -> SlurmExecutor:
    return SlurmExecutor(poll_s=0.5)


def supervisor_for(service: RunService, options: dict[str, Any]) -> Supervisor:
    return Supervisor(
        service,
        executor=executor(),
        job_options=options,
        stop_grace_s=20.0,
        kill_grace_s=5.0,
    )


async def create(service: RunService, tmp_path: Path, **solver: Any) -> str:
    tree = tiny_config(tmp_path / "data", tmp_path / "out", **solver)
    tree["SYSTEM"]["NUM_CPUS"] = 1
    request = {"config": yaml.safe_dump(tree), "name": "slurm"}
    return (await runspec.create_run(service, request)).run_id


async def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} within {TIMEOUT:.0f} s")


async def stored(service: RunService, run_id: str) -> list[Event]:
    return await service.store.read_run(run_id)


def job_id_of(events: list[Event]) -> str:
    [launch] = [e for e in events if e.type == ev.LOG and e.data.get("executor") == "slurm"]
    return str(launch.data["job_id"])


def spool_lines(service: RunService, run_id: str) -> list[dict[str, Any]]:
    path = Path(service.get(run_id).log_path or "") / EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_matches_spool(service: RunService, run_id: str, events: list[Event]) -> None:
    """Every trainer event of the spool is stored once, in order, byte-equal data."""
    numbered = [(e.type, e.data["n"]) for e in events if "n" in e.data]
    assert [n for _, n in numbered] == list(range(1, len(numbered) + 1))
    spool = [(line["type"], line["data"]["n"]) for line in spool_lines(service, run_id)]
    assert numbered == spool


def states(events: list[Event]) -> list[str]:
    return [e.data["state"] for e in events if e.type == ev.JOB_STATE]


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


# --- training on Slurm ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_run_completes_as_a_batch_job_of_our_entry_point(
    slurm_cluster: SlurmCluster, tmp_path: Path, service: RunService
) -> None:
    """(Real training on Slurm is the contract suite's, test_contract_slurm.py.)"""
    options = {**SYNTHETIC, "synthetic": {"rate": 200, "seconds": 1}}
    supervisor = supervisor_for(service, options)
    run_id = await create(service, tmp_path)
    await supervisor.start(run_id)
    assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.COMPLETE
    events = await stored(service, run_id)
    job_id = job_id_of(events)
    assert_matches_spool(service, run_id, events)
    types = [e.type for e in events]
    assert types[-1] == ev.COMPLETED and types.count(ev.COMPLETED) == 1
    assert "RUNNING" in states(events)
    log_dir = Path(service.get(run_id).log_path or "")
    # The job ran our entry point on the job file, from the run's log folder.
    assert TrainJob.from_json((log_dir / JOB_FILE).read_bytes()).run_id == run_id
    assert "backend.trainer.batch" in (log_dir / SCRIPT_FILE).read_text()
    assert (log_dir / f"slurm-{job_id}.out").exists()
    job = slurm("scontrol", "show", "job", "-o", job_id)
    assert f"WorkDir={log_dir} " in job and "ExitCode=0:0" in job


@pytest.mark.slow
async def test_a_stop_is_a_graceful_term_and_ends_stopped(
    slurm_cluster: SlurmCluster, tmp_path: Path, service: RunService
) -> None:
    """(That the stop checkpoints real training is the contract suite's.)"""
    supervisor = supervisor_for(service, SYNTHETIC)
    run_id = await create(service, tmp_path)
    await supervisor.start(run_id)
    await until(lambda: service.get(run_id).iteration, "a synthetic iteration")
    await supervisor.stop(run_id)
    assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.STOPPED
    events = await stored(service, run_id)
    assert events[-1].type == ev.STOPPED and not events[-1].data.get("forced")
    assert ev.STOP_ESCALATED not in [e.type for e in events]
    assert_matches_spool(service, run_id, events)
    # `scancel --signal=TERM --full` is a graceful stop: the job itself ended well (once
    # Slurm has finished COMPLETING it: its state may lag the job's last line).
    job_id = job_id_of(events)

    def settled() -> str | None:
        job = slurm("scontrol", "show", "job", "-o", job_id)
        return None if "JobState=COMPLETING" in job or "JobState=RUNNING" in job else job

    job = await until(settled, "the stopped job's final state")
    assert "JobState=COMPLETED" in job and "ExitCode=0:0" in job


@pytest.mark.slow
async def test_ddp_on_slurm_is_one_srun_task_per_rank(
    slurm_cluster: SlurmCluster, tmp_path: Path, service: RunService
) -> None:
    """Two gloo ranks on the CPU, each a task of `srun` in one job: the run trains to
    Complete, rank 0 alone reporting (each event once), and the world is Slurm's."""
    supervisor = supervisor_for(service, {"flush_interval": 0.05, "threads": 1, "world_size": 2})
    run_id = await create(service, tmp_path, ITERATION_TOTAL=6, ITERATION_SAVE=6, ITERATION_VAL=6)
    await supervisor.start(run_id)
    assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.COMPLETE
    events = await stored(service, run_id)
    assert_matches_spool(service, run_id, events)
    [ready] = [e for e in events if e.type == ev.TRAINER_READY]
    assert ready.data["world_size"] == 2
    assert service.get(run_id).iteration == 6
    # (Its exit code is not asserted: a job still tearing its ranks down 10 s after the
    # final event is killed by the supervisor, which a loaded machine may well see.)
    assert "NumTasks=2" in slurm("scontrol", "show", "job", "-o", job_id_of(events))


# --- the server's death, and Slurm's own decisions ------------------------------------------

_SERVER = """
import asyncio, sys, time
from backend import runspec
from backend.execution.slurm import SlurmExecutor
from backend.execution.supervisor import Supervisor
from backend.runs import RunService
from backend.store import EventStore

async def main(db, run_id):
    store = await EventStore.open(db)
    service = RunService(store)
    await service.load()
    options = {"flush_interval": 0.05, "synthetic": {"rate": 100, "seconds": 6}}
    supervisor = Supervisor(service, executor=SlurmExecutor(poll_s=0.5), job_options=options)
    await supervisor.start(run_id)
    while service.get(run_id).iteration < 50:
        await asyncio.sleep(0.05)
    print("training", flush=True)
    await asyncio.sleep(3600)  # until SIGKILL

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def killed_server(db: Path, tmp_path: Path, script: str, ready: bytes) -> str:
    """Create a run in `db`, serve it with `script` in a process of its own until that
    prints `ready`, then SIGKILL the process; the run's id."""
    store = await EventStore.open(db)
    service = RunService(store)
    await service.load()
    run_id = await create(service, tmp_path)
    await store.close()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        str(db),
        run_id,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), TIMEOUT) == ready
    finally:
        server.send_signal(signal.SIGKILL)
        await server.wait()
    return run_id


@pytest.mark.slow
async def test_a_server_killed_during_a_job_reconciles_by_job_id(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """A server process dies by SIGKILL while its run's job trains; a new one on the same
    store follows the job again by its id and ingests what it wrote meanwhile: every
    event once, nothing lost."""
    db = tmp_path / "events.db"
    run_id = await killed_server(db, tmp_path, _SERVER, b"training\n")

    store = await EventStore.open(db)
    try:
        service = RunService(store)
        await service.load()
        before = await stored(service, run_id)
        assert service.get(run_id).state is State.TRAINING
        job_id = job_id_of(before)
        # The job lives on without its server.
        assert slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip() == "RUNNING"

        supervisor = supervisor_for(service, SYNTHETIC)
        assert await reconcile(service, supervisor) == [run_id]
        assert supervisor.training() == [run_id]
        assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.COMPLETE
        events = await stored(service, run_id)
        assert len(events) > len(before)
        assert_matches_spool(service, run_id, events)
        assert [e.type for e in events].count(ev.COMPLETED) == 1
        # Reconciling again finds nothing to do and appends nothing.
        assert await reconcile(service, supervisor) == []
        assert len(await stored(service, run_id)) == len(events)
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_job_cancelled_behind_our_back_ends_in_error_with_a_hint(
    slurm_cluster: SlurmCluster, tmp_path: Path, service: RunService
) -> None:
    supervisor = supervisor_for(service, SYNTHETIC)
    run_id = await create(service, tmp_path)
    await supervisor.start(run_id)
    await until(lambda: service.get(run_id).iteration, "a synthetic iteration")
    job_id = job_id_of(await stored(service, run_id))
    slurm("scancel", job_id)  # SIGTERM from Slurm: the trainer stops cleanly...
    assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.ERROR
    events = await stored(service, run_id)
    final = events[-1]
    # ...but nobody asked Trainboard to stop: the run failed, and says why.
    assert final.type == ev.FAILED
    assert final.data["slurm_state"] == "CANCELLED"
    assert "cancelled outside Trainboard" in final.data["message"]
    assert "resume" in final.data["hint"]
    cancelled = [e for e in events if e.type == ev.JOB_STATE and e.data["state"] == "CANCELLED"]
    assert cancelled and "resume" in cancelled[0].data["hint"]
    # The spool's `stopped` became that `failed`, under the same number.
    numbers = [e.data["n"] for e in events if "n" in e.data]
    assert numbers == [line["data"]["n"] for line in spool_lines(service, run_id)]
    assert "resume" in service.get(run_id).run.legal_commands()


@pytest.mark.slow
async def test_a_pending_job_shows_slurms_reason_and_a_stop_cancels_it(
    slurm_cluster: SlurmCluster, tmp_path: Path, service: RunService
) -> None:
    """Another job holds every CPU: the run's job waits, PENDING (Resources), first in
    the queue; stopping it then cancels the job, and the run ends Stopped."""
    blocker = slurm_cluster.hold_every_cpu()
    try:
        await until(
            lambda: slurm("squeue", "-h", "-j", blocker, "-o", "%T").strip() == "RUNNING",
            "the blocking job running",
        )
        supervisor = supervisor_for(service, SYNTHETIC)
        run_id = await create(service, tmp_path)
        await supervisor.start(run_id)

        def pending() -> dict[str, Any] | None:
            fact = service.get(run_id).job_state
            return fact if fact and fact.get("reason") == "Resources" else None

        fact = await until(pending, "a PENDING job_state with Slurm's reason")
        assert fact["state"] == "PENDING" and fact["position"] == 1
        assert fact["executor"] == "slurm" and "resources" in fact["hint"]
        await supervisor.stop(run_id)
        assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.STOPPED
        events = await stored(service, run_id)
        assert events[-1].data.get("forced") and events[-1].data["checkpoint"] is None
        job = slurm("scontrol", "show", "job", "-o", job_id_of(events))
        assert "JobState=CANCELLED" in job
        assert ev.TRAINER_READY not in [e.type for e in events]  # it never ran
    finally:
        slurm("scancel", blocker)


_STOPPING_SERVER = """
import asyncio, sys
from backend.execution.slurm import SlurmExecutor
from backend.execution.supervisor import Supervisor
from backend.runs import RunService
from backend.store import EventStore

async def main(db, run_id):
    store = await EventStore.open(db)
    service = RunService(store)
    await service.load()
    options = {"flush_interval": 0.05, "synthetic": {"rate": 100, "seconds": 0}}
    supervisor = Supervisor(service, executor=SlurmExecutor(poll_s=0.5), job_options=options)
    await supervisor.start(run_id)
    while (service.get(run_id).job_state or {}).get("state") != "PENDING":
        await asyncio.sleep(0.05)
    # The stop is recorded, and the server dies before it reaches Slurm.
    await service.command(run_id, "stop", {"deadline_s": 20.0})
    print("stopping", flush=True)
    await asyncio.sleep(3600)  # until SIGKILL

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
async def test_a_stop_under_way_when_the_server_died_is_carried_on_after_reattach(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """A stop was recorded but the server died before Slurm heard of it: the server that
    follows the job again carries the stop on, and the run ends Stopped as asked, not as
    a job cancelled outside Trainboard."""
    blocker = slurm_cluster.hold_every_cpu()
    try:
        db = tmp_path / "events.db"
        run_id = await killed_server(db, tmp_path, _STOPPING_SERVER, b"stopping\n")

        store = await EventStore.open(db)
        try:
            service = RunService(store)
            await service.load()
            assert service.get(run_id).run.stopping
            supervisor = supervisor_for(service, SYNTHETIC)
            assert await reconcile(service, supervisor) == [run_id]
            assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.STOPPED
            events = await stored(service, run_id)
            assert ev.FAILED not in [e.type for e in events]
            job = slurm("scontrol", "show", "job", "-o", job_id_of(events))
            assert "JobState=CANCELLED" in job
        finally:
            await store.close()
    finally:
        slurm("scancel", blocker)


@pytest.mark.slow
async def test_a_job_no_node_can_run_says_so(
    slurm_cluster: SlurmCluster, tmp_path: Path, service: RunService
) -> None:
    """More CPUs than the node has: Slurm keeps the job PENDING (PartitionConfig) for
    ever; the fact says what to change."""
    supervisor = supervisor_for(service, SYNTHETIC)
    tree = tiny_config(tmp_path / "data", tmp_path / "out")
    tree["SYSTEM"]["NUM_CPUS"] = slurm_cluster.cpus + 1
    created = await runspec.create_run(service, {"config": yaml.safe_dump(tree), "name": "big"})
    run_id = created.run_id
    await supervisor.start(run_id)

    def stuck() -> dict[str, Any] | None:
        fact = service.get(run_id).job_state
        return fact if fact and fact.get("reason") == "PartitionConfig" else None

    fact = await until(stuck, "a PENDING job_state saying PartitionConfig")
    assert "SYSTEM.NUM_CPUS" in fact["hint"] and "--slurm-partition" in fact["hint"]
    await supervisor.stop(run_id)
    assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.STOPPED


@pytest.mark.slow
async def test_a_job_sbatch_refuses_ends_the_run_in_error_with_its_words(
    slurm_cluster: SlurmCluster, tmp_path: Path, service: RunService
) -> None:
    supervisor = Supervisor(service, executor=SlurmExecutor(partition="nosuch"))
    run_id = await create(service, tmp_path)
    await supervisor.start(run_id)
    assert await asyncio.wait_for(supervisor.wait(run_id), TIMEOUT) is State.ERROR
    failed = (await stored(service, run_id))[-1]
    assert failed.type == ev.FAILED
    assert "sbatch failed" in failed.data["message"]
    assert "invalid partition" in failed.data["message"].lower()


@pytest.mark.slow
def test_a_server_on_the_slurm_executor_shows_a_pending_job_then_completes(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """`Settings.executor` (serve --executor slurm) is the server's: over REST, a run whose
    job waits shows Slurm's reason and its queue position, then trains once the CPUs free."""
    options = {**SYNTHETIC, "synthetic": {"rate": 200, "seconds": 1}}
    settings = make_settings(tmp_path, executor=executor(), job_options=options)
    blocker = slurm_cluster.hold_every_cpu()
    server = LiveServer(settings).start()
    try:
        config = tiny_yaml(settings.data_root, "queued")
        status, body, _ = server.request(
            "POST", "/api/runs", {"config": config, "name": "queued", "start": True}
        )
        assert status == 201, body
        run_id = body["run"]["run_id"]

        def job_state() -> dict[str, Any] | None:
            fact = server.request("GET", f"/api/runs/{run_id}")[1]["run"]["job_state"]
            return fact if fact and fact.get("reason") == "Resources" else None

        fact = wait_for(job_state, TIMEOUT)
        assert fact["state"] == "PENDING" and fact["position"] == 1
        slurm("scancel", blocker)

        def ended() -> Any:
            run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
            return run if run["state"] != "Training" else None

        run = wait_for(ended, TIMEOUT)
        assert run["state"] == "Complete" and run["job_state"]["job_id"] == fact["job_id"]
    finally:
        server.stop()
        subprocess.run(["scancel", blocker], check=False, timeout=30)


# --- what the executor asks of Slurm --------------------------------------------------------


def job(tmp_path: Path, **system: Any) -> TrainJob:
    return TrainJob("r1", 2, {"SYSTEM": system}, str(tmp_path / "out"), str(tmp_path / "log"))


@pytest.mark.parametrize(
    ("system", "expected", "srun"),
    [
        ({"NUM_GPUS": 0, "NUM_CPUS": 0}, ["--ntasks-per-node=1", "--cpus-per-task=1"], False),
        ({"NUM_GPUS": 1, "NUM_CPUS": 4}, ["--gpus-per-node=1", "--cpus-per-task=4"], False),
        ({"NUM_GPUS": 2, "NUM_CPUS": 2}, ["--ntasks-per-node=1", "--gpus-per-node=2"], False),
        (
            {"NUM_GPUS": 4, "NUM_CPUS": 8, "PARALLEL": "DDP"},
            ["--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8"],
            True,
        ),
    ],
)
def test_resources_come_from_the_config(
    tmp_path: Path, system: dict[str, int], expected: list[str], srun: bool
) -> None:
    slurm_executor = SlurmExecutor("gpu", "lab", "02:00:00", "--qos=high --mem=32G")
    args = slurm_executor.sbatch_args(job(tmp_path, **system))
    assert set(expected) <= set(args)
    assert args[0] == "--parsable" and "--no-requeue" in args
    assert {"--partition=gpu", "--account=lab", "--time=02:00:00"} <= set(args)
    assert args[-2:] == ["--qos=high", "--mem=32G"]
    assert f"--output={tmp_path / 'log'}/slurm-%j.out" in args
    script = slurm_executor.script(job(tmp_path, **system))
    assert ("exec srun" in script) is srun
    assert f"backend.trainer.batch {tmp_path / 'log' / JOB_FILE}" in script


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ("TIMEOUT", "time limit"),
        ("NODE_FAIL", "node"),
        ("OUT_OF_MEMORY", "memory"),
        ("PREEMPTED", "preempted"),
        ("CANCELLED", "outside Trainboard"),
        ("UNKNOWN", "no longer knows"),
    ],
)
def test_every_ending_slurm_decides_has_a_message_and_a_hint(state: str, words: str) -> None:
    message, hint = explain_state(state, "42")
    assert message and words in message and "42" in message
    assert hint and ("resume" in hint or "memory" in hint)


# --- trainboard serve --executor slurm ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "path", "words"),
    [
        (["--executor", "slurm"], "/nonexistent", "needs Slurm's sbatch on PATH"),
        (["--slurm-time", "1:00:00"], None, "need --executor slurm"),
        (["--executor", "slurm", "--slurm-extra", "'--qos"], None, "not a valid shell-quoted"),
    ],
)
def test_serve_refuses_a_slurm_it_cannot_use(
    tmp_path: Path, args: list[str], path: str | None, words: str
) -> None:
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-m", "backend", "serve", "--db", str(tmp_path / "e.db"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and words in done.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
