"""A million-event run opens from its run page: curves drawn from the read model, then live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from backend import events as ev
from backend.events import NewEvent
from backend.readmodels import snapshots
from backend.runs import RunService
from backend.store import EventStore
from tests.browser.helpers import TOKEN, Server

METRICS = 1_000_000
SPIKE_AT = 123_457  # one loss spike: the chart drawn from buckets must still show it


async def write_long_run(db: Path) -> str:
    """One run of a million metrics through the real ingest path, then a snapshot set."""
    async with await EventStore.open(db) as store:
        service = RunService(store)
        run_id = (await service.create({"name": "long", "total_iterations": METRICS})).run_id
        await service.command(run_id, "start", {"attempt": 1})
        for start in range(1, METRICS + 1, 10_000):
            batch = [
                NewEvent(ev.METRIC, {"iteration": i, "loss": 50.0 if i == SPIKE_AT else 1 / i})
                for i in range(start, start + 10_000)
            ]
            batch.append(NewEvent(ev.LOG, {"level": "info", "message": f"at {start + 9_999}"}))
            await service.record(run_id, batch)
        await snapshots.save(service, everything=True)
        return run_id


@pytest.fixture
def long_server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    server = Server(tmp_path)
    server.data_root.mkdir()
    (server.data_root / "keep").write_text("not a first run: no demo")
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop holds this thread
        run_id = pool.submit(asyncio.run, write_long_run(server.db)).result()
    server.start(timeout=120)
    try:
        yield server, run_id
    finally:
        server.stop()


def test_a_million_event_run_page_draws_from_the_read_model(
    chromium: Any, long_server: tuple[Server, str]
) -> None:
    server, run_id = long_server
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/?token={TOKEN}")
    began = time.perf_counter()
    page.goto(f"{server.url}/#/runs/{run_id}")
    loss = page.locator("figure.chart").first
    page.wait_for_function(
        "() => Number(document.querySelector('figure.chart')?.dataset.points) > 0", timeout=60_000
    )
    print(f"curves_drawn_s={time.perf_counter() - began:.3f} events={METRICS + 102}")
    points = int(loss.get_attribute("data-points") or 0)
    assert 0 < points <= 4_096  # the page's buckets, not a million points
    label = loss.get_attribute("aria-label") or ""
    assert f"up to iteration {METRICS}" in label, label
    # The spike is one point in a million; the page's buckets keep it.
    answer = server.api("GET", f"/api/runs/{run_id}/page")
    assert max(b[5] for b in answer["page"]["series"]["loss"]["buckets"]) == 50.0
    page.get_by_text(f"at {METRICS}").first.wait_for(timeout=10_000)  # the last log line
    context.close()
    assert not errors, errors
