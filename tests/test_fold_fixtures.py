"""The server's fold and the browser's (`frontend/src/lib/fold.js`) agree on shared logs.

Each `tests/fixtures/event_logs/*.json` holds a run's events and the summary fields both
folds must reach; `frontend/src/lib/fold.test.js` checks the browser's fold against the
same files, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backend.events import Event
from backend.projections import RunSummary, summarize

FIXTURES = Path(__file__).parent / "fixtures" / "event_logs"
LOGS = sorted(FIXTURES.glob("*.json"))


def shared_field(summary: RunSummary, key: str) -> Any:
    """A field as the API shows it (`to_json`), else the summary's own attribute."""
    shown = summary.to_json()
    if key == "problems":
        return len(summary.run.problems)
    if key in shown:
        return shown[key]
    if hasattr(summary, key):
        return getattr(summary, key)
    raise AssertionError(f"the server's RunSummary has no field {key!r} (contracts §1)")


def test_there_are_fixtures() -> None:
    assert len(LOGS) >= 4


@pytest.mark.parametrize("path", LOGS, ids=[p.stem for p in LOGS])
def test_server_fold_reaches_the_expected_summary(path: Path) -> None:
    fixture = json.loads(path.read_text())
    events = [Event(**e) for e in fixture["events"]]
    summary = summarize(events, fixture["run_id"])
    got = {key: shared_field(summary, key) for key in fixture["expected"]}
    assert got == fixture["expected"], fixture["description"]
