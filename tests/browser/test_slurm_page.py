"""The run page of a Slurm run: a real `trainboard serve --executor slurm` on the test
cluster, a job kept PENDING by another job holding every CPU, Debian's chromium."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import TOKEN, Server, create_run, shot, wait_run
from tests.execution.conftest import slurm_cluster  # noqa: F401  (the session's cluster)
from tests.execution.slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture
def slurm_server(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[Server]:  # noqa: F811
    live = Server(tmp_path, ("--executor", "slurm")).start()
    live.wait_demo()
    try:
        yield live
    finally:
        live.stop()


def test_a_pending_slurm_run_shows_its_reason_and_queue_position(
    chromium: Any,
    slurm_cluster: SlurmCluster,  # noqa: F811
    slurm_server: Server,
) -> None:
    blocker = slurm_cluster.hold_every_cpu()
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    try:
        run = create_run(slurm_server, "on slurm", extra=("SYSTEM.NUM_CPUS", "1"))
        run_id = run["run_id"]
        page = context.new_page()
        page.goto(f"{slurm_server.url}/?token={TOKEN}#/runs/{run_id}")
        pill = page.get_by_test_id("job-state")
        pill.filter(has_text="Pending: Resources (position 1)").wait_for(timeout=60_000)
        text = pill.inner_text()
        assert text.startswith("Slurm job ") and "Pending: Resources (position 1)" in text
        shot(page, "slurm-pending")
        slurm_server.api("POST", f"/api/runs/{run_id}/stop", {})
        wait_run(slurm_server, run_id, "Stopped", timeout=120)
        pill.wait_for(state="hidden", timeout=30_000)  # shown while Training only
    finally:
        context.close()
        subprocess.run(["scancel", blocker], check=False, timeout=30)
