"""WebSocket fan-out: producer-to-client latency and rate with 1, 10 and 100 subscribers.

Prints figures; asserts nothing. Three kinds of process:

- the server: the real app (`create_app`) under uvicorn, with a synthetic producer that
  records metric events at a fixed rate through the real ingest path
  (`RunService.record` -> group commit -> hub -> each client's outbox and sender), and,
  at the same time, a second run trained by the synthetic trainer (`--trainer-rate`,
  10,000 events/s by default) in a real spawned child, through the real child -> pipe
  -> spool -> store -> hub path: the load a fast training run puts on the server;
- the clients, in processes of their own so they do not share the server's loop: each
  subscribes to the producer's run and notes, for every event, receipt time minus the
  emit time the producer put in its data (`t`), and how many events it received per
  second (gaps are checked on the run's gapless `version`);
- this orchestrator, which also times a plain `trainboard serve` from spawn to its
  first answer and reads its resident memory once idle.

The server's resident memory is printed before and after the scenarios. The last line
is machine-readable: `p99_ms_100_clients=<n> events_per_s=<n> trainer_events_per_s=<n>
rss_mib_before=<n> rss_mib_after=<n> fold_events_per_s=<n>` (the p99 emit-to-receipt
latency over all events of all 100 clients, the lowest rate any of them sustained, the
rate the trainer's events were stored at meanwhile, the server's RSS around the
scenarios, and this machine's speed at the time: `bench/store.py`'s fold of 200,000
events in one Python thread, since the latencies depend on it and this machine's speed
varies up to twofold from hour to hour).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.store import fold_rate  # noqa: E402 (after the path, as the other scripts)

TOKEN = "bench-token-0123456789"
SEQ = re.compile(rb'"version":(\d+)')  # per run, gapless
EMIT = re.compile(rb'"t":([0-9.e+-]+)')


# --- the server process ---------------------------------------------------------------------


async def serve(port_file: Path, data: Path, trainer_rate: float) -> None:
    import uvicorn

    from backend.events import NewEvent
    from backend.serve import settle_heap, uvicorn_config
    from backend.server import Context, create_app
    from backend.settings import Settings

    settings = Settings(
        token=TOKEN,
        db_path=data / "events.db",
        data_root=data / "root",
        port=0,
        frontend_dir=None,
        job_options={"synthetic": {"rate": trainer_rate}, "flush_interval": 0.05},
    )
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    settle_heap()  # as `trainboard serve` does once started
    ctx: Context = server.lifespan.state["ctx"]
    created = await ctx.service.create({"name": "bench", "total_iterations": 0})
    run_id = created.run_id
    await ctx.service.command(run_id, "start", {"attempt": 1})
    port = server.servers[0].sockets[0].getsockname()[1]
    port_file.write_text(str(port))  # noqa: ASYNC240 (once, before anything is timed)

    async def produce(rate: float, seconds: float) -> int:
        produced = 0
        began = time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds:
            due = int(rate * elapsed) - produced
            if due <= 0:
                await asyncio.sleep(0.001)
                continue
            now = time.time()
            batch = [
                NewEvent("metric", {"iteration": produced + k, "loss": 0.5, "lr": 0.01, "t": now})
                for k in range(due)
            ]
            await ctx.service.record(run_id, batch)
            produced += due
        return produced

    async def ingest(count: int, batch: int) -> tuple[float, float]:
        """As fast as possible: (events/s, CPU seconds of this process per event)."""
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, count, batch):
            now = time.time()
            await ctx.service.record(
                run_id,
                [
                    NewEvent("metric", {"iteration": i, "loss": 0.5, "lr": 0.01, "t": now})
                    for i in range(start, start + batch)
                ],
            )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return count / wall, cpu / count

    async def trainer(command: str) -> str:
        """Start or stop the synthetic trainer's run; how many events it has stored."""
        if command == "start":
            made = await ctx.service.create(
                {
                    "name": "synthetic-trainer",
                    "config": "{}",
                    "output_path": str(data / "trainer-out"),
                    "log_path": str(data / "trainer-log"),
                    "total_iterations": 0,
                }
            )
            trainer_run.append(made.run_id)
            await ctx.supervisor.start(made.run_id)
        elif command == "stop":
            await ctx.supervisor.stop(trainer_run[0])
            await ctx.supervisor.wait(trainer_run[0])
        # The producer's run (the clients follow it) and the trainer's event count.
        return f"{run_id} {ctx.service.get(trainer_run[0]).run.version}"

    trainer_run: list[str] = []
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if words and words[0] == "produce":
            count = await produce(float(words[1]), float(words[2]))
            print(f"done {count}", flush=True)
        elif words and words[0] == "ingest":
            rate, cpu = await ingest(int(words[1]), int(words[2]))
            print(f"ingest {rate} {cpu}", flush=True)
        elif words and words[0] == "trainer":
            print(f"trainer {await trainer(words[1])}", flush=True)
        elif words and words[0] == "quit":
            break
    server.should_exit = True
    await serving


