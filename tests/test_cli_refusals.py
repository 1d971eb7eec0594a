"""The terminal says what a refusal means: another run's output folder, a busy server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from backend.cli import main
from backend.client_cli import explain
from backend.outputs import claim
from tests.trainer.helpers import tiny_config

OWNER = {"run_id": "aaaaaaaaaaaa", "name": "first"}

# One row per refusal: (code, details, what the lines must say).
EXPLAINED = [
    ("busy", {"training_run": "r1", "max_concurrent": 1}, ["r1 is training", "trainboard stop r1"]),
    (
        "output_in_use",
        {"output_path": "/d/out", "owner": OWNER, "proposed": "/d/out-2"},
        ["run aaaaaaaaaaaa (first)", "nothing was created", "/d/out-2", "--reuse-output"],
    ),
    (
        "output_in_use",
        {"output_path": "/d/out", "owner": {"run_id": None, "name": "an unknown run"}},
        ["of an unknown run"],
    ),
    ("illegal_command", {"state": "Idle", "legal_commands": ["start"]}, ["allowed now: start"]),
    ("not_found", {}, []),
]


@pytest.mark.parametrize(("code", "details", "said"), EXPLAINED)
def test_refusals_are_explained(code: str, details: dict[str, object], said: list[str]) -> None:
    text = "\n".join(explain(code, details))
    assert all(part in text for part in said), text
    assert bool(text) is bool(said)


def test_train_refuses_another_runs_folder_and_proposes_a_free_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "data", tmp_path / "out")))
    claim(str(tmp_path / "out"), "aaaaaaaaaaaa", "first")  # e.g. trained with another --db
    db = tmp_path / "events.db"
    assert main(["train", str(config), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert "belongs to run 'aaaaaaaaaaaa' (first)" in err
    assert f"DATASET.OUTPUT_PATH {tmp_path / 'out-2'}" in err
    assert not db.exists()  # refused before the store was touched
