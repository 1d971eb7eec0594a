"""The /ws endpoint: one `Connection` per client, with its own sender, reader and heartbeat.

Everything the server sends goes through the connection's bounded `Outbox`, drained by a
sender task, so neither the hub nor a command ever waits on a client's network. Frames
from the client are read in order, parsed strictly (`wire.loads`: no NaN, bounded
nesting); a frame the server cannot act on gets an error frame and the socket stays open.
Commands run as tasks (at most a few per connection) so a slow command does not hold up
the heartbeat or a new subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

import backend
from backend import wire
from backend.api import MAX_SEQ
from backend.commands import COMMANDS, MAX_ID_LENGTH
from backend.hub import Outbox, Subscription

if TYPE_CHECKING:
    from backend.server import Context

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4408
CLOSE_SILENT = 4000
CLOSE_INTERNAL = 1011
SWEEP_COMMANDS = ("sweep_create", "sweep_stop", "sweep_resume")
TOO_SLOW_REASON = "too slow: reconnect and resubscribe from your last seq"
SILENT_REASON = "heartbeat timeout: nothing heard from the client"


def dumps(value: Any) -> str:
    return wire.dumps_text(value)


def error_frame(code: str, message: str, **details: Any) -> str:
    return dumps({"type": "error", "error": {"code": code, "message": message, "details": details}})


class FrameError(ValueError):
    """A frame the server cannot act on; answered with an error frame, nothing else."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Connection:
    """One WebSocket client, from accept to close."""

    def __init__(self, websocket: WebSocket, ctx: Context) -> None:
        self.ws = websocket
        self.ctx = ctx
        settings = ctx.settings
        self.outbox = Outbox(
            settings.ws_queue_events, settings.ws_batch_events, settings.ws_batch_bytes
        )
        self.subscription: Subscription | None = None
        self._catch_up: asyncio.Task[None] | None = None
        self._commands: set[asyncio.Task[None]] = set()
        self._done = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._last_heard = time.monotonic()

    async def serve(self) -> None:
        await self.ws.accept()
        settings = self.ctx.settings
        self.send(
            {
                "type": "hello",
                "version": backend.__version__,
                "last_seq": self.ctx.store.last_seq,
                "heartbeat_s": settings.heartbeat_s,
                "max_frame": settings.ws_max_frame,
            }
        )
        tasks = [
            asyncio.create_task(self._send_loop(), name="ws-send"),
            asyncio.create_task(self._receive_loop(), name="ws-receive"),
            asyncio.create_task(self._heartbeat_loop(), name="ws-heartbeat"),
        ]
        try:
            await self._done.wait()
        finally:
            self._stop_subscription()
            for task in [*tasks, *self._commands]:
                task.cancel()
            await asyncio.gather(*tasks, *self._commands, return_exceptions=True)
            if self._close is not None:
                await self._send_close(*self._close)

    def close_soon(self, code: int, reason: str) -> None:
        """End the connection with a close frame (callable from any synchronous code)."""
        if self._close is None:
            self._close = (code, reason)
        self._done.set()

    async def _send_close(self, code: int, reason: str) -> None:
        # A client that stopped reading may never take the close frame: give up after a
        # while; the server then drops the connection.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.ws.close(code, reason), timeout=self.ctx.settings.ws_close_timeout_s
            )

    def send(self, frame: dict[str, Any]) -> None:
        self.send_raw(dumps(frame))

    def send_raw(self, frame: str) -> None:
        if not self.outbox.put_frame(frame):
            self.close_soon(CLOSE_TOO_SLOW, TOO_SLOW_REASON)

    # --- the three loops -----------------------------------------------------------------

    async def _send_loop(self) -> None:
        # No pause between sends: live events are coalesced by the hub's tick (one chunk
        # per tick, the same frame for every client that keeps up); a client that falls
        # behind gets what piled up packed into few frames.
        try:
            while True:
                for frame in await self.outbox.take():
                    await self.ws.send_text(frame)
        except asyncio.CancelledError:
            raise
        except Exception:  # the client went away mid-send
            self._done.set()

    async def _receive_loop(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                self._last_heard = time.monotonic()
                text = message.get("text")
                if text is None:
                    self.send_raw(error_frame("bad_frame", "send JSON text frames, not binary"))
                    continue
                self._handle_safely(text)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("websocket receive failed")
            self.close_soon(CLOSE_INTERNAL, "internal error: reconnect and resubscribe")
        self._done.set()

    async def _heartbeat_loop(self) -> None:
        settings = self.ctx.settings
        while True:
            await asyncio.sleep(settings.heartbeat_s)
            if time.monotonic() - self._last_heard > settings.heartbeat_timeout_s:
                self.close_soon(CLOSE_SILENT, SILENT_REASON)
                return
            self.send({"type": "ping", "ts": time.time()})

    # --- frames from the client ----------------------------------------------------------

    def _handle_safely(self, text: str) -> None:
        """One frame; a fault handling it is an `internal` error frame, and the socket stays."""
        try:
            self._handle(text)
        except Exception:
            log.exception("handling a websocket frame failed")
            self.send_raw(error_frame("internal", "the server failed on this frame; see its log"))

    def _handle(self, text: str) -> None:
        try:
            frame = wire.loads(text)
        except wire.WireError as exc:
            self.send_raw(error_frame("bad_frame", f"not valid JSON: {exc}"))
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self.send_raw(error_frame("bad_frame", 'a frame is a JSON object with a "type"'))
            return
        kind = frame["type"]
        try:
            if kind == "subscribe":
                self._subscribe(frame)
            elif kind == "unsubscribe":
                self._stop_subscription()
            elif kind == "command":
                self._command(frame)
            elif kind == "ping":
                self.send({"type": "pong", "ts": frame.get("ts")})
            elif kind != "pong":
                raise FrameError(
                    "unknown_type",
                    f"unknown frame type '{kind}'; send subscribe, unsubscribe, command or pong",
                )
        except FrameError as exc:
            self.send_raw(error_frame(exc.code, str(exc), frame_type=kind))

    def _subscribe(self, frame: dict[str, Any]) -> None:
        run_id = frame.get("run_id")
        after = frame.get("after", 0)
        if run_id is not None and not isinstance(run_id, str):
            raise FrameError("bad_frame", "'run_id' must be a run id or null (all runs)")
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQ:
            raise FrameError("bad_frame", f"'after' must be a seq: an integer from 0 to {MAX_SEQ}")
        sweep_id = frame.get("sweep_id")
        sweeps = frame.get("sweeps", False)
        if not isinstance(sweeps, bool) or (sweeps and (run_id or sweep_id) is not None):
            raise FrameError(
                "bad_frame", "'sweeps' must be true or false, and true only with run_id null"
            )
        if sweep_id is not None:  # a sweep's stream, subscribed like a run's
            if not isinstance(sweep_id, str) or sweep_id not in self.ctx.sweeps.sweeps:
                raise FrameError("not_found", f"no sweep with id '{sweep_id}'")
            run_id = sweep_id
        elif run_id is not None and run_id not in self.ctx.service.runs:
            raise FrameError("not_found", f"no run with id '{run_id}'")
        self._stop_subscription()
        # Marks, in the frame order, where the previous subscription's events end.
        echo: dict[str, Any] = {"type": "subscribed", "run_id": run_id, "after": after}
        if sweeps:
            echo["sweeps"] = True
        self.send(echo)
        sub = Subscription(self.outbox, run_id, after, self._too_slow, sweeps=sweeps)
        self.subscription = sub
        self._catch_up = asyncio.create_task(self._run_catch_up(sub), name="ws-catch-up")

    async def _run_catch_up(self, sub: Subscription) -> None:
        try:
            await self.ctx.hub.subscribe(sub, self._caught_up_frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("catch-up failed")
            self.send_raw(error_frame("internal", "the catch-up failed; subscribe again"))

    @staticmethod
    def _caught_up_frame(seq: int) -> str:
        return dumps({"type": "caught_up", "seq": seq})

    def _too_slow(self) -> None:
        self.close_soon(CLOSE_TOO_SLOW, TOO_SLOW_REASON)

    def _stop_subscription(self) -> None:
        if self._catch_up is not None:
            self._catch_up.cancel()
            self._catch_up = None
        if self.subscription is not None:
            self.ctx.hub.unsubscribe(self.subscription)
            self.subscription = None

    def _command(self, frame: dict[str, Any]) -> None:
        command_id = frame.get("id")
        if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_ID_LENGTH:
            raise FrameError("bad_frame", f"a command needs an 'id': 1 to {MAX_ID_LENGTH} chars")
        command = frame.get("command")
        if command not in COMMANDS and command not in SWEEP_COMMANDS:
            known = ", ".join((*COMMANDS, *SWEEP_COMMANDS))
            raise FrameError("bad_frame", f"'command' must be one of {known}")
        run_id = frame.get("sweep_id") if command in SWEEP_COMMANDS else frame.get("run_id")
        if run_id is not None and not isinstance(run_id, str):
            raise FrameError("bad_frame", "'run_id' must be a string")
        data = frame.get("data")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise FrameError("bad_frame", "'data' must be an object")
        if len(self._commands) >= self.ctx.settings.ws_max_pending_commands:
            raise FrameError("too_many_commands", "wait for answers before sending more commands")
        task = asyncio.create_task(self._run_command(command_id, command, run_id, data))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _run_command(
        self, command_id: str, command: str, run_id: str | None, data: dict[str, Any]
    ) -> None:
        if command in SWEEP_COMMANDS:  # sweep_create, sweep_stop, sweep_resume
            outcome = await self.ctx.sweeps.run(command[len("sweep_") :], run_id, data, command_id)
        else:
            outcome = await self.ctx.commands.run(command, run_id, data, command_id)
        self.send({"type": "result", "id": command_id, "ok": outcome.ok, **outcome.body})


async def websocket_endpoint(websocket: WebSocket) -> None:
    await Connection(websocket, websocket.state.ctx).serve()
