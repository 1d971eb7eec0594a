"""Create requests become `created` data; a run's data becomes the job of one attempt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.config import load_config
from backend.events import ALL_TYPES
from backend.outputs import Owner, read_marker
from backend.runs import RunService
from backend.runspec import (
    InvalidConfig,
    InvalidRequest,
    OutputInUse,
    create_run,
    created_data,
    job_for,
)
from backend.store import EventStore
from tests.trainer.helpers import tiny_config

RUN = "0123456789ab"


def tree(tmp_path: Path, **solver: Any) -> dict[str, Any]:
    return tiny_config(tmp_path / "data", tmp_path / "out", **solver)


def body(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"config": yaml.safe_dump(tree(tmp_path)), **extra}


def test_created_data_holds_the_resolved_config_and_the_source(tmp_path: Path) -> None:
    request = body(tmp_path, name="tiny", overrides=["SOLVER.BASE_LR", "0.02"], seed=5)
    data = created_data(request, RUN)
    assert data["name"] == "tiny"
    assert data["source"] == {
        "config": request["config"],
        "base": None,
        "overrides": ["SOLVER.BASE_LR", "0.02"],
    }
    values = load_config(text=data["config"]).values
    assert values["SOLVER"]["BASE_LR"] == 0.02  # the override is in the resolved YAML
    assert values["SOLVER"]["GAMMA"] == 0.1  # and every default
    assert data["output_path"] == str(tmp_path / "out")
    assert data["log_path"] == str(tmp_path / "out" / "log" / RUN)  # one folder per run
    assert data["seed"] == 5
    assert data["total_iterations"] == 24
    assert all(w["level"] == "warning" for w in data["warnings"])


def test_a_base_and_a_given_log_path(tmp_path: Path) -> None:
    base = yaml.safe_dump(tree(tmp_path))
    overlay = "SOLVER:\n  ITERATION_TOTAL: 30\n"
    data = created_data({"config": overlay, "base": base, "log_path": str(tmp_path / "logs")}, RUN)
    assert data["total_iterations"] == 30
    assert data["log_path"] == str(tmp_path / "logs")
    assert data["source"]["base"] == base
    assert data["name"].startswith("out ")  # the output folder and the time


def test_relative_paths_become_absolute_from_the_base_dir(tmp_path: Path) -> None:
    config = tree(tmp_path)
    config["DATASET"]["INPUT_PATH"] = "data"
    config["DATASET"]["OUTPUT_PATH"] = "out"
    data = created_data(
        {"config": yaml.safe_dump(config), "log_path": "logs/a"}, RUN, base_dir=tmp_path
    )
    values = load_config(text=data["config"]).values
    assert values["DATASET"]["INPUT_PATH"] == str(tmp_path / "data")
    assert values["DATASET"]["OUTPUT_PATH"] == data["output_path"] == str(tmp_path / "out")
    assert data["log_path"] == str(tmp_path / "logs" / "a")


def test_every_config_error_is_reported_at_once(tmp_path: Path) -> None:
    config = tree(tmp_path)
    config["SOLVER"]["BASE_LR"] = "fast"
    config["MODEL"]["FILTERZ"] = [4]
    config["DATASET"]["IMAGE_NAME"] = "missing.npy"
    with pytest.raises(InvalidConfig) as raised:
        created_data({"config": yaml.safe_dump(config), "overrides": ["SOLVER.NAME"]}, RUN)
    keys = {p.key for p in raised.value.errors}
    assert {"SOLVER.BASE_LR", "MODEL.FILTERZ", "DATASET.IMAGE_NAME", "SOLVER.NAME"} <= keys
    assert all(p["level"] in ("error", "warning") for p in raised.value.to_json())
    assert "error(s)" in str(raised.value)


def test_paths_are_only_checked_when_asked(tmp_path: Path) -> None:
    config = tree(tmp_path)
    config["DATASET"]["INPUT_PATH"] = str(tmp_path / "nowhere")
    text = yaml.safe_dump(config)
    with pytest.raises(InvalidConfig):
        created_data({"config": text}, RUN)
    assert created_data({"config": text}, RUN, check_paths=False)["config"]


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ([], "JSON object"),
        ({}, "'config'"),
        ({"config": 3}, "'config'"),
        ({"config": "", "overrides": "SOLVER.BASE_LR 0.1"}, "'overrides'"),
        ({"config": "", "overrides": [["SOLVER.BASE_LR", "0.1"]]}, "'overrides'"),
        ({"config": "", "name": 7}, "'name'"),
        ({"config": "", "seed": -1}, "'seed'"),
        ({"config": "", "seed": True}, "'seed'"),
        ({"config": "", "seed": 1.5}, "'seed'"),
        ({"config": "", "reuse_output": "yes"}, "'reuse_output' must be true or false"),
        ({"config": "", "start": 1}, "'start' must be true or false"),
        ({"config": "", "overide": []}, "unknown field 'overide'.*did you mean 'overrides'"),
        ({"config": "", "lr": 0.1}, "unknown field 'lr' in the create request; the fields are"),
    ],
)
def test_malformed_requests_are_refused(request_body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        created_data(request_body, RUN)


def test_job_for_loads_the_stored_config_back(tmp_path: Path) -> None:
    data = created_data(body(tmp_path, seed=9), RUN)
    own = ["/ck.pth.tar", "/ck0.pth.tar"]
    job = job_for(RUN, data, 2, "/ck.pth.tar", {"threads": 1}, own_checkpoints=own)
    assert job.run_id == RUN and job.attempt == 2 and job.seed == 9
    assert job.own_checkpoints == ("/ck.pth.tar", "/ck0.pth.tar")
    assert job.config == load_config(text=data["config"]).values
    assert job.output_path == data["output_path"] and job.log_path == data["log_path"]
    assert job.resume_from == "/ck.pth.tar" and job.options == {"threads": 1}


@pytest.mark.anyio
async def test_create_run_stores_valid_runs_only(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        service = RunService(store)
        event = await create_run(service, body(tmp_path))
        assert event.type in ALL_TYPES and event.type == "created"
        assert event.data["log_path"].endswith(os.sep + event.run_id)
        assert service.get(event.run_id).state == "Idle"
        with pytest.raises(InvalidConfig):
            await create_run(service, {"config": "SOLVER:\n  BASE_LR: fast\n"})
        assert len(service.runs) == 1 and store.last_seq == 1
    finally:
        await store.close()


def test_another_runs_folder_is_refused_unless_reused_on_purpose(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "checkpoint_00010.pth.tar").write_bytes(b"x")
    with pytest.raises(OutputInUse) as refused:
        created_data(body(tmp_path), RUN)
    assert refused.value.details() == {
        "output_path": str(tmp_path / "out"),
        "owner": {"run_id": None, "name": refused.value.owner.name},
        "proposed": str(tmp_path / "out-2"),
    }
    warnings = created_data(body(tmp_path, reuse_output=True), RUN)["warnings"]
    [warning] = [w for w in warnings if w["key"] == "DATASET.OUTPUT_PATH"]
    assert "1 checkpoint file(s)" in warning["message"] and "reused" in warning["message"]
    assert "own OUTPUT_PATH" in warning["suggestion"]


@pytest.mark.anyio
async def test_create_run_claims_its_folder_for_itself_only(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        service = RunService(store)
        first = await create_run(service, body(tmp_path, name="first"))
        assert read_marker(str(tmp_path / "out")) == {"run_id": first.run_id, "name": "first"}
        # Its own folder is no conflict for it (a resume, a repeated create).
        assert created_data(body(tmp_path), first.run_id, runs=service.runs)
        with pytest.raises(OutputInUse) as refused:
            await create_run(service, body(tmp_path, name="second"))
        assert refused.value.owner == Owner(first.run_id, "first", "Idle")
        second = await create_run(service, body(tmp_path, name="second", reuse_output=True))
        assert read_marker(str(tmp_path / "out"))["run_id"] == second.run_id  # type: ignore[index]
        assert store.last_seq == 2
    finally:
        await store.close()
