"""A client that stops reading always gets a close code: 4408 once its queue is full,
4000 once it has been silent past the heartbeat timeout; never a code-less drop by the
WebSocket library's own protocol ping (which the server does not send)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from backend.serve import uvicorn_config
from backend.server import create_app
from tests.server.live import TOKEN, LiveServer, make_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.anyio


@pytest.fixture
def quick_heartbeat(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path, heartbeat_s=0.2, heartbeat_timeout_s=0.8)).start()
    yield live
    live.stop()


def test_the_server_sends_no_protocol_ping(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    config = uvicorn_config(create_app(settings), settings)
    assert config.ws_ping_interval is None, "the library would cut a non-reader without a code"


async def test_a_client_that_neither_reads_nor_answers_gets_4000(
    quick_heartbeat: LiveServer,
) -> None:
    server = quick_heartbeat
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    # No client-side pings either: from the server's side this client is silent.
    silent = await websockets.connect(
        server.ws_url, sock=sock, additional_headers=AUTH, max_queue=1, ping_interval=None
    )
    healthy = await websockets.connect(server.ws_url, additional_headers=AUTH)
    answering = asyncio.create_task(answer_pings(healthy))
    await asyncio.sleep(2.0)  # past the 0.8 s timeout, the silent one reading nothing
    frames = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            frames.append(json.loads(await asyncio.wait_for(silent.recv(), 10)))
    assert info.value.rcvd is not None and info.value.rcvd.code == 4000
    assert frames[0]["type"] == "hello" and {f["type"] for f in frames[1:]} <= {"ping"}
    assert not answering.done(), "the client that answers its pings is kept"
    answering.cancel()
    await healthy.close()


async def answer_pings(ws: websockets.ClientConnection) -> None:
    while True:
        if json.loads(await ws.recv())["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
