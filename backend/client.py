"""A headless Trainboard client: REST helpers and a resilient WebSocket event stream.

`Rest` is synchronous (urllib, nothing to install) for one-shot calls and downloads.
`Client` is asyncio: it subscribes from a seq, hands events over in order, reconnects
with backoff when the connection drops (or the server says it was too slow, 4408),
resumes from the last seq it delivered and drops any event it has already delivered.
Commands carry ids; a command whose answer was lost in a reconnect is sent again with
the same id, and the server answers it from the first result instead of applying it
twice.

    async with Client("http://127.0.0.1:8000", token, run_id=run) as client:
        async for event in client.events():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

log = logging.getLogger(__name__)

URL_ENV = "TRAINBOARD_URL"
TOKEN_ENV = "TRAINBOARD_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"
CLOSE_TOO_SLOW = 4408
CLOSE_UNAUTHORIZED = 4401


class ClientError(Exception):
    """The server refused a request: `code` and `details` as in the protocol."""

    def __init__(
        self, message: str, code: str = "error", status: int = 0, details: Any = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.details = details or {}


def resolve(url: str | None, token: str | None) -> tuple[str, str | None]:
    """Server URL and token from arguments, the environment, or a printed `?token=` URL."""
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    token = token or os.environ.get(TOKEN_ENV) or query.get("token")
    base = urllib.parse.urlunsplit((parts.scheme or "http", parts.netloc, "", "", ""))
    return base.rstrip("/"), token


def websocket_url(base: str) -> str:
    parts = urllib.parse.urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/ws", "", ""))


def new_id() -> str:
    return uuid.uuid4().hex


# --- REST ------------------------------------------------------------------------------------


class Rest:
    """Synchronous calls to the REST API; refusals raise `ClientError`."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _open(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"accept": "application/json"}
        data = None
        if body is not None:
            data = encode(body).encode()
            headers["content-type"] = "application/json"
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _refusal(exc) from None
        except urllib.error.URLError as exc:
            raise ClientError(
                f"cannot reach the server at {self.url}: {exc.reason}; is `trainboard serve` "
                f"running? (set --url or ${URL_ENV})",
                "unreachable",
            ) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            return json.loads(response.read())

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self.call("GET", path + (f"?{query}" if query else ""))

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.get("/api/health")
        return answer

    def runs(self, *, archived: bool = False, deleted: bool = False) -> list[dict[str, Any]]:
        """The runs, newest first; archived and deleted ones only when asked for."""
        flags = {"archived": 1 if archived else None, "deleted": 1 if deleted else None}
        runs: list[dict[str, Any]] = self.get("/api/runs", **flags)["runs"]
        return runs

    def run(self, run_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.get(f"/api/runs/{_quote(run_id)}")
        return answer

    # Managing runs (docs/experiments.md): each returns `{"run", "event"}`.

    def rename(self, run_id: str, name: str, command_id: str | None = None) -> dict[str, Any]:
        return self._manage(run_id, "rename", {"name": name}, command_id)

    def tag(
        self,
        run_id: str,
        add: list[str] | None = None,
        remove: list[str] | None = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Add and remove tags (the others stay)."""
        return self._manage(run_id, "tag", {"add": add or [], "remove": remove or []}, command_id)

    def set_tags(
        self, run_id: str, tags: list[str], command_id: str | None = None
    ) -> dict[str, Any]:
        """Replace the whole tag set."""
        return self._manage(run_id, "tag", {"tags": tags}, command_id)

    def notes(self, run_id: str, notes: str, command_id: str | None = None) -> dict[str, Any]:
        return self._manage(run_id, "notes", {"notes": notes}, command_id)

    def archive(self, run_id: str, command_id: str | None = None) -> dict[str, Any]:
        return self._manage(run_id, "archive", {}, command_id)

    def unarchive(self, run_id: str, command_id: str | None = None) -> dict[str, Any]:
        return self._manage(run_id, "unarchive", {}, command_id)

    def delete(
        self, run_id: str, remove_files: bool = False, command_id: str | None = None
    ) -> dict[str, Any]:
        """A tombstone; with `remove_files`, the run's own files go too (the event lists them)."""
        return self._manage(run_id, "delete", {"remove_files": remove_files}, command_id)

    def _manage(
        self, run_id: str, command: str, data: dict[str, Any], command_id: str | None
    ) -> dict[str, Any]:
        path = f"/api/runs/{_quote(run_id)}/{command}"
        answer: dict[str, Any] = self.call("POST", path, {**data, "id": command_id or new_id()})
        return answer

    def artifact(self, run_id: str, path: str) -> bytes:
        """A file of the run's output or log folder (a preview PNG, say)."""
        query = urllib.parse.urlencode({"path": path})
        with self._open("GET", f"/api/runs/{_quote(run_id)}/artifact?{query}") as response:
            data: bytes = response.read()
        return data

    def create(self, request: dict[str, Any], command_id: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self.call(
            "POST", "/api/runs", {**request, "id": command_id or new_id()}
        )
        return answer

    def command(
        self,
        run_id: str,
        command: str,
        command_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """start, stop, resume, dequeue or move (`data`: its fields); returns `{"run",
        "event"}` (a queued start adds `"queued": true, "position"`)."""
        path = f"/api/runs/{_quote(run_id)}/{command}"
        body = {**(data or {}), "id": command_id or new_id()}
        answer: dict[str, Any] = self.call("POST", path, body)
        return answer

    def queue(self) -> dict[str, Any]:
        """The slots and the queued runs (`GET /api/queue`)."""
        answer: dict[str, Any] = self.get("/api/queue")
        return answer

    def events(
        self, run_id: str | None = None, after: int = 0, limit: int = 1000
    ) -> dict[str, Any]:
        path = f"/api/runs/{_quote(run_id)}/events" if run_id else "/api/events"
        answer: dict[str, Any] = self.get(path, after=after, limit=limit)
        return answer

    def iter_events(self, run_id: str | None = None, after: int = 0) -> Iterator[dict[str, Any]]:
        """Every stored event after `after`, page by page."""
        while True:
            page = self.events(run_id, after, limit=5000)
            yield from page["events"]
            after = page["next_after"]
            if not page["more"]:
                return

    def download(self, path: str, out: IO[bytes]) -> int:
        """Stream a download (an export) into `out`; returns the bytes written."""
        written = 0
        with self._open("GET", path) as response:
            while chunk := response.read(64 * 1024):
                out.write(chunk)
                written += len(chunk)
        return written


def encode(value: Any) -> str:
    """JSON as the server accepts it; NaN or Infinity is refused here, before sending."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        raise ClientError(
            "the request holds NaN or Infinity, which JSON cannot carry: send finite numbers",
            "bad_request",
        ) from None


def _quote(run_id: str | None) -> str:
    return urllib.parse.quote(run_id or "", safe="")


def _refusal(exc: urllib.error.HTTPError) -> ClientError:
    try:
        error = json.loads(exc.read())["error"]
        return ClientError(error["message"], error["code"], exc.code, error.get("details"))
    except (ValueError, KeyError, TypeError):
        return ClientError(f"HTTP {exc.code}: {exc.reason}", "http", exc.code)


# --- WebSocket ---------------------------------------------------------------------------------


class Client:
    """A WebSocket connection that survives reconnects; see the module docstring."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        run_id: str | None = None,
        after: int = 0,
        subscribe: bool = True,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        queue_size: int = 256,
        max_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.url = websocket_url(url)
        self.token = token
        self.run_id = run_id
        self.last_seq = after
        self.subscribed = subscribe
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_size = max_size
        self.connections = 0  # how many times it connected (1 + reconnects)
        self.caught_up = asyncio.Event()
        self.connected = asyncio.Event()
        self.hello: dict[str, Any] = {}
        # Batches tagged with the subscription they belong to (see `subscribe`).
        self._queue: asyncio.Queue[tuple[int, list[dict[str, Any]]] | BaseException | None] = (
            asyncio.Queue(queue_size)
        )
        self._generation = 0
        self._pending: dict[str, tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = {}
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Events are ignored until the server acknowledges the latest subscribe (acks come
        # in order): frames already on their way belong to the previous subscription.
        self._subscribes = 0
        self._acks = 0

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trainboard-client")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._pending.values():
            future.cancel()

    # --- what the user calls ------------------------------------------------------------

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events in seq order, each once; raises if the connection cannot be kept."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            generation, batch = item
            for event in batch:
                if generation != self._generation:
                    break  # queued before a subscribe that replaced its subscription
                yield event

    async def subscribe(self, run_id: str | None, after: int = 0) -> None:
        """Switch to another run (or all runs, None) from `after`."""
        self.run_id, self.last_seq, self.subscribed = run_id, after, True
        self._generation += 1
        self.caught_up.clear()
        await self._send_subscribe()

    async def command(
        self,
        command: str,
        run_id: str | None = None,
        data: dict[str, Any] | None = None,
        *,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Send a command and return its result frame; a refusal raises `ClientError`.

        It waits across reconnects (wrap it in `asyncio.timeout` to bound the wait).
        """
        command_id = command_id or new_id()
        frame: dict[str, Any] = {
            "type": "command",
            "id": command_id,
            "command": command,
            "run_id": run_id,
        }
        if data is not None:
            frame["data"] = data
        encode(frame)  # a NaN is refused now, not when a reconnect resends the frame
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = (frame, future)
        try:
            await self._send(frame)  # if not connected now, the reconnect sends it
            result = await future
        finally:
            self._pending.pop(command_id, None)
        if not result.get("ok"):
            error = result.get("error") or {}
            raise ClientError(
                error.get("message", "refused"),
                error.get("code", "error"),
                0,
                error.get("details"),
            )
        return result

    # --- the connection -----------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.min_backoff
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while not self._closed:
            try:
                async with websockets.connect(
                    self.url,
                    additional_headers=headers,
                    max_size=self.max_size,
                    open_timeout=10,
                ) as ws:
                    self.connections += 1
                    backoff = self.min_backoff
                    await self._session(ws)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    await self._fail(ClientError(_denied(status), "unauthorized", status))
                    return
                log.info("handshake refused (HTTP %s); retrying", status)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_UNAUTHORIZED:
                    await self._fail(ClientError(_denied(401), "unauthorized", 401))
                    return
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_TOO_SLOW:
                    log.info("the server closed us for being too slow; resuming")
                    backoff = 0.0
            except (OSError, TimeoutError) as exc:
                log.info("connection to %s failed: %s; retrying", self.url, exc)
            finally:
                self._ws = None
                self.connected.clear()
            if self._closed:
                break
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff, max(self.min_backoff, backoff * 2))

    async def _session(self, ws: ClientConnection) -> None:
        self.hello = json.loads(await ws.recv())
        self._ws = ws
        self._subscribes = self._acks = 0  # a new connection: no frame of an old one
        self.connected.set()
        if self.subscribed:
            await self._send_subscribe()
        for frame, future in list(self._pending.values()):
            if not future.done():
                await ws.send(encode(frame))  # same id: applied at most once
        async for raw in ws:
            await self._handle(ws, json.loads(raw))

    async def _handle(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind in ("events", "caught_up") and self._acks < self._subscribes:
            return
        if kind == "events":
            fresh = [e for e in frame["events"] if e["seq"] > self.last_seq]
            if fresh:
                self.last_seq = fresh[-1]["seq"]
                # A slow reader slows reading: backpressure, then 4408 and a resume.
                await self._queue.put((self._generation, fresh))
        elif kind == "subscribed":
            self._acks += 1
        elif kind == "caught_up":
            self.last_seq = max(self.last_seq, int(frame["seq"]))
            self.caught_up.set()
        elif kind == "result":
            pending = self._pending.get(frame.get("id", ""))
            if pending is not None and not pending[1].done():
                pending[1].set_result(frame)
        elif kind == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        elif kind == "error":
            log.warning("server error frame: %s", frame.get("error"))

    async def _send_subscribe(self) -> None:
        self.caught_up.clear()
        if self._ws is not None:
            self._subscribes += 1
        await self._send({"type": "subscribe", "run_id": self.run_id, "after": self.last_seq})

    async def _send(self, frame: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode(frame))

    async def _fail(self, exc: BaseException) -> None:
        self._closed = True
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        await self._queue.put(exc)


def _denied(status: int) -> str:
    if status == 401:
        return f"the server refused the token; pass --token or set ${TOKEN_ENV}"
    return "the server refused this origin"
