"""`python -m backend.trainer.batch JOB.json`: the trainer entry a batch job runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.execution.job import EVENTS_FILE, TrainJob

ROOT = Path(__file__).resolve().parents[2]


def write_job(tmp_path: Path, seconds: float) -> Path:
    job = TrainJob(
        run_id="batch0000001",
        attempt=3,
        config={"MONITOR": {"ITERATION_NUM": [10]}},
        output_path=str(tmp_path / "out"),
        log_path=str(tmp_path / "log"),
        options={"flush_interval": 0.05, "synthetic": {"rate": 100, "seconds": seconds}},
    )
    path = tmp_path / "job.json"
    path.write_bytes(job.to_json())
    return path


def entry(*args: str) -> list[str]:
    return [sys.executable, "-m", "backend.trainer.batch", *args]


def spool(tmp_path: Path) -> list[dict[str, object]]:
    text = (tmp_path / "log" / EVENTS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_job_runs_to_its_end_writing_only_the_spool(tmp_path: Path) -> None:
    done = subprocess.run(entry(str(write_job(tmp_path, 0.3))), cwd=ROOT, timeout=60)
    assert done.returncode == 0
    lines = spool(tmp_path)
    assert lines[-1]["type"] == "completed"
    assert {line["data"]["attempt"] for line in lines} == {3}  # type: ignore[index]
    assert (tmp_path / "log" / "train.log").is_file()


def test_sigterm_is_a_graceful_stop(tmp_path: Path) -> None:
    job = write_job(tmp_path, 0)  # until stopped
    process = subprocess.Popen(entry(str(job)), cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "log" / EVENTS_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        process.kill()
    assert spool(tmp_path)[-1]["type"] == "stopped"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "No such file"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"run_id": "r"}', "not a train job"),
        (b'{"run_id": "r", "bogus": 1}', "unknown train job field(s): bogus"),
    ],
)
def test_a_job_file_it_cannot_read_is_exit_2(
    tmp_path: Path, content: bytes | None, words: str
) -> None:
    path = tmp_path / "job.json"
    if content is not None:
        path.write_bytes(content)
    done = subprocess.run(entry(str(path)), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and words in done.stderr


def test_usage() -> None:
    done = subprocess.run(entry(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage" in done.stderr
