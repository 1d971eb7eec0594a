"""Chaos at full event rate: SIGKILLs of the server and of the trainer child at 10,000
events/s, through the real child -> pipe -> spool -> store -> hub path.

Each round, on a fresh database and data root: a real server process (`backend.serve.run`,
what `trainboard serve` runs, with the synthetic trainer as its job option), a run that
emits 10,000 metric events/s from a real spawned child (no torch), two clients that read
and resubscribe from their last seq across restarts, and one client that stops reading.
Then a SIGKILL, at a seeded random moment, of the child, the server, or both; the server
is restarted on the same files (its reconcile ends the run), and the round asserts:

- the store holds exactly the spool's events, in order: every complete line of
  `events.jsonl` once, nothing else from the trainer, no torn line anywhere but at the
  very end of a killed child's spool (and never stored);
- each reading client saw every stored event, each exactly once, in seq order, across
  the restart, and was never cut off for being slow;
- the client that stopped reading was closed with 4408 while the others kept up.

Run in both `--durability normal` and `full`. Bounded: three rounds each, well under two
minutes on two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "chaos-token-0123456789"
RATE = 10_000  # events per second from the synthetic trainer
# How far the reading clients get past the one that stopped before it reads again: more
# than its queue (the server's default 20,000 events) and the socket buffers hold.
BEYOND_QUEUE = 40_000
ROUNDS = 3
KILLS = ("child", "server", "both")  # one per round, in this order


# --- the server process (`python -m tests.test_chaos DB ROOT PORT DURABILITY`) --------------


def serve(db: str, data_root: str, port: str, durability: str) -> int:
    from backend.serve import loop_factory, run
    from backend.settings import Settings

    settings = Settings(
        token=TOKEN,
        db_path=Path(db),
        data_root=Path(data_root),
        port=int(port),
        synchronous="FULL" if durability == "full" else "NORMAL",
        stop_grace_s=5.0,
        kill_grace_s=2.0,
        job_options={"synthetic": {"rate": RATE}, "flush_interval": 0.05},
        frontend_dir=None,
    )
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run(settings))


# --- the test -------------------------------------------------------------------------------

if __name__ != "__main__":
    import pytest
    import websockets
    from websockets.exceptions import ConnectionClosed

    from tests.server.live import http, tiny_yaml
    from tests.server.test_restart import alive, free_port

    pytestmark = pytest.mark.slow
    AUTH = {"Authorization": f"Bearer {TOKEN}"}

    class Server:
        """The server subprocess, restartable on the same files and port."""

        def __init__(self, tmp: Path, durability: str) -> None:
            self.args = [str(tmp / "events.db"), str(tmp / "data"), str(free_port()), durability]
            self.url = f"http://127.0.0.1:{self.args[2]}"
            self.process: subprocess.Popen[bytes] | None = None

        def start(self) -> None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.test_chaos", *self.args],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its SIGKILL must not reach the trainer child
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if self.request("GET", "/api/health")[0] == 200:
                        return
                except OSError:
                    pass
                assert self.process.poll() is None, "the server exited at start"
                time.sleep(0.05)
            raise TimeoutError("the server did not answer")

        def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            status, answer, _ = http(self.url, method, path, body, token=TOKEN)
            return status, answer

        def kill(self) -> None:
            assert self.process is not None
            self.process.kill()
            self.process.wait(30)

        def stop(self) -> None:
            assert self.process is not None
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.kill()

    @dataclass
    class Reader:
        """Follows every run; resubscribes after its last seq whenever it is cut off."""

        ws_url: str
        last: int = 0
        problems: list[str] = field(default_factory=list)
        closes: list[int | None] = field(default_factory=list)
        connections: int = 0

        async def follow(self) -> None:
            while True:
                try:
                    async with websockets.connect(
                        self.ws_url, additional_headers=AUTH, max_size=None, open_timeout=5
                    ) as ws:
                        self.connections += 1
                        await self._read(ws)
                except ConnectionClosed as exc:
                    self.closes.append(exc.rcvd.code if exc.rcvd else None)
                except (OSError, TimeoutError):
                    pass  # the server is down: try again shortly
                await asyncio.sleep(0.05)

        async def _read(self, ws: Any) -> None:
            json.loads(await ws.recv())  # hello
            await ws.send(json.dumps({"type": "subscribe", "run_id": None, "after": self.last}))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "events":
                    for event in frame["events"]:
                        if event["seq"] != self.last + 1:
                            self.problems.append(f"seq {event['seq']} after {self.last}")
                        self.last = max(self.last, event["seq"])
                elif frame["type"] == "ping":
                    await ws.send('{"type":"pong"}')

    async def stop_reading(ws_url: str, readers: list[Reader]) -> int | None:
        """Subscribe live, then read nothing until the readers are `BEYOND_QUEUE` events
        further on (more than its queue and every socket buffer can hold); then read
        what got through: the close code it ends with."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        port = int(ws_url.rsplit(":", 1)[1].split("/")[0])
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        ws = await websockets.connect(
            ws_url, sock=sock, additional_headers=AUTH, max_queue=1, max_size=None
        )
        hello = json.loads(await ws.recv())
        after = hello["last_seq"]
        await ws.send(json.dumps({"type": "subscribe", "run_id": None, "after": after}))
        await until(lambda: min(r.last for r in readers) > after + BEYOND_QUEUE, 60, "slow")
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    def run_state(server: Server, run_id: str) -> dict[str, Any]:
        state: dict[str, Any] = server.request("GET", f"/api/runs/{run_id}")[1]["run"]
        return state

    def stored_trainer_events(server: Server, run_id: str) -> int:
        return int(run_state(server, run_id)["version"])

    def child_pid(server: Server, run_id: str) -> int:
        page = server.request("GET", f"/api/runs/{run_id}/events?limit=20")[1]["events"]
        return int(next(e["data"]["pid"] for e in page if "pid" in e["data"]))

    async def until(predicate: Any, within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while not await asyncio.to_thread(predicate):
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.05)

    async def chaos_round(tmp: Path, durability: str, kill: str, rng: random.Random) -> None:
        # Volumes first: a data root with files in it gets no demo dataset.
        config = tiny_yaml(tmp / "data", "chaos")
        server = Server(tmp, durability)
        await asyncio.to_thread(server.start)
        ws_url = server.url.replace("http", "ws") + "/ws"
        readers = [Reader(ws_url) for _ in range(2)]
        following = [asyncio.create_task(r.follow()) for r in readers]
        try:
            status, body = await asyncio.to_thread(
                server.request, "POST", "/api/runs", {"config": config}
            )
            assert status == 201, body
            run_id, log_path = body["run"]["run_id"], Path(body["run"]["log_path"])
            status, body = await asyncio.to_thread(
                server.request, "POST", f"/api/runs/{run_id}/start", {}
            )
            assert status == 200, body
            await until(lambda: stored_trainer_events(server, run_id) > 2_000, 60, "no events")
            # One client stops reading while the others go on, at the full rate.
            assert await stop_reading(ws_url, readers) == 4408
            assert all(4408 not in r.closes for r in readers), "a reading client was cut"
            pid = await asyncio.to_thread(child_pid, server, run_id)
            maps = await asyncio.to_thread(Path(f"/proc/{pid}/maps").read_text)
            assert "libtorch" not in maps, "the synthetic child never imports torch"
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            if kill in ("child", "both"):
                os.kill(pid, signal.SIGKILL)
            if kill in ("server", "both"):
                await asyncio.to_thread(server.kill)
                await until(lambda: not alive(pid), 30, "the orphaned trainer lives on")
                await asyncio.to_thread(server.start)  # reconciles the run
            await until(lambda: run_state(server, run_id)["state"] != "Training", 30, "still on")
            last_seq = run_state(server, run_id)["last_seq"]  # the only run: the store's last
            await until(lambda: all(r.last >= last_seq for r in readers), 30, "readers behind")
        finally:
            for task in following:
                task.cancel()
            await asyncio.gather(*following, return_exceptions=True)
            await asyncio.to_thread(server.stop)
        assert store_last(tmp) == last_seq
        check_store_equals_spool(tmp / "events.db", run_id, log_path, killed=kill != "server")
        for reader in readers:
            assert reader.problems == [], reader.problems  # no gap, no duplicate
            assert reader.last == last_seq
            assert 4408 not in reader.closes
        if kill != "child":
            assert all(r.connections >= 2 for r in readers), "they followed through a restart"

    def store_last(tmp: Path) -> int:
        with sqlite3.connect(tmp / "events.db") as db:
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        db.close()
        return int(last)

    def check_store_equals_spool(db_path: Path, run_id: str, log_path: Path, killed: bool) -> None:
        with sqlite3.connect(db_path) as db:
            rows = db.execute(
                "SELECT seq, version, type, ts, data FROM events WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
        db.close()
        assert [r[1] for r in rows] == list(range(1, len(rows) + 1)), "versions are gapless"
        everything = [(t, ts, json.loads(d)) for _, _, t, ts, d in rows]
        # The trainer's events carry (attempt, n); the server's own (pid, failed) do not.
        stored = [(t, ts, d) for t, ts, d in everything if "n" in d and "attempt" in d]
        for type_, _, data in stored:
            if type_ == "stopped":  # recovery marks a stop the server did not ask for
                data.pop("interrupted", None)
        lines = (log_path / "events.jsonl").read_bytes().split(b"\n")
        *complete, tail = lines
        assert tail == b"" or killed, "only a killed child may leave a torn last line"
        spooled = []
        for line in complete:
            record = json.loads(line)  # a torn line anywhere else fails here
            spooled.append((record["type"], record["ts"], record["data"]))
        assert len(stored) == len(spooled) > 2_000
        assert stored == spooled, "the store holds exactly the spool's events, in order"
        assert [d["n"] for _, _, d in stored] == list(range(1, len(stored) + 1))

    @pytest.mark.timeout(240)
    @pytest.mark.parametrize("durability", ["normal", "full"])
    def test_sigkills_at_full_event_rate_lose_and_double_nothing(
        tmp_path: Path, durability: str
    ) -> None:
        rng = random.Random(f"chaos-{durability}")
        for round_ in range(ROUNDS):
            kill = KILLS[round_ % len(KILLS)]
            asyncio.run(chaos_round(tmp_path / f"round{round_}", durability, kill, rng))


if __name__ == "__main__":
    raise SystemExit(serve(*sys.argv[1:]))
