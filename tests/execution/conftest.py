"""Fixtures of the execution tests: a real single-node Slurm cluster (session scope)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.execution.slurm_cluster import SlurmCluster, missing_programs, shared_cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd for this machine, `SLURM_CONF` set for the session.
    Skips (naming what is missing) only where Slurm is not installed; CI installs it."""
    missing = missing_programs()
    if missing:
        pytest.skip(
            f"Slurm is not installed (missing: {', '.join(missing)}); "
            "`apt-get install slurm-wlm munge` (as .ci/run does) to run these tests"
        )
    with (
        shared_cluster(lambda: tmp_path_factory.mktemp("slurm")) as cluster,
        pytest.MonkeyPatch.context() as patch,
    ):
        for key, value in cluster.env.items():
            patch.setenv(key, value)
        yield cluster
