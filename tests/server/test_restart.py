"""The server killed with SIGKILL mid-run and restarted: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backend.client import Client
from tests.server.live import ServeProcess, tiny_yaml, wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Follower:
    """A headless client in its own thread, following one run across server restarts."""

    def __init__(self, url: str, token: str, run_id: str) -> None:
        self.received: list[dict[str, Any]] = []
        self.client: Client | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._follow(url, token, run_id),)
        )
        self._thread.start()

    async def _follow(self, url: str, token: str, run_id: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Client(url, token, run_id=run_id, min_backoff=0.05, max_backoff=0.5) as client:
            self.client = client
            consumer = asyncio.create_task(self._consume(client))
            await self._stop.wait()
            consumer.cancel()

    async def _consume(self, client: Client) -> None:
        async for event in client.events():
            self.received.append(event)

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def stored_events(server: ServeProcess, run_id: str) -> list[dict[str, Any]]:
    _, page, _ = server.request("GET", f"/api/runs/{run_id}/events?limit=10000")
    found: list[dict[str, Any]] = page["events"]
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def test_server_sigkill_mid_run_then_restart(tmp_path: Path) -> None:
    port = str(free_port())
    # Volumes first: a data root with files in it gets no demo dataset (CPU for seconds).
    config = tiny_yaml(tmp_path / "data", "crash", ITERATION_TOTAL=60, ITERATION_SAVE=20)
    server = ServeProcess(tmp_path, "--port", port).start()
    follower: Follower | None = None
    try:
        status, body, _ = server.request("POST", "/api/runs", {"config": config})
        assert status == 201, body
        run_id = body["run"]["run_id"]
        log_path = Path(body["run"]["log_path"])
        assert server.request("POST", f"/api/runs/{run_id}/start", {})[0] == 200
        follower = Follower(server.url, server.token, run_id)

        def metrics() -> int:
            return sum(e["type"] == "metric" for e in stored_events(server, run_id))

        wait_for(lambda: metrics() >= 3, 180, 0.1)
        pid = next(e["data"]["pid"] for e in stored_events(server, run_id) if "pid" in e["data"])
        server.kill()
        # The orphaned trainer notices its parent is gone: checkpoint, `stopped`, exit.
        wait_for(lambda: not alive(pid), 120, 0.1)

        server = ServeProcess(tmp_path, "--port", port).start()
        events = stored_events(server, run_id)
        run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
        assert run["state"] in ("Stopped", "Error") and run["legal_commands"] == ["resume"]

        # Everything the child wrote to its log folder is in the store, exactly once.
        lines = [line for line in (log_path / "events.jsonl").read_text().splitlines() if line]
        written = {(r["data"]["attempt"], r["data"]["n"]) for r in map(json.loads, lines)}
        in_store = Counter(
            (e["data"]["attempt"], e["data"]["n"]) for e in events if "n" in e["data"]
        )
        assert written <= set(in_store)
        assert max(in_store.values()) == 1
        _, everything, _ = server.request("GET", "/api/events?limit=10000")
        seqs = [e["seq"] for e in everything["events"]]
        assert seqs == list(range(1, len(seqs) + 1))
        assert [e["version"] for e in events] == list(range(1, len(events) + 1))

        assert server.request("POST", f"/api/runs/{run_id}/resume", {})[0] == 200
        wait_for(lambda: stored_events(server, run_id)[-1]["type"] == "completed", 180, 0.2)
        final = stored_events(server, run_id)
        # The client followed through the crash: the exact stored sequence, no duplicate.
        wait_for(lambda: follower is not None and len(follower.received) >= len(final), 30)
        assert [e["seq"] for e in follower.received] == [e["seq"] for e in final]
        assert follower.client is not None and follower.client.connections >= 2
    finally:
        if follower is not None:
            follower.stop()
        server.stop()


def restart(server: ServeProcess, port: str, trainer_pid: int, *extra: str) -> ServeProcess:
    """SIGKILL the server, let its orphaned trainer stop on its own, start a new server."""
    server.kill()
    wait_for(lambda: not alive(trainer_pid), 120, 0.1)
    return ServeProcess(server.tmp_path, "--port", port, *extra).start()


def trainer_pid(server: ServeProcess, run_id: str, attempt: int) -> int:
    """The pid of an attempt's trainer, once it reports training (a metric)."""

    def find() -> int | None:
        events = stored_events(server, run_id)
        pids = [e["data"]["pid"] for e in events if e["type"] == "log" and "pid" in e["data"]]
        trained = any(e["type"] == "metric" and e["data"]["attempt"] == attempt for e in events)
        return pids[-1] if trained and len(pids) >= attempt else None

    pid: int = wait_for(find, 180, 0.1)
    return pid