# --- the client processes -------------------------------------------------------------------


async def clients(url: str, count: int, warmup: float, run_id: str) -> None:
    import websockets

    headers = {"Authorization": f"Bearer {TOKEN}"}
    connections = [
        await websockets.connect(url, additional_headers=headers, max_size=None, compression=None)
        for _ in range(count)
    ]
    stats = [{"count": 0, "first": 0.0, "last": 0.0, "gaps": 0, "seq": -1} for _ in connections]
    latencies: list[float] = []
    start_t: list[float] = []

    async def follow(i: int, ws: Any, ready: asyncio.Event) -> None:
        hello = json.loads(await ws.recv())
        stat = stats[i]
        await ws.send(
            json.dumps({"type": "subscribe", "run_id": run_id, "after": hello["last_seq"]})
        )
        while True:
            raw = await ws.recv(decode=False)
            received = time.time()
            if b'"caught_up"' in raw[:30]:
                ready.set()
                continue
            if not raw.startswith(b'{"type":"events"'):
                if b'"ping"' in raw[:20]:
                    await ws.send('{"type":"pong"}')
                continue
            # Cheap on purpose (a client process handles a million events a second at 100
            # clients): count events, check the first and last seq, and charge every event
            # of the frame the latency of its oldest one (an upper bound).
            n = raw.count(b'"seq":')
            first = int(SEQ.search(raw).group(1))  # type: ignore[union-attr]
            last = int(SEQ.match(raw, raw.rfind(b'"version":')).group(1))  # type: ignore[union-attr]
            if (stat["seq"] >= 0 and first != stat["seq"] + 1) or last - first + 1 != n:
                stat["gaps"] += 1
            stat["seq"] = last
            oldest = float(EMIT.search(raw).group(1))  # type: ignore[union-attr]
            if not start_t:
                start_t.append(oldest)
            if oldest < start_t[0] + warmup:
                continue
            stat["count"] += n
            stat["first"] = stat["first"] or received
            stat["last"] = received
            latencies.extend([received - oldest] * n)

    readies = [asyncio.Event() for _ in connections]
    tasks = [
        asyncio.create_task(follow(i, ws, ready))
        for i, (ws, ready) in enumerate(zip(connections, readies, strict=True))
    ]
    await asyncio.gather(*(r.wait() for r in readies))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    rates = [
        s["count"] / (s["last"] - s["first"]) if s["last"] > s["first"] else 0.0 for s in stats
    ]
    result = {
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
        "rates": rates,
        "gaps": sum(int(s["gaps"]) for s in stats),
    }
    print(json.dumps(result), flush=True)


