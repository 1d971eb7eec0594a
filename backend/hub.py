"""Fan-out of stored events to WebSocket subscribers: catch-up, then live, no gap, no dup.

The hub listens to `RunService` (a synchronous callback after each append) and puts every
new event on the outbox of each subscriber that wants it, without awaiting: a subscriber
that has fallen too far behind is cut loose instead of slowing the producer down.

A subscription starts with a catch-up: it registers for live events first (buffered in
`pending`), then reads the stored history after the client's seq page by page, then
sends the buffered live events it has not already sent and goes live. Registering before
reading means no event can fall between the two; skipping seq <= last sent means none is
sent twice.

Events are encoded to JSON once per event, not once per subscriber (their data is the
text the store wrote, `Event.data_json`), and queued as shared chunks; frames are built by
joining the encoded events, and a frame that is exactly one chunk is built once and
shared by every subscriber that sends it. With a tick (`tick_s`, the server's
`ws_coalesce_s`), live events go out at most once per tick, as one chunk per filter: so
that is the usual live case, and every subscriber that keeps up sends the same frame.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from backend.events import Event
from backend.experiments.sweeps import is_sweep
from backend.jsontext import dumps_text
from backend.runs import RunService
from backend.store import EventStore, Row

log = logging.getLogger(__name__)

CATCH_UP_PAGE = 1_000
# How long the hub waits for an event that was stored but not yet announced (its
# appender was cancelled, say) before reading it from the store itself.
GAP_WAIT_S = 0.05


class Encoded(NamedTuple):
    seq: int
    run_id: str
    text: str


_dumps = dumps_text


@functools.lru_cache(maxsize=4096)
def _quoted(text: str) -> str:
    return _dumps(text)


def encode(event: Event) -> Encoded:
    """`Event.to_json()` as compact JSON text, built without the intermediate dict (this
    runs once per event at thousands of events per second), its data the text the store
    wrote when the event comes with it."""
    data = event.data_json if event.data_json is not None else _dumps(event.data)
    text = (
        f'{{"seq":{event.seq},"run_id":{_quoted(event.run_id)},"version":{event.version},'
        f'"type":{_quoted(event.type)},"ts":{float(event.ts)!r},"data":{data}}}'
    )
    return Encoded(event.seq, event.run_id, text)


def encode_row(row: Row) -> Encoded:
    """The same text as `encode`, from a stored row whose data is JSON text already."""
    seq, run_id, version, type_, ts, data = row
    text = (
        f'{{"seq":{seq},"run_id":{_quoted(run_id)},"version":{version},'
        f'"type":{_quoted(type_)},"ts":{float(ts)!r},"data":{data}}}'
    )
    return Encoded(seq, run_id, text)


def events_frame(texts: list[str]) -> str:
    return '{"type":"events","events":[' + ",".join(texts) + "]}"


class Chunk:
    """Consecutive encoded events, in seq order, shared by every subscriber that gets them.

    Its size is counted once, when it is made, so queueing and batching it costs the
    same whether it holds one event or a thousand.
    """

    __slots__ = ("_ends", "_frame", "items", "size", "texts")

    def __init__(self, items: list[Encoded]) -> None:
        self.items = items
        self.texts = [e.text for e in items]
        self.size = sum(map(len, self.texts))
        self._ends: list[int] | None = None
        self._frame: str | None = None

    def frame(self) -> str:
        """This chunk alone as an `events` frame, built once for all its subscribers."""
        if self._frame is None:
            self._frame = events_frame(self.texts)
        return self._frame

    def ends(self) -> list[int]:
        """Where each event ends, in characters from the chunk's start (made on first use)."""
        if self._ends is None:
            self._ends = list(itertools.accumulate(map(len, self.texts)))
        return self._ends

    @property
    def first_seq(self) -> int:
        return self.items[0].seq

    @property
    def last_seq(self) -> int:
        return self.items[-1].seq

    def __len__(self) -> int:
        return len(self.items)

    def after(self, seq: int) -> Chunk:
        return Chunk([e for e in self.items if e.seq > seq])


