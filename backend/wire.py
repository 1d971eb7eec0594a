"""JSON as the server reads it from clients and writes it to them (REST bodies, WebSocket frames).

Reading is strict and bounded: UTF-8 JSON with finite numbers only (no `NaN`, no
`Infinity`, no number that overflows to infinity) and at most `MAX_DEPTH` levels of
nesting, checked by orjson while it parses and then on the parsed value; anything else is
a `WireError` whose message says what is wrong and where. Writing never fails on a value
the server holds: a non-finite float becomes `null`, and what orjson cannot write (an
integer beyond 64 bits, very deep nesting) falls back to the standard library.

Use it at the client boundary only. Events that Trainboard stores and replays use
`backend.jsontext`, whose writing is strict instead (a NaN there is an error, not null).

Reading is bounded in time too (a slow-loris client holds a connection by trickling its
request): the request head must be in within `HEAD_TIMEOUT_S` of the connection (or of
the previous response on a kept-alive one), else the connection is answered 408 and
closed (`h11_protocol`); a body must arrive at `BODY_MIN_RATE` bytes a second on average
after `BODY_GRACE_S`, else the request is answered 408 and the connection closed
(`BodyDeadline`). Idle kept-alive connections close after uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol

# Deeper than any request the protocol defines (a create body is two levels deep), and
# shallow enough that echoing or storing a value can never hit a recursion limit.
MAX_DEPTH = 32
_NON_FINITE = ("NaN", "Infinity")  # orjson points past the sign of -Infinity
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class WireError(ValueError):
    """Text that is not JSON the server accepts; the message says what and where."""


def loads(data: bytes | bytearray | str) -> Any:
    """The JSON value of `data`, or `WireError`."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError(_explain(exc)) from None
    _check_depth(value)
    return value


def _explain(exc: orjson.JSONDecodeError) -> str:
    where = f"line {exc.lineno} column {exc.colno}"
    literal = next((t for t in _NON_FINITE if exc.doc.startswith(t, exc.pos)), None)
    if literal is not None:
        return f"{literal} at {where} is not JSON: send a finite number, or null"
    if exc.msg.startswith("depth limit"):
        return f"nested deeper than {MAX_DEPTH} levels at {where}"
    if "infinity" in exc.msg:
        return f"the number at {where} is too large (it would be infinite): send a finite number"
    return f"{exc.msg} at {where}"


def _check_depth(value: Any) -> None:
    """Refuse more than `MAX_DEPTH` levels of arrays and objects, naming the first too deep.

    Level by level, with exact type checks (orjson makes plain dicts and lists): about a
    second for the 1.3 million containers of a 4 MB body on a busy machine.
    """
    level = [value] if type(value) in (dict, list) else []
    for _ in range(MAX_DEPTH):
        below: list[Any] = []
        add = below.append
        for node in level:
            for item in node.values() if type(node) is dict else node:
                if type(item) is list or type(item) is dict:
                    add(item)
        if not below:
            return
        level = below
    path = (_path_to_depth(value, MAX_DEPTH + 1) or "").removeprefix(".")
    shown = path if len(path) <= 60 else path[:57] + "..."
    raise WireError(f"nested deeper than {MAX_DEPTH} levels (at {shown or 'the top'})")


def _path_to_depth(node: Any, depth: int) -> str | None:
    """Where (`.a.b[0]`) a container `depth` levels down from `node` is, if there is one."""
    if depth == 1:
        return ""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        if isinstance(child, dict | list):
            rest = _path_to_depth(child, depth - 1)
            if rest is not None:
                return (f"[{key}]" if isinstance(node, list) else f".{key}") + rest
    return None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`; never fails on non-finite floats (written as null)."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: a huge integer, nesting past its limit
        text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), default=str)
        return text.encode()


def dumps_text(value: Any) -> str:
    """`dumps` as text, for WebSocket text frames."""
    return dumps(value).decode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse, written with `dumps`: a non-finite float is null, not a 500."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


# --- read deadlines (module attributes, read at each connection: tests shorten them) ------

HEAD_TIMEOUT_S = 15.0  # the request line and headers, from connection or last response
BODY_GRACE_S = 15.0  # a body's first seconds, whatever its rate
BODY_MIN_RATE = 4096  # bytes a second on average after that: a 4 MB body gets 1,039 s
TIMEOUT_MESSAGE = "the request did not arrive in time: send it at once"


def _timeout_body(what: str) -> bytes:
    error = {"code": "request_timeout", "message": f"{what} {TIMEOUT_MESSAGE}"}
    return dumps({"error": error})


class BodyDeadline:
    """ASGI middleware: a request body that trickles in is answered 408 and the
    connection closed. The body must arrive at `BODY_MIN_RATE` bytes a second on average
    once `BODY_GRACE_S` have passed. Only the body is timed: a request that never reads
    it, and anything after it (a long download waiting for a disconnect), is not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, grace, rate = time.monotonic(), BODY_GRACE_S, BODY_MIN_RATE
        received = 0
        started = timed_out = body_done = False

        async def send_guarded(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # the 408 went out instead; the app is unwinding
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def receive_in_time() -> Message:
            nonlocal received, timed_out, body_done
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done or started:
                # Only the body is timed: waiting for a disconnect while a long response
                # streams (a download) is not slowness.
                return await receive()
            left = began + grace + received / rate - time.monotonic()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    message = await receive()
            except TimeoutError:
                if not started:
                    await _send_408(send)
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, receive_in_time, send_guarded)
        except Exception:
            if not timed_out:
                raise  # the app's own failure; only the disconnect we made up is ours


async def _send_408(send: Send) -> None:
    body = _timeout_body("the request body was too slow:")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def h11_protocol() -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for the request head: a client that has not
    sent a whole head `HEAD_TIMEOUT_S` after connecting (or after the previous response)
    gets a 408 and the connection is closed. uvicorn alone only times idle keep-alives."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11WithHeadDeadline(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a whole head is in (or an upgrade)
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_too_slow)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            body = _timeout_body("the request head was too slow:")
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    return H11WithHeadDeadline
