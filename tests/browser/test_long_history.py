"""A million-event run opens from its run page (curves drawn from the read model, then live)
and replays: scrubbing it stays responsive and shows the right iteration everywhere."""

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


SHORT_RUNS = 8


async def write_short_runs(service: RunService) -> list[str]:
    """Runs of 2,000 metrics that differ in their learning rate and their pace."""
    ids = []
    for k in range(SHORT_RUNS):
        config = f"SOLVER:\n  BASE_LR: {0.001 * (k + 1)}\n  ITERATION_TOTAL: 2000\n"
        created = await service.create({"name": f"lr-{k}", "config": config})
        await service.command(created.run_id, "start", {"attempt": 1})
        t0 = created.ts
        batch = [
            NewEvent(ev.METRIC, {"iteration": i, "loss": (k + 1) / i}, t0 + i * (k + 1) / 100)
            for i in range(1, 2_001)
        ]
        await service.record(created.run_id, batch)
        ids.append(created.run_id)
    return ids


async def write_long_run(db: Path) -> tuple[str, list[str]]:
    """One run of a million metrics through the real ingest path, eight short ones, then
    a snapshot set."""
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
        short = await write_short_runs(service)
        await snapshots.save(service, everything=True)
        return run_id, short


def requests_to(page: Any, needle: str) -> list[str]:
    """The URLs of the page's requests that contain `needle`, from now on."""
    urls: list[str] = []

    def seen(request: Any) -> None:
        if needle in request.url:
            urls.append(request.url)

    page.on("request", seen)
    return urls


def iteration_at(version: int) -> int:
    """The run's iteration after its first `version` events: created, started, then
    batches of 10,000 metrics and one log (then the end the server's start gave it)."""
    if version < 3:
        return 0
    batch, offset = divmod(version - 3, 10_001)
    return min(batch * 10_000 + min(offset + 1, 10_000), METRICS)


@pytest.fixture(scope="module")
def long_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, str, list[str]]]:
    server = Server(tmp_path_factory.mktemp("long"))
    server.data_root.mkdir()
    (server.data_root / "keep").write_text("not a first run: no demo")
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop holds this thread
        run_id, short = pool.submit(asyncio.run, write_long_run(server.db)).result()
    server.start(timeout=120)
    try:
        yield server, run_id, short
    finally:
        server.stop()


def test_a_million_event_run_page_draws_from_the_read_model(
    chromium: Any, long_server: tuple[Server, str, list[str]]
) -> None:
    server, run_id, _ = long_server
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

    # Zoom into an old stretch (2% of the run): the window comes at full resolution.
    series_reads = requests_to(page, "/series?")
    over = loss.locator(".u-over")
    box = over.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.40, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.42, y, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "() => Number(document.querySelector('figure.chart')?.dataset.windowPoints) > 0",
        timeout=30_000,
    )
    low, high = (int(v) for v in (loss.get_attribute("data-zoom") or "").split("-"))
    assert 0 < low < high and high - low < METRICS / 10
    in_page = sum(
        1 for b in answer["page"]["series"]["loss"]["buckets"] if low <= b[0] and b[1] <= high
    )
    window_points = int(loss.get_attribute("data-window-points") or 0)
    print(f"zoom={low}-{high} page_buckets={in_page} window_points={window_points}")
    assert window_points > 10 * max(in_page, 1)  # far finer than the page's overview
    assert series_reads and all(
        "name=loss" in u and "from=" in u and "to=" in u and "points=" in u for u in series_reads
    )
    context.close()
    assert not errors, errors


# A requestAnimationFrame heartbeat: the longest gap between two frames since installed.
HEARTBEAT = """() => {
  window.__maxGap = 0;
  let last = performance.now();
  const tick = (t) => { window.__maxGap = Math.max(window.__maxGap, t - last); last = t;
                        requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
}"""
SCRUB = """(v) => {
  const el = document.querySelector('[data-testid=replay-scrubber]');
  el.value = String(v);
  el.dispatchEvent(new Event('input', { bubbles: true }));
}"""
# A user dragging the scrubber across the whole run: an input event every frame.
DRAG = """async ([from, to, steps]) => {
  const el = document.querySelector('[data-testid=replay-scrubber]');
  for (let i = 0; i <= steps; i++) {
    el.value = String(Math.round(from + ((to - from) * i) / steps));
    el.dispatchEvent(new Event('input', { bubbles: true }));
    await new Promise((r) => requestAnimationFrame(r));
  }
}"""