class Outbox:
    """One client's bounded queue of outgoing frames, drained by its own sender task.

    Events count against `max_events`; a put that would exceed it fails, and the caller
    disconnects the client. Control frames (results, pings) are few and always accepted,
    up to a generous count, so a client cannot grow memory by never reading them either.
    `take` packs queued chunks into frames of at most `batch_events` events and about
    `batch_bytes` characters (one event larger than that goes alone).
    """

    def __init__(
        self,
        max_events: int,
        batch_events: int = 1_000,
        batch_bytes: int = 256 * 1024,
        max_frames: int = 1_000,
    ) -> None:
        self.max_events = max_events
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        self.max_frames = max_frames
        self.events = 0
        self.frames = 0
        self._items: deque[Chunk | str] = deque()
        self._offset = 0  # events of the first chunk already taken
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()

    def put_events(self, chunk: Chunk) -> bool:
        if self.events + len(chunk) > self.max_events:
            return False
        self._items.append(chunk)
        self.events += len(chunk)
        self._ready.set()
        return True

    def put_frame(self, frame: str) -> bool:
        if self.frames >= self.max_frames:
            return False
        self._items.append(frame)
        self.frames += 1
        self._ready.set()
        return True

    async def room_for(self, n: int) -> None:
        """Wait until `n` more events fit (the catch-up's backpressure)."""
        while self.events + n > self.max_events and self.events > 0:
            self._drained.clear()
            await self._drained.wait()

    async def take(self, max_frames: int = 16) -> list[str]:
        """The next frames to send, in order; queued chunks packed into batches. About
        `batch_bytes` in all: a client's frames are built as it sends them, so a hundred
        clients never hold a hundred backlogs of encoded frames at once."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        frames: list[str] = []
        batch: list[Chunk] = []  # whole chunks for the next frame
        size = count = 0
        while self._items and len(frames) < max_frames and self._room(frames):
            head = self._items[0]
            if isinstance(head, str):
                if batch:
                    frames.append(_pack(batch))
                    batch, size, count = [], 0, 0
                    continue
                self._items.popleft()
                self.frames -= 1
                frames.append(head)
                continue
            if self._offset == 0 and self._fits(count, size, head):
                batch.append(head)  # the usual case: whole chunks, no per-event work
                size += head.size
                count += len(head)
                self.events -= len(head)
                self._items.popleft()
            elif batch:
                frames.append(_pack(batch))
                batch, size, count = [], 0, 0
            else:
                frames.append(events_frame(self._split(head)))
        if batch:
            frames.append(_pack(batch))
        self._drained.set()
        return frames

    def _room(self, frames: list[str]) -> bool:
        return sum(map(len, frames)) < self.batch_bytes

    def _fits(self, count: int, size: int, chunk: Chunk) -> bool:
        if count + len(chunk) > self.batch_events:
            return False
        # One event alone always fits: an event is never split.
        return size + chunk.size <= self.batch_bytes or (count == 0 and len(chunk) == 1)

    def _split(self, chunk: Chunk) -> list[str]:
        """One frame's worth from the front of a chunk too big for a frame."""
        texts, start, ends = chunk.texts, self._offset, chunk.ends()
        before = ends[start - 1] if start else 0
        end = bisect.bisect_right(ends, before + self.batch_bytes, lo=start)
        end = max(start + 1, min(end, start + self.batch_events))
        self.events -= end - start
        if end == len(texts):
            self._items.popleft()
            self._offset = 0
        else:
            self._offset = end
        return texts[start:end]


def _pack(chunks: list[Chunk]) -> str:
    if len(chunks) == 1:
        return chunks[0].frame()
    return events_frame([text for chunk in chunks for text in chunk.texts])


