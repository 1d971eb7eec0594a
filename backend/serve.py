"""`trainboard serve`: run the server, print its URL with the access token.

The token is generated on first start and kept next to the event store (mode 0600), so
the printed URL stays valid across restarts; `--token` (or TRAINBOARD_TOKEN) sets one.
Binding to anything but a loopback address needs a token given explicitly: a server
reachable from the network should not run on a secret only its console has seen.

Every start-up refusal (no token for a public address, a data root that is a file, an
event store in a missing folder or one that cannot be used, `--executor slurm` where
there is no `sbatch`) is one line on stderr and exit status 2, before anything is
written. SIGTERM, like Ctrl-C, stops the server gracefully (trainer children stopped,
the store closed) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import ipaddress
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.execution.slurm import SlurmError, add_executor_arguments, executor_from_args
from backend.settings import Settings
from backend.store import add_durability_argument

TOKEN_ENV = "TRAINBOARD_TOKEN"
# The request line and headers of one HTTP request (a browser sends a few KiB).
MAX_HEAD_BYTES = 64 * 1024
GC_YOUNG = 10_000  # allocations between young collections (CPython: 700); see settle_heap


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the browser app and the API",
        description="Serve Trainboard. Prints the URL to open, with its access token.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=port_number, default=8000, help="port (default 8000; 0 = any free)"
    )
    parser.add_argument("--db", type=Path, default=Path("events.db"), help="event store file")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        help="the only folder the browser may browse and upload into (default ./data)",
    )
    parser.add_argument(
        "--token", help=f"access token (default: ${TOKEN_ENV}, else generated and kept)"
    )
    parser.add_argument(
        "--max-concurrent",
        type=at_least_one,
        default=None,
        help="runs that may train at once (default: one per visible GPU, one on a CPU-only "
        "machine); more start requests wait in the queue",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another origin the browser app may be served from (a dev server)",
    )
    add_durability_argument(parser)
    add_executor_arguments(parser)
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="at start, resume the runs a server stop or crash interrupted",
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    parser.set_defaults(func=serve_command)


def port_number(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1 to 65535, or 0 for any")
    return port


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_file(db: Path) -> Path | None:
    return None if str(db) == ":memory:" else db.with_name(db.name + "-token")


def load_or_create_token(path: Path | None) -> str:
    """The kept token, or a new one written with mode 0600 (readable by this user only)."""
    if path is None:
        return secrets.token_hex(24)
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    if token:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return token
    token = secrets.token_hex(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    return token


def serve_command(args: argparse.Namespace) -> int:
    given = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if not is_loopback(args.host) and not given:
        print(
            f"error: refusing to listen on {args.host} without a token: anyone who can reach "
            f"it could start processes and read files. Pass --token (or set {TOKEN_ENV}) "
            "with a long random secret, or bind to 127.0.0.1 and use an SSH tunnel.",
            file=sys.stderr,
        )
        return 2
    if given is not None and len(given) < 8:
        print("error: the token must be at least 8 characters long", file=sys.stderr)
        return 2
    refusal = check_places(args.db, args.data_root)
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        executor = executor_from_args(args)
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sockets = listen(args.host, args.port)
    except OSError as exc:
        print(f"error: {cannot_listen(args.host, args.port, exc)}", file=sys.stderr)
        return 2
    refusal = check_store(args.db)
    if refusal is not None:
        for sock in sockets:
            sock.close()
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        token = given or load_or_create_token(token_file(args.db))
    except OSError as exc:
        print(
            f"error: cannot keep the access token in {token_file(args.db)} ({exc.strerror}): "
            "make that folder writable, or pass --token",
            file=sys.stderr,
        )
        return 2
    settings = Settings(
        token=token,
        db_path=args.db,
        data_root=args.data_root,
        host=args.host,
        port=args.port,
        max_concurrent=args.max_concurrent,
        allowed_origins=frozenset(args.allow_origin),
        demo_on_first_run=True,
        synchronous=args.durability.upper(),
        auto_resume=args.auto_resume,
        executor=executor,
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(run(settings, args.log_level, sockets))
    except (KeyboardInterrupt, Terminated):  # re-raised by uvicorn after a clean shutdown
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(SystemExit):
    """SIGTERM arrived. A SystemExit, so that asyncio lets it through to `serve_command`
    from wherever it is raised, as it does KeyboardInterrupt."""


def _terminate(signum: int, frame: object) -> None:
    # While serving, uvicorn has its own handler (a graceful shutdown); it re-raises the
    # signal to this one when done. Left to the default, the process would die of it
    # (status -15) after having shut down cleanly.
    raise Terminated


def check_places(db: Path, data_root: Path) -> str | None:
    """Why the event store or the data root cannot be used, or None; writes nothing."""
    if str(db) != ":memory:":
        folder = db.parent
        if folder.exists() and not folder.is_dir():
            return f"--db {db} is inside {folder}, which is a file: pass another --db"
        if not folder.exists():
            return (
                f"the folder of the event store, {folder}, does not exist: create it "
                f"(mkdir -p {folder}) or pass another --db"
            )
        if db.is_dir():
            return f"--db {db} is a folder: pass the path of a file, e.g. {db / 'events.db'}"
    if data_root.exists() and not data_root.is_dir():
        return (
            f"the data root {data_root} is a file, not a folder: pass --data-root a folder "
            "(it is created when missing)"
        )
    return None


def settle_heap() -> None:
    """Tune the cyclic garbage collector for a server, once it has started: what is alive
    then (modules, the loaded read models) moves to the permanent generation, never scanned
    again, and young collections run every `GC_YOUNG` allocations instead of 700. The heap
    is mostly long-lived, nearly all of it freed by reference counting, and every event
    allocates a few objects: with CPython's defaults the collector took about a tenth of
    the server's CPU in `bench/fanout.py`, with full collections of up to 88 ms (a p99
    spike for every client); with these, 0.13 s against 2.8 s over the same run."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (uvicorn[standard] brings it): a faster event loop."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def uvicorn_config(app: Any, settings: Settings, log_level: str = "warning") -> Any:
    """How Trainboard runs under uvicorn (the tests and benchmarks use it too)."""
    import uvicorn

    from backend import wire

    return uvicorn.Config(
        wire.BodyDeadline(app),  # a body trickled in: 408, connection closed
        host=settings.host,
        port=settings.port,
        # h11, not httptools: httptools buffers a request head of any size, so one client
        # could fill the server's memory before the token is even checked. With a
        # deadline for the head (408, connection closed): uvicorn has none.
        http=wire.h11_protocol(),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,  # over it: 400, connection closed
        timeout_keep_alive=5,  # seconds an idle kept-alive connection is held open
        ws_max_size=settings.ws_max_frame,  # bigger frames: close 1009
        # Compression would run once per frame per client: at thousands of events per
        # second and many clients it costs more CPU than the fan-out itself.
        ws_per_message_deflate=False,
        # No protocol-level ping: it would cut a client that stops reading with no close
        # code. Liveness is the app's heartbeat (4000) and a full outbox closes with 4408.
        ws_ping_interval=None,
        log_level=log_level,
        access_log=False,  # URLs may carry ?token=
        lifespan="on",
    )