def test_scrubbing_a_million_event_replay_stays_responsive(
    chromium: Any, long_server: tuple[Server, str, list[str]]
) -> None:
    server, run_id, _ = long_server
    total = server.api("GET", f"/api/runs/{run_id}")["run"]["version"]
    assert total > METRICS
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    event_pages = requests_to(page, "/events?")
    page.goto(f"{server.url}/?token={TOKEN}")
    page.wait_for_load_state("networkidle")  # the app's first route is chosen by then
    page.goto(f"{server.url}/#/runs/{run_id}?replay=1")
    scrubber = page.get_by_test_id("replay-scrubber")
    scrubber.wait_for(timeout=60_000)
    page.wait_for_function(
        f"() => document.querySelector('[data-testid=replay-scrubber]').max === '{total}'",
        timeout=60_000,
    )
    page.evaluate(HEARTBEAT)
    iteration = page.get_by_test_id("replay-iteration")
    index = page.get_by_test_id("replay-index")
    for position in (40, total // 2, total, total // 4, 0):  # start, middle, end, back
        page.evaluate(SCRUB, position)
        want = iteration_at(position)
        page.wait_for_function(
            "([want]) => document.querySelector('[data-testid=replay-iteration]')"
            ".textContent === String(want)",
            arg=[want],
            timeout=30_000,
        )
        assert iteration.inner_text() == str(want) and index.inner_text() == f"{position:,}"
        assert page.get_by_test_id("replay-play").is_enabled()
    page.evaluate(DRAG, [0, total, 120])
    page.wait_for_function(
        "([want]) => document.querySelector('[data-testid=replay-iteration]')"
        ".textContent === String(want)",
        arg=[METRICS],
        timeout=30_000,
    )
    max_gap = page.evaluate("window.__maxGap")
    print(f"replay_max_frame_gap_ms={max_gap:.0f} event_pages={len(event_pages)}")
    assert max_gap < 1_000, f"the page froze for {max_gap:.0f} ms"
    # Only windows around the positions were fetched, never the run's million events.
    assert event_pages and all("limit=2000" in url for url in event_pages)
    assert len(event_pages) * 2_000 < METRICS / 4
    # The curves are there at the end: drawn from the read model's buckets.
    assert int(page.locator("figure.chart").first.get_attribute("data-points") or 0) > 100
    context.close()
    assert not errors, errors


def test_compare_nine_runs_one_of_a_million_events(
    chromium: Any, long_server: tuple[Server, str, list[str]]
) -> None:
    server, long_id, short = long_server
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    event_reads = requests_to(page, "/events")
    page.goto(f"{server.url}/?token={TOKEN}")
    page.wait_for_load_state("networkidle")
    page.goto(f"{server.url}/#/compare?runs={','.join([*short, long_id])}")
    rows = page.locator("[data-testid=compare-runs] tbody tr")
    rows.first.wait_for(timeout=30_000)
    assert rows.count() == SHORT_RUNS + 1
    diff = page.locator("[data-testid=config-diff]")
    diff.wait_for(timeout=30_000)
    cells = diff.locator("tbody tr", has_text="SOLVER.BASE_LR").locator("td")
    page.wait_for_function(  # the table fills in as each run's config resolves
        "([n]) => [...document.querySelectorAll('[data-testid=config-diff] tbody tr')]"
        ".some((r) => r.textContent.includes('SOLVER.BASE_LR') && r.cells.length === n)",
        arg=[SHORT_RUNS + 1],
        timeout=30_000,
    )
    assert [c.strip() for c in cells.all_inner_texts()[1:]] == [
        str(round(0.001 * (k + 1), 3)) for k in range(SHORT_RUNS)
    ]  # the long run has no config to compare: left out, and said so
    assert "1 run(s) without a readable config" in page.inner_text("main")
    loss = page.locator("figure.chart").first
    page.wait_for_function(
        "() => Number(document.querySelector('figure.chart')?.dataset.points) > 0",
        timeout=30_000,
    )
    legend = loss.locator(".u-legend .u-series")
    assert legend.count() == SHORT_RUNS + 2  # the x axis, then one per run
    assert "iteration" in legend.first.inner_text()
    page.get_by_test_id("axis-time").click()
    page.wait_for_function(
        "() => document.querySelector('figure.chart .u-legend .u-series')"
        ".textContent.includes('wall time')"
    )
    assert int(loss.get_attribute("data-points") or 0) > 0
    page.goto(f"{server.url}/#/compare?a={short[0]}&b={short[1]}")  # the old links work
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=compare-runs] tbody tr').length === 2"
    )
    assert not event_reads, event_reads  # curves from the read model, never event lists
    context.close()
    assert not errors, errors
