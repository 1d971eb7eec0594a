"""The local executor with real spawned children (tiny targets, no torch): a slot's GPUs
reach the child's environment, and a server that does not read slows its child down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as StopFlag
from pathlib import Path

import orjson
import pytest

from backend.execution.executor import Slot
from backend.execution.job import TrainJob, apply_devices
from backend.execution.local import MAX_QUEUED_BATCHES, LocalAttempt, LocalExecutor

pytestmark = pytest.mark.anyio

FLOOD = 400  # messages of 4 KiB: far more than a pipe's buffer holds
TIMEOUT = 60.0


def line(data: dict[str, object]) -> bytes:
    return orjson.dumps({"type": "log", "ts": time.time(), "data": data}) + b"\n"


def report_devices(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    apply_devices(job)
    conn.send_bytes(line({"level": "info", "message": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    conn.close()


def flood(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    for n in range(1, FLOOD + 1):
        conn.send_bytes(line({"level": "info", "message": "x" * 4096, "n": n}))
    conn.close()


def job(tmp_path: Path) -> TrainJob:
    return TrainJob("r", 1, {}, str(tmp_path / "out"), str(tmp_path / "log"))


async def drain(attempt: LocalAttempt) -> list[tuple[str, dict[str, object], float]]:
    events = []
    async for batch in attempt.batches():
        events += batch
    return events


async def test_the_child_sees_only_its_slots_gpus(tmp_path: Path) -> None:
    executor = LocalExecutor(target=report_devices)
    for slot, seen in (
        (Slot(0, ("cuda:3",)), "3"),
        (Slot(1, ("cuda:0", "cuda:1")), "0,1"),
        (Slot(0, ("cpu",)), os.environ.get("CUDA_VISIBLE_DEVICES")),  # left as it is
    ):
        attempt = await executor.launch(job(tmp_path), slot)
        [(_, data, _)] = await asyncio.wait_for(drain(attempt), TIMEOUT)
        assert data["message"] == seen, slot
        assert (await attempt.exit_status()).code == 0
        assert attempt.handle["executor"] == "local" and attempt.handle["pid"] == attempt.pid


async def test_a_server_that_does_not_read_blocks_its_child(tmp_path: Path) -> None:
    attempt = await LocalExecutor(target=flood).launch(job(tmp_path), Slot(0, ("cpu",)))
    # Nobody consumes: the pump takes MAX_QUEUED_BATCHES messages, then waits, and the
    # child waits on its full pipe.
    deadline = time.monotonic() + TIMEOUT
    while attempt._queue.qsize() < MAX_QUEUED_BATCHES:
        assert time.monotonic() < deadline, "the pump did not fill its queue"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert attempt._queue.qsize() == MAX_QUEUED_BATCHES
    assert attempt.process.is_alive(), "the child should be blocked on the pipe"
    # Reading again lets everything through, in order, once.
    events = await asyncio.wait_for(drain(attempt), TIMEOUT)
    assert [data["n"] for _, data, _ in events] == list(range(1, FLOOD + 1))
    assert (await attempt.exit_status()).code == 0


async def test_stop_terminate_and_kill_never_raise_after_the_end(tmp_path: Path) -> None:
    attempt = await LocalExecutor(target=report_devices).launch(job(tmp_path), Slot(0, ("cpu",)))
    await asyncio.wait_for(drain(attempt), TIMEOUT)
    attempt.request_stop()
    attempt.terminate()
    attempt.kill()
    assert (await attempt.exit_status()).code == 0
    assert await LocalExecutor().reattach(job(tmp_path), attempt.handle, set()) is None


def report_environment(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    message = os.environ.get("TRAINBOARD_TEST_MARK")
    conn.send_bytes(line({"level": "info", "message": message, "ppid": os.getppid()}))
    conn.close()


def wait_for_orphanhood(job: TrainJob, conn: Connection, stop: StopFlag) -> None:
    """Report, then wait until re-parented (the server and its forkserver gone)."""
    parent = os.getppid()
    conn.send_bytes(line({"level": "info", "message": "up", "ppid": parent}))
    deadline = time.monotonic() + TIMEOUT
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(job.output_path).write_text("orphaned" if os.getppid() != parent else "kept")


async def test_a_child_sees_the_environment_of_its_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = LocalExecutor(target=report_environment)
    assert executor.context_for(job(tmp_path)).get_start_method() == "forkserver"
    for mark in ("first", "second"):  # the forkserver started with the first
        monkeypatch.setenv("TRAINBOARD_TEST_MARK", mark)
        attempt = await executor.launch(job(tmp_path), Slot(0, ("cpu",)))
        [(_, data, _)] = await asyncio.wait_for(drain(attempt), TIMEOUT)
        assert data["message"] == mark
        assert data["ppid"] != os.getpid(), "forked by the forkserver, not by this process"


def test_a_synthetic_child_is_spawned_without_the_forkserver(tmp_path: Path) -> None:
    synthetic = TrainJob("r", 1, {}, "out", "log", options={"synthetic": {"rate": 10}})
    assert LocalExecutor().context_for(synthetic).get_start_method() == "spawn"


SERVER = """
import asyncio, sys
from pathlib import Path
from backend.execution.executor import Slot
from backend.execution.job import TrainJob
from backend.execution.local import LocalExecutor
from tests.execution.test_local import wait_for_orphanhood, drain

async def main():
    job = TrainJob("r", 1, {}, sys.argv[1], sys.argv[2])
    attempt = await LocalExecutor(target=wait_for_orphanhood).launch(job, Slot(0, ("cpu",)))
    async for batch in attempt.batches():
        print(attempt.pid, flush=True)
        await asyncio.sleep(3600)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_the_child_of_a_killed_server_is_orphaned(tmp_path: Path) -> None:
    """Its forkserver exits with the server (the child holds none of its pipes), so the
    child sees its parent change, as a spawned child of a dead server does."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[2]
    server = subprocess.Popen(
        [sys.executable, str(script), str(out), str(tmp_path / "log")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        server.kill()
        server.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.read_text() == "orphaned", f"child {child} still has its forkserver"
    finally:
        server.kill()