async def catch_up(url: str) -> None:
    """One client reads the whole history from seq 0: events per second until caught up."""
    import websockets

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with websockets.connect(
        url, additional_headers=headers, max_size=None, compression=None
    ) as ws:
        await ws.recv()
        began = time.perf_counter()
        await ws.send(json.dumps({"type": "subscribe", "run_id": None, "after": 0}))
        count = 0
        while True:
            raw = await ws.recv(decode=False)
            if raw.startswith(b'{"type":"events"'):
                count += raw.count(b'"seq":')
            elif b'"caught_up"' in raw[:30]:
                break
        print(json.dumps({"events": count, "seconds": time.perf_counter() - began}), flush=True)


# --- the orchestrator -----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan  # no client got past its warm-up: the server fell that far behind
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def start_to_ready(tmp: Path) -> tuple[float, float]:
    """Seconds from spawning `trainboard serve` to its first answer; its idle RSS in MiB."""
    root = tmp / "ready-root"
    root.mkdir()
    (root / "keep").write_text("")  # a data root with files: no demo dataset to write
    port = _free_port()
    began = time.perf_counter()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "backend", "serve", "--port", str(port), "--token", TOKEN),
            *("--db", str(tmp / "ready.db"), "--data-root", str(root)),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/health", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    while True:
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.005)
    ready = time.perf_counter() - began
    time.sleep(1.0)
    rss = _rss_mib(process.pid)
    process.terminate()
    process.wait(30)
    return ready, rss


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scenario(
    server: subprocess.Popen[str],
    url: str,
    run_id: str,
    n: int,
    rate: float,
    seconds: float,
    per_proc: int,
) -> dict[str, Any]:
    procs = []
    for start in range(0, n, per_proc):
        count = str(min(per_proc, n - start))
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "clients", url, count, "1.0", "--run-id", run_id],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    assert server.stdin is not None and server.stdout is not None
    cpu_before = [_cpu_s(p.pid) for p in (server, *procs)]
    server.stdin.write(f"produce {rate} {seconds + 1.0}\n")
    server.stdin.flush()
    produced = int(server.stdout.readline().split()[1])
    time.sleep(0.5)  # the last events reach the clients
    cpu = [_cpu_s(p.pid) - b for p, b in zip((server, *procs), cpu_before, strict=True)]
    latencies: list[float] = []
    rates: list[float] = []
    gaps = 0
    for proc in procs:
        out, _ = proc.communicate("stop\n", timeout=120)
        result = json.loads(out.strip().splitlines()[-1])
        latencies += result["latencies_ms"]
        rates += result["rates"]
        gaps += result["gaps"]
    return {
        "clients": n,
        "produced": produced,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=math.nan),
        "rate_min": min(rates),
        "rate_mean": sum(rates) / len(rates),
        "gaps": gaps,
        "server_cpu": cpu[0] / (seconds + 1.5),
        "clients_cpu": sum(cpu[1:]) / (seconds + 1.5),
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"{r['clients']:>3} clients: p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
        f"max {r['max_ms']:6.1f} ms  per-client rate min {r['rate_min']:,.0f} "
        f"mean {r['rate_mean']:,.0f} events/s  gaps {r['gaps']}  "
        f"CPU: server {r['server_cpu']:.0%} clients {r['clients_cpu']:.0%}"
    )


def trainer(server: subprocess.Popen[str], command: str) -> tuple[str, int]:
    """Start/stop/poll the synthetic trainer: (the producer's run id, trainer events)."""
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(f"trainer {command}\n")
    server.stdin.flush()
    _, run_id, events = server.stdout.readline().split()
    return run_id, int(events)


