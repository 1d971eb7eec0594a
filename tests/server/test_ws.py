"""The WebSocket protocol: catch-up then live, batches, commands, bad frames, slow clients.

Events here are synthetic (a run started without a trainer child, then `record`ed through
the real RunService), so these tests are fast; test_training.py uses real children.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.server.live import TOKEN, LiveServer, make_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("ws"), ws_queue_events=5000)
    live = LiveServer(settings).start()
    yield live
    live.stop()


async def connect(server: LiveServer, **kwargs: Any) -> ClientConnection:
    ws = await websockets.connect(server.ws_url, additional_headers=AUTH, **kwargs)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    return ws


async def receive(ws: ClientConnection, wait_s: float = 10) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), wait_s))
    return frame


async def events_until(
    ws: ClientConnection, done: Any, wait_s: float = 30
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(events, other frames) until `done(events)`; pings are answered."""
    events: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait_s
    while not done(events):
        frame = await receive(ws, max(0.1, deadline - time.monotonic()))
        if frame["type"] == "events":
            events.extend(frame["events"])
        elif frame["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        else:
            others.append(frame)
    return events, others


def stored(server: LiveServer, run_id: str | None = None) -> list[int]:
    path = f"/api/runs/{run_id}/events" if run_id else "/api/events"
    seqs: list[int] = []
    after = 0
    while True:
        _, page, _ = server.request("GET", f"{path}?after={after}&limit=10000")
        seqs += [e["seq"] for e in page["events"]]
        after = page["next_after"]
        if not page["more"]:
            return seqs


async def test_hello_then_catch_up_then_live(server: LiveServer) -> None:
    run_id = server.synthetic_run()
    server.metrics(run_id, 0, 10)
    ws = await connect(server)
    await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
    history, _ = await events_until(ws, lambda ev: len(ev) >= 12)
    assert [e["type"] for e in history[:2]] == ["created", "started"]
    assert [e["version"] for e in history] == list(range(1, 13))
    caught = await receive(ws)
    assert caught == {"type": "caught_up", "seq": history[-1]["seq"]}
    await asyncio.to_thread(server.metrics, run_id, 10, 5)
    live, _ = await events_until(ws, lambda ev: len(ev) >= 5)
    assert [e["data"]["iteration"] for e in live] == list(range(10, 15))
    assert [e["seq"] for e in history + live] == stored(server, run_id)
    await ws.close()


async def test_events_arrive_in_batches(server: LiveServer) -> None:
    run_id = server.synthetic_run()
    ws = await connect(server)
    await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
    await events_until(ws, lambda ev: len(ev) >= 2)
    assert (await receive(ws))["type"] == "caught_up"
    await asyncio.to_thread(server.metrics, run_id, 0, 150)
    sizes = []
    total = 0
    while total < 150:
        frame = await receive(ws)
        if frame["type"] == "events":
            sizes.append(len(frame["events"]))
            total += sizes[-1]
    assert max(sizes) > 1 and len(sizes) < 150
    await ws.close()


async def test_mid_run_subscriber_gets_exactly_the_stored_sequence(server: LiveServer) -> None:
    """A client subscribing from 0 while events pour in: no gap, no duplicate."""
    run_id = server.synthetic_run()
    server.metrics(run_id, 0, 500)
    stop = threading.Event()

    def produce() -> None:
        i = 500
        while not stop.is_set():
            server.metrics(run_id, i, 20)
            i += 20
            time.sleep(0.002)

    async def follow(ws: ClientConnection) -> tuple[list[int], int]:
        """Seqs until the history is sent and live events have followed; where it switched."""
        seqs: list[int] = []
        switched = -1
        while switched < 0 or len(seqs) < switched + 100:
            frame = await receive(ws)
            if frame["type"] == "events":
                seqs += [e["seq"] for e in frame["events"]]
            elif frame["type"] == "caught_up":
                assert switched < 0  # once per subscribe
                switched = len(seqs)
                assert frame["seq"] == seqs[-1]
        return seqs, switched

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        clients = [await connect(server) for _ in range(3)]
        for ws in clients:
            await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
            await asyncio.sleep(0.05)
        received = await asyncio.gather(*(follow(ws) for ws in clients))
    finally:
        stop.set()
        await asyncio.to_thread(producer.join)
    truth = stored(server, run_id)
    for ws, (seqs, switched) in zip(clients, received, strict=True):
        assert switched >= 502  # the whole history came first
        assert seqs == truth[: len(seqs)]
        # Everything recorded until the producer stopped is delivered too, once.
        missing = len(truth) - len(seqs)
        rest, _ = await events_until(ws, lambda ev, n=missing: len(ev) >= n)
        assert seqs + [e["seq"] for e in rest] == truth
        await ws.close()


async def test_all_runs_subscription_is_gapless(server: LiveServer) -> None:
    ws = await connect(server)
    await ws.send(json.dumps({"type": "subscribe", "run_id": None, "after": 0}))
    a, b = server.synthetic_run("a"), server.synthetic_run("b")
    for i in range(5):
        await asyncio.to_thread(server.metrics, a, i, 3)
        await asyncio.to_thread(server.metrics, b, i, 3)
    last = server.ctx.store.last_seq
    events, others = await events_until(ws, lambda ev: ev and ev[-1]["seq"] >= last)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, last + 1))
    assert any(f["type"] == "caught_up" for f in others)
    # Resubscribing from a seq replaces the subscription and starts after it.
    await ws.send(json.dumps({"type": "subscribe", "run_id": b, "after": last - 3}))
    again, others = await events_until(ws, lambda ev: len(ev) >= 1)
    assert others[0] == {"type": "subscribed", "run_id": b, "after": last - 3}
    assert all(e["run_id"] == b and e["seq"] > last - 3 for e in again)
    await ws.close()