class Subscription:
    """One client's interest: a run (or all runs) from a seq on."""

    def __init__(
        self,
        outbox: Outbox,
        run_id: str | None,
        after: int,
        on_overflow: Callable[[], None],
        sweeps: bool = False,
    ) -> None:
        self.outbox = outbox
        self.run_id = run_id
        self.sweeps = sweeps and run_id is None  # all runs' events and every sweep's
        self.after = after
        self.on_overflow = on_overflow
        self.sent = after  # the last seq handed to the outbox
        self.catching_up = True
        self.pending: list[Encoded] = []
        self.pending_limit = max(1, outbox.max_events // 2)
        self.resets = 0  # times `pending` overflowed during the catch-up
        self.active = True

    @property
    def key(self) -> tuple[str | None, bool]:
        """Its filter: subscriptions with the same key get the same chunks."""
        return self.run_id, self.sweeps

    def wants(self, stream_id: str) -> bool:
        if self.run_id is not None:
            return stream_id == self.run_id
        return self.sweeps or not is_sweep(stream_id)

    def offer(self, chunk: Chunk) -> None:
        """Called by the hub for every new chunk it wants, synchronously: never awaits."""
        if not self.active or chunk.last_seq <= self.sent:
            return
        if self.catching_up:
            self.pending += chunk.items
            if len(self.pending) > self.pending_limit:
                # The store has them all: drop the buffer and let the catch-up read on.
                self.pending.clear()
                self.resets += 1
            return
        if chunk.first_seq <= self.sent:
            chunk = chunk.after(self.sent)
        if self.outbox.put_events(chunk):
            self.sent = chunk.last_seq
        else:
            self.active = False
            self.on_overflow()


class Hub:
    """Publishes stored events, in seq order, to every subscription."""

    def __init__(
        self, store: EventStore, catch_up_page: int = CATCH_UP_PAGE, tick_s: float = 0.0
    ) -> None:
        self.store = store
        self.catch_up_page = catch_up_page
        # Live events go out at most once per tick (0: at every append): one chunk per
        # tick and filter, the same frame for every subscriber that keeps up.
        self.tick_s = tick_s
        self.published = store.last_seq
        self._unsent: list[Encoded] = []  # published, waiting for the next tick
        self._tick: asyncio.TimerHandle | None = None
        self._last_tick = -math.inf
        self._subscriptions: set[Subscription] = set()
        self._held: dict[int, Encoded] = {}
        self._gap_task: asyncio.Task[None] | None = None
        self._detach: Callable[[], None] | None = None
        self._detach_more: list[Callable[[], None]] = []

    def attach(self, service: RunService) -> None:
        self.published = self.store.last_seq
        self._detach = service.listen(self._on_events)

    def follow(self, listen: Callable[[Callable[[list[Event]], None]], Callable[[], None]]) -> None:
        """Publish another appender's events too (a sweep service's streams)."""
        self._detach_more.append(listen(self._on_events))

    def close(self) -> None:
        for detach in self._detach_more:
            detach()
        self._detach_more.clear()
        if self._detach is not None:
            self._detach()
            self._detach = None
        if self._gap_task is not None:
            self._gap_task.cancel()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for sub in self._subscriptions:
            sub.active = False
        self._subscriptions.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    # --- publishing --------------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        # Called inside RunService's append: it must never raise into the appender.
        try:
            if events and not self._held and events[0].seq == self.published + 1:
                if not self._subscriptions:
                    self.published = events[-1].seq  # nobody listens: nothing to encode
                    return
                self._publish([encode(e) for e in events])  # the usual case: in order
            else:
                self._accept([encode(e) for e in events])
        except Exception:
            log.exception("hub: could not publish %d event(s)", len(events))

    def _accept(self, items: list[Encoded]) -> None:
        """Publish what continues the sequence; hold what arrived early."""
        for item in items:
            if item.seq > self.published:
                self._held[item.seq] = item
        ready: list[Encoded] = []
        next_seq = self.published + 1
        while next_seq in self._held:
            ready.append(self._held.pop(next_seq))
            next_seq += 1
        if ready:
            self._publish(ready)
        if self._held and self._gap_task is None:
            self._gap_task = asyncio.get_running_loop().create_task(self._fill_gap())

    async def _fill_gap(self) -> None:
        try:
            while self._held:
                await asyncio.sleep(GAP_WAIT_S)
                if not self._held:
                    break
                missing = min(self._held) - self.published - 1
                if missing > 0:
                    page = await self.store.read_rows(self.published, missing)
                    log.warning("hub: read %d stored but unannounced event(s)", len(page))
                    self._accept([encode_row(row) for row in page])
        finally:
            self._gap_task = None

    def _publish(self, batch: list[Encoded]) -> None:
        self.published = batch[-1].seq
        if self.tick_s <= 0:
            self._deliver(batch)
            return
        self._unsent += batch
        if self._tick is None:
            # The first events after a quiet tick go at once; later ones wait for the
            # tick, so a busy run reaches each client as a few dozen frames a second.
            loop = asyncio.get_running_loop()
            self._tick = loop.call_at(max(loop.time(), self._last_tick + self.tick_s), self._flush)

    def _flush(self) -> None:
        self._tick = None
        self._last_tick = asyncio.get_running_loop().time()
        batch, self._unsent = self._unsent, []
        if batch:
            try:
                self._deliver(batch)
            except Exception:
                log.exception("hub: could not deliver %d event(s)", len(batch))

    def _deliver(self, batch: list[Encoded]) -> None:
        # One chunk per distinct filter (one stream, all runs, or all runs and sweeps),
        # shared by its subscribers.
        chunks: dict[tuple[str | None, bool], Chunk | None] = {}
        for sub in list(self._subscriptions):
            key = sub.key
            if key not in chunks:
                items = [e for e in batch if sub.wants(e.run_id)]
                chunks[key] = Chunk(items) if items else None
            chunk = chunks[key]
            if chunk is not None:
                sub.offer(chunk)

    # --- subscribing -------------------------------------------------------------------

    async def subscribe(
        self, sub: Subscription, caught_up: Callable[[int], str] | None = None
    ) -> int:
        """Send `sub` its history, then make it live; returns the seq the history ended at.

        `caught_up(seq)` makes the frame that marks the switch, sent between the two.
        Cancelling (a new subscribe, a disconnect) leaves nothing registered.
        """
        self._subscriptions.add(sub)
        try:
            cursor = await self._catch_up(sub)
        except BaseException:
            self.unsubscribe(sub)
            raise
        # From here to the end nothing awaits: no event can slip in between.
        live = [e for e in sub.pending if e.seq > cursor]
        sub.pending = []
        sub.catching_up = False
        sub.sent = cursor
        if caught_up is not None and not sub.outbox.put_frame(caught_up(cursor)):
            sub.active = False
            sub.on_overflow()
        if live:
            sub.offer(Chunk(live))
        return cursor

    async def _catch_up(self, sub: Subscription) -> int:
        cursor = sub.after
        page_size = max(1, min(self.catch_up_page, sub.outbox.max_events // 4))
        while sub.active:
            resets = sub.resets
            page = await self.store.read_rows(cursor, page_size, sub.run_id)
            if page:
                shown = page if sub.run_id else [r for r in page if sub.wants(r[1])]
                await sub.outbox.room_for(len(shown))
                if shown:
                    sub.outbox.put_events(Chunk([encode_row(row) for row in shown]))
                cursor = page[-1][0]
            elif sub.resets == resets:
                break  # the store had nothing more and no live event was dropped meanwhile
        return cursor

    def unsubscribe(self, sub: Subscription) -> None:
        sub.active = False
        self._subscriptions.discard(sub)
