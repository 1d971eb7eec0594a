"""The run page's read model: bounded series that keep every extreme, and a seq to go on from."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from backend import events as ev
from backend.events import NewEvent
from backend.hub import Hub, Outbox, Subscription
from backend.readmodels.series import Series
from backend.runs import RunService
from backend.store import EventStore


def extremes_hold(series: Series, points: list[tuple[float, float]]) -> None:
    """Every bucket's min/max are the true extremes of the points it covers."""
    for bucket in series.whole():
        x0, x1, x_lo, y_lo, x_hi, y_hi, n, *_ = bucket
        inside = [(x, y) for x, y in points if x0 <= x <= x1]
        assert len(inside) == n
        assert y_lo == min(y for _, y in inside) and (x_lo, y_lo) in inside
        assert y_hi == max(y for _, y in inside) and (x_hi, y_hi) in inside


@pytest.mark.parametrize("n", [1, 7, 64, 1_000, 20_000])
def test_series_is_bounded_and_keeps_every_extreme(n: int) -> None:
    rng = random.Random(n)
    series = Series(width=16, levels=4)
    points = [
        (float(i), rng.gauss(0, 1) + (50.0 if rng.random() < 0.001 else 0.0)) for i in range(n)
    ]
    for x, y in points:
        series.add(x, y)
    whole = series.whole()
    assert len(whole) <= 2 * 16 + 1
    assert sum(b[6] for b in whole) == n == series.count
    assert max(b[5] for b in whole) == max(y for _, y in points)  # the spike survives
    assert min(b[3] for b in whole) == min(y for _, y in points)
    extremes_hold(series, points)
    # Each level holds the latest points at its resolution, bounded too.
    for k, level in enumerate(series.levels):
        assert len(level) <= 16 and all(b[6] == 2**k for b in level)
    assert [b[0] for b in series.levels[0]] == [x for x, _ in points[-16:]]


def test_a_window_is_served_from_the_finest_level_that_covers_it() -> None:
    series = Series(width=16, levels=4)
    for i in range(1_000):
        series.add(float(i), float(i % 10))
    level, raw = series.window(990, 999)
    assert level == 0 and [b[0] for b in raw] == [float(i) for i in range(990, 1000)]
    level, coarse = series.window(900, 999)
    assert level == 3 and sum(b[6] for b in coarse) >= 100
    level, everything = series.window(0, 999)
    assert level == -1 and sum(b[6] for b in everything) == 1_000


def test_a_resume_cuts_the_series_where_it_restarts() -> None:
    series = Series(width=8, levels=3)
    for i in range(100):
        series.add(float(i), 1.0)
    series.add(40.0, 9.0)  # resumed from iteration 40
    assert series.last_x == 40.0
    assert all(b[0] < 40.0 for b in series.whole()[:-1])
    assert max(b[5] for b in series.whole()) == 9.0


def test_series_state_round_trips() -> None:
    series = Series(width=8, levels=3)
    for i in range(77):
        series.add(float(i), float(i * i % 13))
    again = Series.from_state(json.loads(json.dumps(series.to_state())))
    assert again.to_state() == series.to_state()
    series.add(77.0, 1.0)
    again.add(77.0, 1.0)
    assert again.whole() == series.whole()


pytestmark = pytest.mark.anyio


async def test_the_page_holds_what_the_run_page_draws(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        service = RunService(store)
        run_id = (await service.create({"name": "p", "total_iterations": 500})).run_id
        await service.command(run_id, "start", {"attempt": 1})
        for i in range(1, 501):
            facts = [NewEvent(ev.METRIC, {"iteration": i, "loss": 1 / i, "lr": 0.01})]
            if i % 100 == 0:
                facts += [
                    NewEvent(
                        ev.VALIDATION, {"iteration": i, "dice": i / 1000, "preview": f"{i}.png"}
                    ),
                    NewEvent(ev.PROGRESS, {"iteration": i, "total": 500}),
                ]
            facts.append(NewEvent(ev.LOG, {"message": f"line {i}"}))
            await service.record(run_id, facts)
        page = (await service.page(run_id)).to_json()
        assert page["seq"] == store.last_seq and page["version"] == store.run_version(run_id)
        assert page["series"]["loss"]["count"] == 500
        assert max(b[5] for b in page["series"]["loss"]["buckets"]) == 1.0
        assert page["series"]["dice"]["count"] == 5
        kinds = [e["type"] for e in page["events"]]
        assert kinds.count("log") == 200 and kinds.count("progress") == 1
        assert kinds[:2] == ["created", "started"]
        logs = [e["data"]["message"] for e in page["events"] if e["type"] == "log"]
        assert logs[-1] == "line 500" and logs[0] == "line 301"
        seqs = [e["seq"] for e in page["events"]]
        assert seqs == sorted(seqs)
        assert len(json.dumps(page)) < 200_000  # bounded, whatever the run's length


async def test_page_then_subscribe_after_its_seq_has_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    async with await EventStore.open(tmp_path / "events.db") as store:
        service = RunService(store)
        hub = Hub(store, catch_up_page=50)
        hub.attach(service)
        run_id = (await service.create({"name": "live"})).run_id
        await service.command(run_id, "start", {"attempt": 1})
        stop = asyncio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                await service.record(run_id, [NewEvent(ev.METRIC, {"iteration": i, "loss": 1.0})])

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.2)
        page = (await service.page(run_id)).to_json()  # loaded: returns without suspending
        outbox = Outbox(max_events=100_000)
        sub = Subscription(outbox, run_id, page["seq"], lambda: None)
        caught = asyncio.create_task(hub.subscribe(sub))
        await asyncio.sleep(0.2)
        stop.set()
        await producer
        await caught
        versions = []
        while outbox.events or outbox.frames:
            for frame in await outbox.take():
                versions += [e["version"] for e in json.loads(frame)["events"]]
        assert versions[0] == page["version"] + 1
        assert versions == list(range(versions[0], store.run_version(run_id) + 1))
        hub.close()