def orchestrate(rate: float, seconds: float, per_proc: int, trainer_rate: float) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ready, rss = start_to_ready(tmp)
        print(f"server start-to-ready {ready:.2f} s, idle RSS {rss:.0f} MiB (trainboard serve)")
        speed = fold_rate(200_000)
        print(
            f"this machine's speed now: {speed:,.0f} events/s folded by one Python thread "
            "(bench/store.py's fold; the latencies below scale with it)"
        )
        port_file = tmp / "port"
        server = subprocess.Popen(
            [
                *(sys.executable, __file__, "server", str(port_file), str(tmp / "bench")),
                *("--trainer-rate", str(trainer_rate)),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        (tmp / "bench").mkdir()
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None:
                raise SystemExit("the bench server did not start")
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{port_file.read_text()}/ws"
        load = os.getloadavg()[0]
        print(
            f"producer {rate:,.0f} events/s for {seconds:.0f} s (after 1 s warm-up); "
            f"{os.cpu_count()} CPUs, load average {load:.1f} when starting"
        )
        results = []
        try:
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write("ingest 100000 500\n")
            server.stdin.flush()
            _, ingest_rate, cpu_per_event = server.stdout.readline().split()
            print(
                f"ingest alone (record -> store -> hub, no client): {float(ingest_rate):,.0f} "
                f"events/s, {float(cpu_per_event) * 1e6:.1f} us of server CPU per event"
            )
            run_id, _ = trainer(server, "start")
            time.sleep(2.0)  # the child is up and emitting
            _, trained = trainer(server, "poll")
            began = time.perf_counter()
            rss_before = _rss_mib(server.pid)
            print(
                f"synthetic trainer at {trainer_rate:,.0f} events/s in a real child (its own "
                f"run); server RSS {rss_before:.0f} MiB before the scenarios"
            )
            for n in (1, 10, 100):
                result = scenario(server, url, run_id, n, rate, seconds, per_proc)
                results.append(result)
                print(summary(result), flush=True)
            _, trained_after = trainer(server, "poll")
            trainer_per_s = (trained_after - trained) / (time.perf_counter() - began)
            rss_after = _rss_mib(server.pid)
            trainer(server, "stop")
            print(
                f"the trainer's events stored meanwhile: {trainer_per_s:,.0f} events/s; "
                f"server RSS {rss_after:.0f} MiB after"
            )
            history = subprocess.run(
                [sys.executable, __file__, "catch-up", url],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                timeout=600,
            )
            if not history.stdout.strip():
                raise SystemExit(f"the catch-up client failed:\n{history.stderr}")
            caught = json.loads(history.stdout.strip().splitlines()[-1])
            print(
                f"catch-up from seq 0: {caught['events']:,} events in {caught['seconds']:.2f} s "
                f"({caught['events'] / caught['seconds']:,.0f} events/s to one client)"
            )
        finally:
            assert server.stdin is not None
            server.stdin.write("quit\n")
            server.stdin.flush()
            server.wait(60)
        last = results[-1]
        print(
            f"p99_ms_100_clients={last['p99_ms']:.1f} events_per_s={last['rate_min']:.0f} "
            f"trainer_events_per_s={trainer_per_s:.0f} rss_mib_before={rss_before:.0f} "
            f"rss_mib_after={rss_after:.0f} fold_events_per_s={speed:.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    server = sub.add_parser("server")
    server.add_argument("port_file", type=Path)
    server.add_argument("data", type=Path)
    server.add_argument("--trainer-rate", type=float, default=10_000)
    client = sub.add_parser("clients")
    client.add_argument("url")
    client.add_argument("count", type=int)
    client.add_argument("warmup", type=float)
    client.add_argument("--run-id", required=True)
    history = sub.add_parser("catch-up")
    history.add_argument("url")
    parser.add_argument("--rate", type=float, default=10_000, help="events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--clients-per-process", type=int, default=50)
    parser.add_argument(
        "--trainer-rate", type=float, default=10_000, help="synthetic trainer events/s"
    )
    args = parser.parse_args()
    from backend.serve import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if args.mode == "server":
            runner.run(serve(args.port_file, args.data, args.trainer_rate))
        elif args.mode == "clients":
            runner.run(clients(args.url, args.count, args.warmup, args.run_id))
        elif args.mode == "catch-up":
            runner.run(catch_up(args.url))
        else:
            orchestrate(args.rate, args.seconds, args.clients_per_process, args.trainer_rate)


if __name__ == "__main__":
    main()
