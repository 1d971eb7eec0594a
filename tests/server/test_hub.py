"""The hub and the outbox in-process: ordering, catch-up races, gaps, bounds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from backend.events import NewEvent
from backend.hub import Chunk, Encoded, Hub, Outbox, Subscription, encode, encode_row
from backend.runs import RunService
from backend.store import EventStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunService]:
    store = await EventStore.open(tmp_path / "events.db")
    service = RunService(store)
    yield service
    await store.close()


async def training_run(service: RunService) -> str:
    event = await service.create({"name": "t"})
    await service.command(event.run_id, "start", {"attempt": 1})
    return event.run_id


async def metrics(service: RunService, run_id: str, start: int, n: int) -> None:
    await service.record(
        run_id, [NewEvent("metric", {"iteration": i}) for i in range(start, start + n)]
    )


def chunk(*texts: str) -> Chunk:
    return Chunk([Encoded(i, "r", text) for i, text in enumerate(texts, start=1)])


async def drain(outbox: Outbox) -> list[dict[str, Any]]:
    frames = []
    while outbox.events or outbox.frames:
        frames += [json.loads(f) for f in await outbox.take()]
    return frames


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for f in frames if f["type"] == "events" for e in f["events"]]


async def test_live_and_stored_events_encode_to_the_same_text(service: RunService) -> None:
    run_id = await training_run(service)
    data = {"message": 'quote " and \u00e9 \n', "x": [1.0, 2], "nested": {"k": None}}
    [event] = await service.record(run_id, [NewEvent("log", data)])
    [row] = await service.store.read_rows(event.seq - 1, 1, run_id)
    assert event.data_json == row[5]  # the store's own text, not encoded again
    assert encode(event) == encode_row(row)
    assert encode(replace(event, data_json=None)) == encode_row(row)
    assert json.loads(encode(event).text) == event.to_json()


async def test_outbox_batches_by_count_and_bytes_and_keeps_order() -> None:
    outbox = Outbox(max_events=100, batch_events=4, batch_bytes=30)
    assert outbox.put_events(chunk("1", "2", "3"))
    assert outbox.put_frame('{"type":"x"}')
    assert outbox.put_events(chunk("4", "5", "6", "7", "8", "9"))
    long = '"' + "a" * 40 + '"'
    assert outbox.put_events(chunk(long, "10"))
    frames = await drain(outbox)
    assert frames == [
        {"type": "events", "events": [1, 2, 3]},
        {"type": "x"},
        {"type": "events", "events": [4, 5, 6, 7]},  # at most 4 events
        {"type": "events", "events": [8, 9]},
        {"type": "events", "events": ["a" * 40]},  # alone: over 30 characters
        {"type": "events", "events": [10]},
    ]
    assert outbox.events == 0 and outbox.frames == 0


async def test_one_take_holds_about_one_batch_of_bytes() -> None:
    outbox = Outbox(max_events=1000, batch_events=10, batch_bytes=100)
    for i in range(50):
        assert outbox.put_events(chunk(*[f'"{i:02d}{k:03d}"' for k in range(10)]))
    frames = await outbox.take()  # it used to build up to 16 frames at once
    assert len(frames) == 1 and json.loads(frames[0])["events"][0] == "00000"
    assert outbox.events == 500 - 10, "the rest waits, unencoded, in shared chunks"


async def test_a_chunk_sent_whole_is_one_frame_shared_by_every_subscriber() -> None:
    shared = chunk("1", "2", "3")
    outboxes = [Outbox(max_events=100) for _ in range(3)]
    for outbox in outboxes:
        assert outbox.put_events(shared)
    frames = [(await outbox.take())[0] for outbox in outboxes]
    assert frames[0] is frames[1] is frames[2], "built once, not once per subscriber"
    assert json.loads(frames[0]) == {"type": "events", "events": [1, 2, 3]}
    # Two chunks in one frame are joined for that subscriber alone.
    outboxes[0].put_events(chunk("4"))
    outboxes[0].put_events(chunk("5"))
    assert json.loads((await outboxes[0].take())[0])["events"] == [4, 5]


async def test_outbox_refuses_past_its_bound() -> None:
    outbox = Outbox(max_events=5)
    assert outbox.put_events(chunk(*["1"] * 5))
    assert not outbox.put_events(chunk("1"))
    await outbox.take()
    assert outbox.put_events(chunk(*["1"] * 5))


@pytest.mark.parametrize("tick_s", [0.0, 0.01])
async def test_catch_up_then_live_with_concurrent_appends(
    service: RunService, tick_s: float
) -> None:
    hub = Hub(service.store, catch_up_page=7, tick_s=tick_s)
    hub.attach(service)
    run_id = await training_run(service)
    await metrics(service, run_id, 0, 50)
    outbox = Outbox(max_events=10_000)
    sub = Subscription(outbox, run_id, 0, lambda: None)

    async def produce() -> None:
        for i in range(50, 150, 5):
            await metrics(service, run_id, i, 5)

    markers: list[int] = []

    def caught_up_frame(seq: int) -> str:
        markers.append(seq)
        return '{"type":"caught_up"}'

    caught_up = hub.subscribe(sub, caught_up_frame)
    await asyncio.gather(caught_up, produce())
    await asyncio.sleep(tick_s * 3)  # the last tick's events go out
    frames = await drain(outbox)
    all_seqs = [e.seq for e in await service.store.read_run(run_id)]
    assert seqs(frames) == all_seqs
    assert markers and markers[0] in all_seqs
    hub.close()


async def test_pending_overflow_during_catch_up_falls_back_to_the_store(
    service: RunService,
) -> None:
    hub = Hub(service.store, catch_up_page=5)
    hub.attach(service)
    run_id = await training_run(service)
    await metrics(service, run_id, 0, 40)
    outbox = Outbox(max_events=30)  # pending holds 15: a batch of 20 overflows it
    sub = Subscription(outbox, run_id, 0, lambda: None)
    received: list[dict[str, Any]] = []

    async def reader() -> None:
        while True:
            received.extend(json.loads(f) for f in await outbox.take())
            await asyncio.sleep(0.001)

    # The catch-up fills the outbox and waits for room (nobody reads yet) while live
    # events overflow its buffer.
    subscribing = asyncio.create_task(hub.subscribe(sub))
    for i in range(40, 200, 20):
        await metrics(service, run_id, i, 20)
    assert not subscribing.done() and outbox.events > 0
    task = asyncio.create_task(reader())
    await subscribing
    assert sub.resets > 0
    await asyncio.sleep(0.05)
    task.cancel()
    all_seqs = [e.seq for e in await service.store.read_run(run_id)]
    assert seqs(received) == all_seqs
    hub.close()


async def test_a_tick_sends_one_frame_shared_by_every_subscriber(service: RunService) -> None:
    """Appends within a tick reach each live subscriber as one chunk: the same frame
    object for all of them, built once. The first append after a quiet tick goes at
    once; what follows within the tick waits for it."""
    hub = Hub(service.store, tick_s=1.0)
    hub.attach(service)
    run_id = await training_run(service)
    outboxes = [Outbox(max_events=1_000) for _ in range(3)]
    for outbox in outboxes:
        await hub.subscribe(Subscription(outbox, run_id, service.store.last_seq, lambda: None))
    await metrics(service, run_id, 0, 2)
    for _ in range(5):
        await asyncio.sleep(0)  # the flush scheduled for now
    first = [await outbox.take() for outbox in outboxes]
    assert all(frames == first[0] for frames in first) and len(first[0]) == 1
    for i in range(2, 12, 2):  # five appends within the tick
        await metrics(service, run_id, i, 2)
    assert all(outbox.events == 0 for outbox in outboxes)  # held for the tick
    frames = [await asyncio.wait_for(outbox.take(), 30) for outbox in outboxes]
    assert all(len(f) == 1 and f[0] is frames[0][0] for f in frames)  # one shared frame
    assert [e["data"]["iteration"] for e in json.loads(frames[0][0])["events"]] == list(
        range(2, 12)
    )
    hub.close()


async def test_out_of_order_announcements_are_reordered(service: RunService) -> None:
    hub = Hub(service.store)
    run_id = await training_run(service)
    hub.attach(service)
    base = service.store.last_seq
    outbox = Outbox(max_events=100)
    sub = Subscription(outbox, None, base, lambda: None)
    sub.catching_up = False
    hub._subscriptions.add(sub)
    stored = await service.store.append(
        run_id, [NewEvent("metric", {"iteration": i}) for i in range(3)]
    )
    hub._on_events(stored[2:])  # announced early: held back
    assert outbox.events == 0
    hub._on_events(stored[:2])
    assert seqs(await drain(outbox)) == [e.seq for e in stored]


async def test_an_event_never_announced_is_read_from_the_store(service: RunService) -> None:
    hub = Hub(service.store)
    run_id = await training_run(service)
    hub.attach(service)
    outbox = Outbox(max_events=100)
    sub = Subscription(outbox, None, service.store.last_seq, lambda: None)
    sub.catching_up = False
    hub._subscriptions.add(sub)
    lost = await service.store.append(run_id, [NewEvent("metric", {"iteration": 0})], 2)
    later = await service.store.append(run_id, [NewEvent("metric", {"iteration": 1})], 3)
    hub._on_events(later)  # the first append's listener never ran (a cancelled caller)
    await asyncio.sleep(0.2)
    assert seqs(await drain(outbox)) == [lost[0].seq, later[0].seq]


async def test_a_live_subscriber_that_overflows_is_dropped_once(service: RunService) -> None:
    hub = Hub(service.store)
    hub.attach(service)
    run_id = await training_run(service)
    calls: list[int] = []
    outbox = Outbox(max_events=10)
    sub = Subscription(outbox, run_id, service.store.last_seq, lambda: calls.append(1))
    await hub.subscribe(sub)
    await metrics(service, run_id, 0, 8)
    await metrics(service, run_id, 8, 8)
    await metrics(service, run_id, 16, 8)
    assert calls == [1]
    assert not sub.active
    hub.unsubscribe(sub)
    assert hub.subscribers == 0
