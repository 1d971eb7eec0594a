"""The headless client library and the client subcommands, against a live server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.cli import main
from backend.client import Client, ClientError, Rest, resolve
from backend.client_cli import replay
from backend.events import NewEvent
from tests.server.live import TOKEN, LiveServer, make_settings, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("client"), ws_queue_events=300)
    live = LiveServer(settings).start()
    yield live
    live.stop()


def cli(server: LiveServer, *args: str) -> int:
    return main([*args[:1], "--url", server.url, "--token", TOKEN, *args[1:]])


def finish(server: LiveServer, run_id: str, kind: str, data: dict[str, Any]) -> None:
    async def record() -> None:
        await server.ctx.service.record(run_id, [NewEvent(kind, data)])

    server.call(record())


# --- the library ----------------------------------------------------------------------------


def test_resolve_reads_flags_environment_and_printed_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINBOARD_URL", raising=False)
    monkeypatch.delenv("TRAINBOARD_TOKEN", raising=False)
    assert resolve(None, None) == ("http://127.0.0.1:8000", None)
    assert resolve("http://h:1/?token=abc", None) == ("http://h:1", "abc")
    assert resolve("http://h:1/?token=abc", "flag") == ("http://h:1", "flag")
    monkeypatch.setenv("TRAINBOARD_URL", "http://env:2")
    monkeypatch.setenv("TRAINBOARD_TOKEN", "envtoken")
    assert resolve(None, None) == ("http://env:2", "envtoken")


def test_rest_helpers_and_refusals(server: LiveServer) -> None:
    rest = Rest(server.url, TOKEN)
    run_id = server.synthetic_run("rest")
    assert any(r["run_id"] == run_id for r in rest.runs())
    assert rest.run(run_id)["run"]["state"] == "Training"
    with pytest.raises(ClientError) as info:
        rest.command(run_id, "resume")
    assert info.value.status == 409 and info.value.details["legal_commands"] == ["stop"]
    with pytest.raises(ClientError) as info:
        Rest(server.url, "wrong").runs()
    assert info.value.code == "unauthorized"
    server.metrics(run_id, 0, 12)
    events = list(rest.iter_events(run_id))
    assert [e["version"] for e in events] == list(range(1, 15))
    with pytest.raises(ClientError) as info:
        Rest("http://127.0.0.1:9", TOKEN, timeout=2).runs()
    assert info.value.code == "unreachable"
    before = server.ctx.store.last_seq
    with pytest.raises(ClientError) as info:  # refused before sending: JSON has no NaN
        rest.create({"config": "SOLVER:\n  BASE_LR: 0.1\n", "seed": float("nan")})
    assert info.value.code == "bad_request" and "NaN" in str(info.value)
    assert server.ctx.store.last_seq == before


def test_client_resumes_after_being_too_slow_without_gap_or_duplicate(server: LiveServer) -> None:
    run_id = server.synthetic_run("slow-consumer")  # two events: created, started
    hub = server.ctx.hub

    def produce_until_cut_off() -> int:
        # Loopback buffers can absorb tens of MB (tcp_rmem autotuning), so pour until the
        # server gives up on the stalled client rather than a fixed amount; capped at 96 MB.
        watching = hub.subscribers  # ours included: it has received events
        for start in range(0, 12_000, 50):
            server.metrics(run_id, start, 50, 8000)
            if hub.subscribers < watching:
                return start + 50
        return 12_000

    async def scenario() -> tuple[list[int], int]:
        received: list[int] = []
        expected = -1
        async with Client(server.url, TOKEN, run_id=run_id, queue_size=2) as client:
            async for event in client.events():
                received.append(event["seq"])
                if len(received) == 2:  # subscribed and caught up: now stop reading
                    expected = 2 + await asyncio.to_thread(produce_until_cut_off)
                if len(received) == expected:
                    break
            return received, client.connections

    received, connections = asyncio.run(scenario())
    assert received == [e["seq"] for e in Rest(server.url, TOKEN).iter_events(run_id)]
    assert connections >= 2  # it was cut off (4408) and came back


def test_client_switching_subscription_gets_only_the_new_one(server: LiveServer) -> None:
    busy, quiet = server.synthetic_run("busy"), server.synthetic_run("quiet")
    server.metrics(quiet, 0, 30)

    async def scenario() -> list[dict[str, Any]]:
        async with Client(server.url, TOKEN, run_id=busy) as client:
            stop = asyncio.Event()

            async def produce() -> None:
                i = 0
                while not stop.is_set():
                    await asyncio.to_thread(server.metrics, busy, i, 20)
                    i += 20

            producer = asyncio.create_task(produce())
            seen = 0
            switched: list[dict[str, Any]] = []
            async for event in client.events():
                if seen >= 200:
                    switched.append(event)
                    if len(switched) == 32:
                        break
                seen += 1
                if seen == 200:
                    await client.subscribe(quiet, 0)  # busy events are still on their way
            stop.set()
            await producer
            return switched

    switched = asyncio.run(scenario())
    assert [e["run_id"] for e in switched] == [quiet] * 32
    assert [e["version"] for e in switched] == list(range(1, 33))


def test_client_commands_with_ids(server: LiveServer) -> None:
    run_id = server.synthetic_run("client-commands")

    async def scenario() -> None:
        async with Client(server.url, TOKEN, subscribe=False) as client:
            await asyncio.wait_for(client.connected.wait(), 10)
            result = await client.command("stop", run_id, command_id="client-stop-1")
            assert result["ok"] and result["event"]["type"] == "stop_requested"
            again = await client.command("stop", run_id, command_id="client-stop-1")
            assert again == result
            with pytest.raises(ClientError) as info:
                await client.command("start", run_id)
            assert info.value.code == "illegal_command"

    asyncio.run(scenario())


def test_client_refused_token_raises(server: LiveServer) -> None:
    async def scenario() -> None:
        async with Client(server.url, "wrong") as client:
            with pytest.raises(ClientError):
                async for _ in client.events():
                    pass

    asyncio.run(scenario())


# --- the commands -------------------------------------------------------------------------


def test_runs_show_and_illegal_commands(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = server.synthetic_run("listed run")
    assert cli(server, "runs") == 0
    out = capsys.readouterr().out
    assert run_id in out and "listed run" in out and "Training" in out
    assert cli(server, "show", run_id[:8]) == 0  # a unique prefix is enough
    out = capsys.readouterr().out
    assert "allowed now  stop" in out and run_id in out
    assert cli(server, "resume", run_id) == 1
    err = capsys.readouterr().err
    assert "allowed now: stop" in err
    assert cli(server, "stop", run_id) == 0
    assert "stop_requested" in capsys.readouterr().out
    assert cli(server, "show", "zzzz") == 1
    assert "no run matching" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "data", "code"),
    [
        ("completed", {"iteration": 5}, 0),
        ("failed", {"message": "boom", "hint": "fix it"}, 1),
        ("stopped", {"iteration": 5, "checkpoint": None}, 130),
    ],
)
def test_watch_exits_with_the_outcome(
    server: LiveServer,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    data: dict[str, Any],
    code: int,
) -> None:
    run_id = server.synthetic_run(f"watch-{kind}")
    result: list[int] = []
    watcher = threading.Thread(target=lambda: result.append(cli(server, "watch", run_id)))
    watcher.start()
    wait_for(lambda: server.ctx.hub.subscribers >= 1, 10)
    server.record(
        run_id, [("progress", {"iteration": 5, "total": 10, "its_per_s": 2.0, "eta_s": 2.5})]
    )
    finish(server, run_id, kind, data)
    watcher.join(30)
    assert result == [code]
    out = capsys.readouterr().out
    assert "5/10" in out
    # A run that has already ended answers at once.
    assert cli(server, "watch", run_id) == code


def test_replay_keeps_the_spacing_scaled(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [
        {"ts": 100.0, "type": "created", "data": {"name": "r", "total_iterations": 3}},
        {"ts": 102.0, "type": "metric", "data": {"iteration": 1, "loss": 0.5}},
        {"ts": 110.0, "type": "completed", "data": {"iteration": 3}},
    ]
    sleeps: list[float] = []
    import io

    out = io.StringIO()
    replay(events, out, speed=4.0, sleep=sleeps.append)
    assert sleeps == [0.5, 2.0]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("+     0.00s  created") and "+    10.00s  completed" in lines[2]
    sleeps.clear()
    replay(events, io.StringIO(), speed=1.0, max_gap=1.0, sleep=sleeps.append)
    assert sleeps == [1.0, 1.0]
    run_id = server.synthetic_run("replayed")
    start = time.monotonic()
    assert cli(server, "replay", run_id, "--speed", "1000") == 0
    assert time.monotonic() - start < 30
    assert "started" in capsys.readouterr().out


def test_export_to_a_file_and_stdout(
    server: LiveServer, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    run_id = server.synthetic_run("exported")
    server.record(run_id, [("metric", {"iteration": 1, "loss": 0.5, "lr": 0.1})])
    target = tmp_path / "run.jsonl"
    assert cli(server, "export", run_id, "--format", "jsonl", "-o", str(target)) == 0
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["type"] for e in lines] == ["created", "started", "metric"]
    capsysbinary.readouterr()
    assert cli(server, "export", run_id, "--format", "csv") == 0
    out = capsysbinary.readouterr().out.decode()
    assert out.splitlines() == ["iteration,loss,lr,val_loss,dice,iou", "1,0.5,0.1,,,"]