def check_store(db: Path) -> str | None:
    """The store's own refusal (not Trainboard's, newer, held by another process,
    read-only...), or None. Checked before uvicorn's start-up, and before the token file is
    written, so that a refused start leaves nothing behind; a new store is created."""
    from backend.store import EventStore, StoreError

    async def probe() -> None:
        await (await EventStore.open(db)).close()

    try:
        asyncio.run(probe())
    except StoreError as exc:
        return str(exc)
    return None


def listen(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for every address of `host`, before anything else is done, so that a
    port in use or a wrong host is refused before the store or the data root is touched."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host} ({reason}): pass --host an address of this machine"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {host}:{port}: the port is in use (another Trainboard?); "
            "stop it, or pass another --port"
        )
    return f"cannot listen on {host}:{port} ({reason}): pass another --host or --port"


async def run(
    settings: Settings, log_level: str = "warning", sockets: list[socket.socket] | None = None
) -> int:
    import uvicorn

    from backend.server import create_app

    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level))
    announce = asyncio.create_task(_once_started(server, settings))
    try:
        await server.serve(sockets=sockets)
    finally:
        announce.cancel()
    return 0 if server.started else 1


async def _once_started(server: object, settings: Settings) -> None:
    """Once the socket listens: tune the collector for the loaded heap, print the URL."""
    # uvicorn offers a flag, not an event, for "listening".
    while not getattr(server, "started", False):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    settle_heap()
    _announce(server, settings)


def _announce(server: object, settings: Settings) -> None:
    """Print the URL (the port is known even when it was 0)."""
    port = settings.port
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                port = sock.getsockname()[1]
                break
    host = settings.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    print("Trainboard is running. Open this URL (it carries the access token):", flush=True)
    print(f"    http://{shown}:{port}/?token={settings.token}", flush=True)
    print(
        f"Data root: {settings.data_root.resolve()}   Event store: {settings.db_path}", flush=True
    )
    print("Press Ctrl-C to stop.", flush=True)