async def test_commands_illegal_unknown_and_duplicate_ids(server: LiveServer) -> None:
    run_id = server.synthetic_run()
    ws = await connect(server)
    before = server.ctx.store.last_seq

    async def command(frame: dict[str, Any]) -> dict[str, Any]:
        await ws.send(json.dumps({"type": "command", **frame}))
        while True:
            answer = await receive(ws)
            if answer["type"] == "result":
                return answer

    refused = await command({"id": "c1", "command": "start", "run_id": run_id})
    assert refused["ok"] is False
    assert refused["error"]["code"] == "illegal_command"
    assert refused["error"]["details"]["state"] == "Training"
    assert refused["error"]["details"]["legal_commands"] == ["stop"]
    unknown = await command({"id": "c2", "command": "resume", "run_id": "nope"})
    assert unknown["error"]["code"] == "not_found"
    assert server.ctx.store.last_seq == before  # nothing written

    first = await command({"id": "stop-1", "command": "stop", "run_id": run_id})
    assert first["ok"] is True and first["event"]["type"] == "stop_requested"
    again = await command({"id": "stop-1", "command": "stop", "run_id": run_id})
    assert again == first
    # The same id from another connection (a client that reconnected) gets it too.
    other = await connect(server)
    await other.send(
        json.dumps({"type": "command", "id": "stop-1", "command": "stop", "run_id": run_id})
    )
    while (answer := await receive(other))["type"] != "result":
        pass
    assert answer == first
    reused = await command({"id": "stop-1", "command": "resume", "run_id": run_id})
    assert reused["error"]["code"] == "id_reused"
    _, events, _ = server.request("GET", f"/api/runs/{run_id}/events")
    types = [e["type"] for e in events["events"]]
    assert types.count("stop_requested") == 1
    # A different id is a new command: illegal now (a stop is under way or done).
    fresh = await command({"id": "stop-2", "command": "stop", "run_id": run_id})
    assert fresh["ok"] is False and fresh["error"]["code"] == "illegal_command"
    await ws.close()
    await other.close()


async def test_create_by_websocket_with_a_repeated_id(server: LiveServer) -> None:
    from tests.server.live import tiny_yaml

    ws = await connect(server)
    config = tiny_yaml(server.settings.data_root, "ws-create")
    frame = {"type": "command", "id": "create-1", "command": "create", "data": {"config": config}}
    results = []
    for _ in range(2):
        await ws.send(json.dumps(frame))
        while (answer := await receive(ws))["type"] != "result":
            pass
        results.append(answer)
    assert results[0]["ok"] and results[0] == results[1]
    run_id = results[0]["run"]["run_id"]
    assert sum(1 for r in server.ctx.service.runs if r == run_id) == 1
    bad = {"type": "command", "id": "create-2", "command": "create", "data": {"config": "X: 1"}}
    await ws.send(json.dumps(bad))
    while (answer := await receive(ws))["type"] != "result":
        pass
    assert answer["error"]["code"] == "invalid_config"
    assert answer["error"]["details"]["problems"]
    await ws.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ('{"no": "type"}', "bad_frame"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "subscribe", "after": -1}', "bad_frame"),
        ('{"type": "subscribe", "after": "x"}', "bad_frame"),
        ('{"type": "subscribe", "run_id": "missing"}', "not_found"),
        ('{"type": "command", "command": "start"}', "bad_frame"),
        ('{"type": "command", "id": "x", "command": "explode"}', "bad_frame"),
        ('{"type": "command", "id": "x", "command": "start", "data": []}', "bad_frame"),
        ('{"type": "ping", "ts": NaN}', "bad_frame"),
        ('{"type": "ping", "ts": Infinity}', "bad_frame"),
        ("[" * 40 + "]" * 40, "bad_frame"),  # deeper than any frame may nest
    ],
)
async def test_malformed_frames_get_an_error_and_the_connection_stays(
    server: LiveServer, frame: str, code: str
) -> None:
    ws = await connect(server)
    await ws.send(frame)
    answer = await receive(ws)
    assert answer["type"] == "error" and answer["error"]["code"] == code
    await ws.send(b"\x00binary")
    assert (await receive(ws))["error"]["code"] == "bad_frame"
    await ws.send(json.dumps({"type": "ping", "ts": 1}))
    assert await receive(ws) == {"type": "pong", "ts": 1}
    await ws.close()


