"""The executor contract (`tests/execution/contract.py`) for the local executor."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from backend.execution.local import LocalExecutor
from tests.execution.contract import *  # noqa: F403
from tests.execution.contract import Harness


def make_local(work: Path) -> LocalExecutor:
    return LocalExecutor()


def kill_local(handle: Mapping[str, Any]) -> None:
    os.kill(int(handle["pid"]), signal.SIGKILL)  # as the kernel's OOM killer would


@pytest.fixture
def executor_harness() -> Harness:
    return Harness(make=make_local, kill_job=kill_local)
