"""Zoomed windows: an old stretch is read back from the log at full resolution, cuts and all."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend import events as ev
from backend.events import NewEvent
from backend.readmodels import zoom
from backend.readmodels.runpage import RunPage
from backend.readmodels.series import Series
from backend.runs import RunService
from backend.store import EventStore

pytestmark = pytest.mark.anyio

SPIKE_AT = 150


def loss(i: int, attempt: int) -> float:
    return 50.0 if (i, attempt) == (SPIKE_AT, 1) else attempt + 1 / i


async def write_resumed_run(service: RunService) -> str:
    """2,000 metrics, then a resumed attempt from iteration 800 to 2,400 (cutting 800+)."""
    run_id = (await service.create({"name": "zoom", "total_iterations": 2_400})).run_id
    await service.command(run_id, "start", {"attempt": 1})
    for attempt, first, last in ((1, 1, 2_000), (2, 800, 2_400)):
        batch = [
            NewEvent(ev.METRIC, {"iteration": i, "loss": loss(i, attempt), "lr": 0.1})
            for i in range(first, last + 1)
        ]
        batch.insert(len(batch) // 2, NewEvent(ev.LOG, {"message": "between the points"}))
        await service.record(run_id, batch)
    return run_id


def truth(x_from: int, x_to: int) -> list[tuple[int, float]]:
    """What a full-resolution chart of the run shows there: attempt 2 from 800 on."""
    return [(i, loss(i, 1 if i < 800 else 2)) for i in range(x_from, x_to + 1)]


async def small_page(store: EventStore, run_id: str) -> RunPage:
    """The run's page with a tiny pyramid (16 buckets a level, 2 levels): everything
    but the last few dozen points is only in the coarse overview."""
    page = RunPage(run_id)
    page.series = {name: Series(width=16, levels=2) for name in page.series}
    for event in await store.read_run(run_id):
        page.apply(event)
    return page


def points_of(buckets: list[list[float]]) -> list[tuple[float, float]]:
    return [(b[2], b[3]) for b in buckets]


@pytest.mark.parametrize(
    ("x_from", "x_to"),
    [(100, 200), (700, 900), (1_990, 2_100), (1, 2_400)],
    ids=["old stretch with a spike", "across the resume", "the cut-off end", "everything"],
)
async def test_an_old_window_is_read_back_at_full_resolution(
    tmp_path: Path, x_from: int, x_to: int
) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        run_id = await write_resumed_run(RunService(store))
        page = await small_page(store, run_id)
        assert page.series["loss"].overview_size > 32  # the pyramid alone is coarse here
        want = truth(x_from, x_to)
        answer = await zoom.window(store, page, "loss", x_from, x_to, points=4_096)
        assert answer.from_log and answer.level == 0
        assert points_of(answer.buckets) == want  # every point, the resumed values
        merged = await zoom.window(store, page, "loss", x_from, x_to, points=64)
        assert len(merged.buckets) <= 64 and sum(b[6] for b in merged.buckets) == len(want)
        assert max(b[5] for b in merged.buckets) == max(y for _, y in want)
        assert min(b[3] for b in merged.buckets) == min(y for _, y in want)


async def test_a_recent_window_comes_from_the_pyramid(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        run_id = await write_resumed_run(RunService(store))
        page = await small_page(store, run_id)
        answer = await zoom.window(store, page, "loss", 2_390, 2_400, points=64)
        assert not answer.from_log and answer.level == 0
        assert points_of(answer.buckets) == truth(2_390, 2_400)


async def test_a_window_too_wide_to_read_back_stays_coarse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zoom, "MAX_READ", 100)
    async with await EventStore.open(tmp_path / "events.db") as store:
        run_id = await write_resumed_run(RunService(store))
        page = await small_page(store, run_id)
        answer = await zoom.window(store, page, "loss", 100, 600, points=1_000)
        assert not answer.from_log and answer.level == -1
        assert max(b[5] for b in answer.buckets) == 50.0  # coarse, but the spike is kept


async def test_buckets_say_the_versions_and_the_time_they_cover(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        service = RunService(store)
        run_id = await write_resumed_run(service)
        events = {e.version: e for e in await store.read_run(run_id)}
        for bucket in (await service.page(run_id)).series["loss"].whole():
            first, last = events[int(bucket[7])], events[int(bucket[8])]
            assert (first.data["iteration"], last.data["iteration"]) == (bucket[0], bucket[1])
            assert bucket[9] == last.ts