def test_a_repeated_command_id_after_a_sigkill_restart_is_answered_not_applied(
    tmp_path: Path,
) -> None:
    port = str(free_port())
    config = tiny_yaml(tmp_path / "data", "ids", ITERATION_TOTAL=100_000, ITERATION_SAVE=5)
    server = ServeProcess(tmp_path, "--port", port).start()
    first: dict[str, tuple[str, dict[str, Any], int, Any]] = {}

    def send(path: str, body: dict[str, Any]) -> Any:
        status, answer, _ = server.request("POST", path, body)
        assert status in (200, 201), answer
        first[body["id"]] = (path, body, status, answer)
        return answer

    def repeat_all(run_id: str) -> None:
        before = stored_events(server, run_id)
        for path, body, status, answer in first.values():
            again_status, again, _ = server.request("POST", path, body)
            assert (again_status, again["event"]) == (status, answer["event"]), body["id"]
        assert stored_events(server, run_id) == before  # no new event, no new attempt

    try:
        run_id = send("/api/runs", {"config": config, "id": "create-1"})["run"]["run_id"]
        send(f"/api/runs/{run_id}/start", {"id": "start-1"})
        server = restart(server, port, trainer_pid(server, run_id, 1))
        run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
        assert run["legal_commands"] == ["resume"] and run["attempts"] == 1
        assert run["interrupted"]["reason"] == "server_restart"
        assert run["resumable_from"]["iteration"] == run["interrupted"]["checkpoint_iteration"]
        repeat_all(run_id)

        resumed = send(f"/api/runs/{run_id}/resume", {"id": "resume-1"})
        assert resumed["event"]["data"]["checkpoint"] == run["resumable_from"]["path"]
        pid = trainer_pid(server, run_id, 2)
        send(f"/api/runs/{run_id}/stop", {"id": "stop-1"})
        server = restart(server, port, pid)
        run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
        # Resume is legal again, yet the repeated resume is answered, not applied.
        assert run["legal_commands"] == ["resume"] and run["attempts"] == 2
        assert run["interrupted"] is None  # a stop the user asked for
        repeat_all(run_id)
        reused = server.request("POST", f"/api/runs/{run_id}/start", {"id": "resume-1"})
        assert reused[0] == 409 and reused[1]["error"]["code"] == "id_reused"
    finally:
        server.stop()


def test_auto_resume_after_a_crash_and_a_shutdown(tmp_path: Path) -> None:
    port = str(free_port())
    config = tiny_yaml(tmp_path / "data", "auto", ITERATION_TOTAL=100_000, ITERATION_SAVE=5)
    server = ServeProcess(tmp_path, "--port", port).start()
    try:
        status, body, _ = server.request("POST", "/api/runs", {"config": config, "start": True})
        assert status == 201 and body["started"]["type"] == "started", body
        run_id = body["run"]["run_id"]
        assert body["run"]["state"] == "Training"
        # No free slot: a create that would start creates the run and queues it.
        other = tiny_yaml(tmp_path / "data", "other")
        status, queued, _ = server.request("POST", "/api/runs", {"config": other, "start": True})
        assert status == 201 and queued["queued"] is True and queued["position"] == 1, queued
        assert queued["queued_event"]["type"] == "queued" and "started" not in queued
        waiting = queued["run"]["run_id"]

        server = restart(server, port, trainer_pid(server, run_id, 1), "--auto-resume")
        run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
        assert run["state"] == "Training" and run["attempts"] == 2 and run["interrupted"] is None
        # The interrupted run resumed first; the queued one still waits for its slot.
        assert server.request("GET", "/api/queue")[1]["queued"] == [waiting]
        [resumed] = [e for e in stored_events(server, run_id) if e["type"] == "resumed"]
        assert resumed["data"]["command_id"] == f"auto-resume:{run_id}:2"
        assert resumed["data"]["checkpoint"] is not None

        trainer_pid(server, run_id, 2)
        assert server.stop() == 0  # a graceful shutdown stops the run: interrupted too
        server = ServeProcess(tmp_path, "--port", port, "--auto-resume").start()
        run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
        assert run["state"] == "Training" and run["attempts"] == 3
        stops = [e for e in stored_events(server, run_id) if e["type"] == "stop_requested"]
        assert stops[-1]["data"]["reason"] == "server_shutdown"
        assert server.request("POST", f"/api/runs/{run_id}/stop", {})[0] == 200
        wait_for(lambda: stored_events(server, run_id)[-1]["type"] == "stopped", 120, 0.2)
    finally:
        server.stop()


