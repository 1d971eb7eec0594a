"""Start, list and open a run as the history grows: are they flat in the size of events.db?

Writes one history of 20 runs through the real ingest path (`RunService.record`, the
store's group commit, the read models, a snapshot at the end as a clean shutdown writes
it), growing it to each size in turn
(default 0.2M and 2M events), and at each size serves it with the real app (uvicorn, in
this process) and measures, from the client's side:

- `cold_s`: start -> the first answer of GET /api/runs with no snapshot (the whole log
  folded: what every start cost before snapshots, and what one costs after a corrupt one;
  only up to `--cold-max` events, it grows linearly);
- `first_start_s` (above `--cold-max`, where the cold start is skipped): the start with
  the snapshot the growth wrote; it also reconciles the 20 runs the growth left in
  Training (`backend/execution/reconcile.py` reads each one's current attempt);
- `ready_s`: the same start with the snapshot the previous clean stop wrote (nothing
  left training: the snapshot and its tail alone);
- `open_run_s`: GET /api/runs/{id}/page of one run (a 20th of the events), then subscribe
  after its seq until `caught_up`: what the run page needs before it draws (the best of
  three; `first_open_s` is the first, which folds the page from the run's own events when
  it has no snapshot: after a cold start, pages are folded on first open);
- `full_catchup_s`: the old way, subscribe `after: 0` -> `caught_up` (the reference).

Prints one line per size: `events= ready_s= open_run_s= db_mb= cold_s= first_start_s=
first_open_s= full_catchup_s= run_events= write_s=`. Asserts nothing. Run from the repository root:
`.venv/bin/python -m bench.history [--sizes 200000 2000000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's backend, whatever the venv points at

import websockets  # noqa: E402

from backend import events as ev  # noqa: E402
from backend.events import NewEvent  # noqa: E402
from backend.runs import RunService  # noqa: E402
from backend.store import EventStore  # noqa: E402
from tests.server.live import TOKEN, LiveServer, make_settings  # noqa: E402

START_WAIT_S = 3_600  # a cold start at 20M events folds for minutes

RUNS = 20
BATCH = 2_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def grow(db: Path, run_ids: list[str], per_run: int) -> None:
    """Write metrics until every run has `per_run` of them (created and started first)."""
    store = await EventStore.open(db)
    service = RunService(store)
    await service.load()
    for run_id in run_ids:
        if run_id not in service.runs:
            await service.create({"name": run_id, "total_iterations": 10**9}, run_id=run_id)
            await service.command(run_id, "start", {"attempt": 1})
        elif "resume" in service.runs[run_id].run.legal_commands():
            await service.command(run_id, "resume", {})  # the last start reconciled it

    async def produce(run_id: str) -> None:
        done = service.runs[run_id].iteration
        while done < per_run:
            n = min(BATCH, per_run - done)
            batch = [
                NewEvent(ev.METRIC, {"iteration": i, "loss": 1 / i + (i % 97) * 1e-4, "lr": 1e-3})
                for i in range(done + 1, done + n + 1)
            ]
            await service.record(run_id, batch)  # the server's ingest path
            done += n

    await asyncio.gather(*(produce(r) for r in run_ids))
    await service.snapshots.close()  # as a clean shutdown does
    await store.close()


def get(url: str) -> bytes:
    request = urllib.request.Request(url, headers=AUTH)
    with urllib.request.urlopen(request, timeout=600) as response:
        body: bytes = response.read()
        return body


def start_and_list(settings: object) -> tuple[LiveServer, float]:
    """Start the real app; seconds until GET /api/runs answers."""
    began = time.perf_counter()
    live = LiveServer(settings)  # type: ignore[arg-type]
    # LiveServer.start() gives up after 30 s; a cold start at 2M+ events takes longer.
    live._thread = threading.Thread(target=live._run, name="bench-server", daemon=True)
    live._thread.start()
    while not live.server.started:
        if time.perf_counter() - began > START_WAIT_S:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    live.port = live.server.servers[0].sockets[0].getsockname()[1]
    get(live.url + "/api/runs")
    return live, time.perf_counter() - began


async def catch_up(live: LiveServer, run_id: str, after: int) -> int:
    """Subscribe to one run after `after` until caught_up; events received."""
    received = 0
    async with websockets.connect(live.ws_url, additional_headers=AUTH, max_size=None) as ws:
        await ws.recv()  # hello
        await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": after}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "events":
                received += len(frame["events"])
            elif frame["type"] == "ping":  # a long catch-up outlasts the heartbeat timeout
                await ws.send(json.dumps({"type": "pong"}))
            elif frame["type"] == "caught_up":
                return received


def open_run(live: LiveServer, run_id: str) -> float:
    began = time.perf_counter()
    page = json.loads(get(f"{live.url}/api/runs/{run_id}/page"))["page"]
    asyncio.run(catch_up(live, run_id, page["seq"]))
    return time.perf_counter() - began


def measure(tmp: Path, events: int, cold_max: int, catchup_max: int) -> str:
    db = tmp / "events.db"
    run_ids = [f"run{r:02d}" for r in range(RUNS)]
    began = time.perf_counter()
    asyncio.run(grow(db, run_ids, events // RUNS))
    write_s = time.perf_counter() - began
    conn = sqlite3.connect(db)
    total = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    if events <= cold_max:
        with conn:
            conn.execute("DELETE FROM snapshots")  # the cold start: no snapshot to trust
    conn.close()  # before the server takes its exclusive lock
    settings = make_settings(tmp, db_path=db, ws_queue_events=20_000)
    cold, first = "skipped", "skipped"
    live, first_s = start_and_list(settings)  # reconciles the runs the growth left training
    live.stop()  # a clean stop writes the snapshot
    if events <= cold_max:
        cold = f"{first_s:.2f}"
    else:
        first = f"{first_s:.2f}"
    live, ready_s = start_and_list(settings)
    first_open_s = open_run(live, run_ids[0])  # may fold the page from its run's events
    open_run_s = min(open_run(live, run_ids[0]) for _ in range(3))
    full_catchup, run_events = "skipped", 0
    if events <= catchup_max:
        began = time.perf_counter()
        run_events = asyncio.run(catch_up(live, run_ids[0], 0))
        full_catchup = f"{time.perf_counter() - began:.2f}"
    live.stop()
    db_mb = sum(p.stat().st_size for p in tmp.glob("events.db*")) / 1e6
    return (
        f"events={total} ready_s={ready_s:.3f} open_run_s={open_run_s:.3f} db_mb={db_mb:.0f} "
        f"cold_s={cold} first_start_s={first} first_open_s={first_open_s:.3f} "
        f"full_catchup_s={full_catchup} "
        f"run_events={run_events} write_s={write_s:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--dir", type=Path, default=None, help="where to grow the history")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="grow the history in this folder and leave it there: a later run with the same "
        "folder goes on from it (a 20M-event history takes a long while to write)",
    )
    parser.add_argument(
        "--cold-max",
        type=int,
        default=2_000_000,
        help="measure the cold start (whole log folded) only up to this size: it grows linearly",
    )
    parser.add_argument(
        "--catchup-max",
        type=int,
        default=20_000_000,
        help="measure the old full catch-up of one run only up to this size (minutes at 20M)",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        else:
            tmp = args.keep
            tmp.mkdir(parents=True, exist_ok=True)
        for size in sorted(args.sizes):
            print(measure(tmp, size, args.cold_max, args.catchup_max), flush=True)


if __name__ == "__main__":
    main()