# The endpoints, against a real server: (path, status, what the answer holds).
def test_page_and_series_endpoints(tmp_path: Path) -> None:
    from tests.server.live import LiveServer, make_settings

    live = LiveServer(make_settings(tmp_path)).start()
    try:
        run_id = live.synthetic_run()
        seqs = live.metrics(run_id, 1, 3_000)
        status, body, _ = live.request("GET", f"/api/runs/{run_id}/page")
        assert status == 200 and body["page"]["seq"] == seqs[-1]
        assert body["run"]["run_id"] == run_id and body["page"]["series"]["loss"]["count"] == 3_000
        assert len(body["page"]["series"]["loss"]["buckets"]) <= 1_025
        status, body, _ = live.request("GET", f"/api/runs/{run_id}/series?name=loss&from=2990")
        assert status == 200 and body["level"] == 0
        assert [b[0] for b in body["buckets"]] == list(range(2990, 3001))
        status, body, _ = live.request("GET", f"/api/runs/{run_id}/series?name=loss&points=16")
        assert status == 200 and len(body["buckets"]) <= 16
        assert sum(b[6] for b in body["buckets"]) == 3_000
        series = f"/api/runs/{run_id}/series?name="
        events = f"/api/runs/{run_id}/events"
        rows = [
            (f"{series}nope", 400, "the series are: loss, lr"),
            (f"{series}loss&from=x", 400, "'from' must be an integer"),
            (f"{series}loss&from=9&to=3", 400, "'from' (9) must not be after 'to' (3)"),
            (f"{series}loss&points=5", 400, "'points' must be between 16 and 4096"),
            (f"/api/runs/{run_id}/events?after=1&after_version=1", 400, "not both"),
            (f"{events}?after_version=x", 400, "'after_version' must be an"),
            (f"{events}?after_version=-1", 400, "'after_version' must be between 0"),
            ("/api/runs/missing/page", 404, "no run with id 'missing'"),
        ]
        for path, expected, message in rows:
            status, body, _ = live.request("GET", path)
            assert (status, message in body["error"]["message"]) == (expected, True), path
    finally:
        live.stop()


def test_run_events_page_by_seq_or_by_version_alike(tmp_path: Path) -> None:
    """Keyset pages of one run among others: after its own seqs (read by version, with
    the index), after another run's seq, and after a version all give the same events."""
    from tests.server.live import LiveServer, make_settings

    live = LiveServer(make_settings(tmp_path)).start()
    try:
        run_id, other = live.synthetic_run("a"), live.synthetic_run("b")
        for start in range(1, 400, 100):
            live.metrics(run_id, start, 100)
            live.metrics(other, start, 50)
        events = f"/api/runs/{run_id}/events"
        _, whole, _ = live.request("GET", f"{events}?limit=10000")
        seqs = [e["seq"] for e in whole["events"]]
        assert [e["version"] for e in whole["events"]] == list(range(1, len(seqs) + 1))

        def pages(first: str) -> list[int]:
            got, query = [], first
            while True:
                status, body, _ = live.request("GET", f"{events}?{query}&limit=70")
                assert status == 200
                got += [e["seq"] for e in body["events"]]
                if not body["more"]:
                    return got
                query = f"after={body['next_after']}"

        assert pages("after=0") == seqs
        foreign = live.request("GET", f"/api/runs/{other}/events?limit=5")[1]["events"][-1]["seq"]
        assert pages(f"after={foreign}") == [s for s in seqs if s > foreign]
        assert pages("after_version=250") == seqs[250:]
    finally:
        live.stop()
