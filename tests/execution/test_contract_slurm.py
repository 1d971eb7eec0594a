"""The executor contract (`tests/execution/contract.py`) for the Slurm executor, on the
real single-node cluster of `conftest.slurm_cluster`."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from backend.execution.slurm import SlurmExecutor
from tests.execution.contract import *  # noqa: F403
from tests.execution.contract import Harness
from tests.execution.slurm_cluster import SlurmCluster


def make_slurm(work: Path) -> SlurmExecutor:
    return SlurmExecutor(poll_s=0.5)


def kill_slurm(handle: Mapping[str, Any]) -> None:
    """SIGKILL to every process of the job, as an out-of-memory kill would: no final event."""
    subprocess.run(
        ["scancel", "--signal=KILL", "--full", str(handle["job_id"])], check=True, timeout=30
    )


@pytest.fixture
def executor_harness(slurm_cluster: SlurmCluster) -> Harness:
    return Harness(make=make_slurm, kill_job=kill_slurm)