def test_a_queue_survives_a_sigkill_restart_in_order_and_starts_each_run_once(
    tmp_path: Path,
) -> None:
    port = str(free_port())
    configs = {n: tiny_yaml(tmp_path / "data", n, ITERATION_TOTAL=100_000) for n in "abc"}
    server = ServeProcess(tmp_path, "--port", port).start()
    answers: dict[str, tuple[str, dict[str, Any], int, Any]] = {}

    def send(path: str, body: dict[str, Any]) -> Any:
        status, answer, _ = server.request("POST", path, body)
        assert status in (200, 201, 202), answer
        answers[body["id"]] = (path, body, status, answer)
        return answer

    def queue() -> dict[str, Any]:
        table: dict[str, Any] = server.request("GET", "/api/queue")[1]
        return table

    def state(run_id: str) -> str:
        run: dict[str, Any] = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
        return str(run["state"])

    try:
        ids = {}
        for name, config in configs.items():
            body = {"config": config, "start": True, "id": f"create-{name}"}
            ids[name] = send("/api/runs", body)["run"]["run_id"]
        a, b, c = ids["a"], ids["b"], ids["c"]
        assert "started" in answers["create-a"][3] and answers["create-b"][3]["position"] == 1
        send(f"/api/runs/{c}/move", {"position": 1, "id": "move-c"})
        assert queue()["queued"] == [c, b]

        server = restart(server, port, trainer_pid(server, a, 1))
        # a was reconciled; the queue, rebuilt from events, started its first run.
        assert state(a) in ("Stopped", "Error")  # it stopped itself, or was ended
        wait_for(lambda: state(c) == "Training", 60, 0.1)
        table = queue()
        assert table["queued"] == [b] and table["slots"][0]["run_id"] == c
        before = {r: stored_events(server, r) for r in (b, c)}
        for path, body, status, answer in answers.values():  # answered, not applied again
            again_status, again, _ = server.request("POST", path, body)
            assert again_status == status and again["event"] == answer["event"], body["id"]
            assert again.get("queued_event") == answer.get("queued_event"), body["id"]
        assert {r: stored_events(server, r) for r in (b, c)} == before

        assert server.request("POST", f"/api/runs/{c}/stop", {})[0] == 200
        wait_for(lambda: state(b) == "Training", 120, 0.1)
        assert queue()["queued"] == []
        for run_id in (a, b, c):
            kinds = [e["type"] for e in stored_events(server, run_id)]
            assert kinds.count("started") == 1, (run_id, kinds)
        assert server.request("POST", f"/api/runs/{b}/stop", {})[0] == 200
    finally:
        server.stop()


def test_two_slots_with_max_concurrent_2(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, "--max-concurrent", "2").start()
    try:
        assert server.request("GET", "/api/health")[1]["max_concurrent"] == 2
        runs = []
        for name in ("one", "two", "three"):
            config = tiny_yaml(tmp_path / "data", name, ITERATION_TOTAL=4)
            status, body, _ = server.request("POST", "/api/runs", {"config": config, "start": True})
            assert status == 201, body
            runs.append(body)
        assert ["started" in r for r in runs] == [True, True, False]
        assert runs[2]["queued"] is True and runs[2]["position"] == 1
        ids = [r["run"]["run_id"] for r in runs]
        table = server.request("GET", "/api/queue")[1]
        assert [s["run_id"] for s in table["slots"]] == ids[:2] and table["queued"] == [ids[2]]

        def done(run_id: str) -> bool:
            run = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
            return bool(run["state"] == "Complete")

        wait_for(lambda: all(done(r) for r in ids), 300, 0.2)  # the third ran once one ended
        for run_id in ids:
            kinds = [e["type"] for e in stored_events(server, run_id)]
            assert kinds.count("started") == 1 and kinds[-1] == "completed"
    finally:
        server.stop()
