"""A sweep whose server is SIGKILLed mid-sweep and restarted ends with exactly its budget:
a real `trainboard serve` process, real trainer children training the tiny 2D U-Net."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backend.commands import run_id_for
from backend.experiments import sweeps as sw
from tests.server.live import ServeProcess, tiny_yaml, wait_for


def sweep_of(server: ServeProcess, sweep_id: str) -> dict[str, Any]:
    status, answer, _ = server.request("GET", f"/api/sweeps/{sweep_id}/trials")
    assert status == 200, answer
    return dict(answer)


@pytest.mark.timeout(600)
def test_a_sigkilled_sweep_ends_with_exactly_its_budget(tmp_path: Path) -> None:
    config = tiny_yaml(tmp_path / "data", "sweep", ITERATION_TOTAL=40, ITERATION_VAL=20)
    body = {
        "config": config,
        "overrides": ["SOLVER.ITERATION_SAVE", "10", "SOLVER.STEPS", "(30, 35)"],
        "space": {"SOLVER.BASE_LR": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "objective": "max_dice",
        "trials": 3,
        "sampler": "random",
        "seed": 1,
        "id": "sigkill-sweep",
    }
    server = ServeProcess(tmp_path).start()
    try:
        status, created, _ = server.request("POST", "/api/sweeps", body)
        assert status == 201, created
        sweep_id = created["sweep"]["sweep_id"]

        def second_training() -> bool:
            rows = sweep_of(server, sweep_id)["trials"]
            return len(rows) == 2 and rows[1]["run_state"] == "Training"

        wait_for(second_training, timeout=300, interval=0.2)
        server.kill()  # mid-sweep: trial 0 told, trial 1 training
    finally:
        server.stop()
    server = ServeProcess(tmp_path).start()
    try:
        ended = wait_for(
            lambda: sweep_of(server, sweep_id)["sweep"]["state"] == "Complete",
            timeout=400,
            interval=0.5,
        )
        assert ended
        table = sweep_of(server, sweep_id)
        rows = table["trials"]
        assert [r["number"] for r in rows] == [0, 1, 2]
        assert [r["run_id"] for r in rows] == [
            run_id_for(sw.trial_command_id(sweep_id, n)) for n in range(3)
        ]
        assert all(r["state"] == "complete" for r in rows), rows
        _, runs, _ = server.request("GET", "/api/runs")
        trial_runs = [r for r in runs["runs"] if (r.get("sweep") or {}).get("id") == sweep_id]
        assert len(trial_runs) == 3  # no trial lost, none twice
        assert {r["state"] for r in trial_runs} == {"Complete"}
        interrupted = next(r for r in trial_runs if r["run_id"] == rows[1]["run_id"])
        assert interrupted["attempts"] == 2  # resumed after the kill, not replaced
        counts = table["sweep"]
        assert (counts["asked"], counts["done"], counts["budget"]) == (3, 3, 3)
    finally:
        server.stop()