async def test_oversized_frame_closes_with_1009(server: LiveServer) -> None:
    ws = await connect(server, max_size=None)
    await ws.send(json.dumps({"type": "ping", "pad": "x" * (server.settings.ws_max_frame + 1)}))
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await receive(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


@pytest.fixture
def small_queues(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path, ws_queue_events=400)).start()
    yield live
    live.stop()


async def test_a_client_that_stops_reading_is_closed_and_others_get_everything(
    small_queues: LiveServer,
) -> None:
    server = small_queues
    run_id = server.synthetic_run()
    # A tiny receive window and queue: this client's backlog stays on the server.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    slow = await websockets.connect(
        server.ws_url, sock=sock, additional_headers=AUTH, max_queue=1, max_size=None
    )
    healthy = await connect(server, max_size=None)
    for ws in (slow, healthy):
        await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
    expected = 2 + 3000
    reader = asyncio.create_task(events_until(healthy, lambda ev: len(ev) >= expected, 120))
    for start in range(0, 3000, 50):
        await asyncio.to_thread(server.metrics, run_id, start, 50, 4000)
        await asyncio.sleep(0.005)
    events, _ = await reader
    assert [e["seq"] for e in events] == stored(server, run_id)
    # The slow client now reads what got through, then the close: 4408, resubscribe.
    got: list[int] = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            frame = json.loads(await asyncio.wait_for(slow.recv(), 30))
            if frame["type"] == "events":
                got += [e["seq"] for e in frame["events"]]
    assert info.value.rcvd is not None and info.value.rcvd.code == 4408
    assert "resubscribe" in info.value.rcvd.reason
    assert got == stored(server, run_id)[: len(got)]  # a clean prefix: resume from its end
    assert len(got) < expected
    assert server.ctx.hub.subscribers == 1
    await healthy.close()


async def test_hundred_concurrent_subscribers(server: LiveServer) -> None:
    run_id = server.synthetic_run()
    start_seq = server.ctx.store.last_seq - 2
    clients = await asyncio.gather(*(connect(server) for _ in range(100)))
    for i, ws in enumerate(clients):
        # Half follow the run from its start, half every run from just before it.
        subscribe = {"run_id": run_id} if i % 2 else {"run_id": None, "after": start_seq}
        await ws.send(json.dumps({"type": "subscribe", **subscribe}))
    for start in range(0, 300, 30):
        await asyncio.to_thread(server.metrics, run_id, start, 30)
    truth_run = stored(server, run_id)
    truth_all = [seq for seq in stored(server) if seq > start_seq]
    results = await asyncio.gather(
        *(
            events_until(
                ws,
                lambda ev, last=(truth_run if i % 2 else truth_all)[-1]: (
                    bool(ev) and ev[-1]["seq"] >= last
                ),
            )
            for i, ws in enumerate(clients)
        )
    )
    for i, (events, _) in enumerate(results):
        assert [e["seq"] for e in events] == (truth_run if i % 2 else truth_all)
    await asyncio.gather(*(ws.close() for ws in clients))


async def test_heartbeat_pings_and_closes_silent_clients(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, heartbeat_s=0.2, heartbeat_timeout_s=0.7)
    live = LiveServer(settings).start()
    try:
        answering = await connect(live)
        silent = await connect(live)
        pings = 0
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            frame = await receive(answering)
            if frame["type"] == "ping":
                pings += 1
                await answering.send(json.dumps({"type": "pong"}))
        assert pings >= 3
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await receive(silent)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000
        await answering.send(json.dumps({"type": "ping"}))
        assert (await receive(answering))["type"] in ("pong", "ping")
        await answering.close()
    finally:
        live.stop()


async def test_a_server_shutting_down_closes_with_1012(tmp_path: Any) -> None:
    live = LiveServer(make_settings(tmp_path)).start()
    ws = await connect(live)
    await ws.send(json.dumps({"type": "subscribe", "run_id": None}))
    assert (await receive(ws))["type"] == "subscribed"
    stopping = asyncio.create_task(asyncio.to_thread(live.stop))
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await receive(ws)
    await stopping
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012  # reconnect later
