"""Snapshots of the read models: caches with the seq they reflect, never trusted blindly.

The event log stays the only source of truth. A snapshot set is written in one
transaction (`EventStore.save_snapshots`): `summaries` (every run's summary) and one
`page:<run_id>` per loaded run page that changed since the last set. Each row carries its seq,
a schema tag (the snapshot format and that read model's fields: a changed model makes
its old snapshots unusable; summaries and pages have a tag each) and a checksum.

At start `restore` loads them and verifies: the schema tag, the checksum, seq <= the
store's last seq. Any failure: the whole set is dropped and everything folded from the
log, logged with the reason. Otherwise only the tail (events after the snapshot's seq)
is folded, and then every run is checked against the store (its version, and that the
store knows no run the models lack): a run that disagrees is refolded from its own
events. So a crash between an append and the next snapshot is harmless: those events
are in the tail.

Run pages are bigger than summaries and only one is open at a time, so they are left in
their snapshots at start, and again once saved when their run is not training, and
loaded when asked for or when their run has a new event (`load_page`): the page's
snapshot, verified the same way, plus that run's events after it; a page that is missing
or disagrees with the run's version is folded from the run's events. A start that
folds the whole log folds summaries only: every page is then missing, and folded from
its own run when first needed (one run's events, not the lab's).

`Snapshotter` writes a set every `interval_s` while events arrive, and at close; the
state is captured on the event loop in one go (no await: one consistent seq) and
encoded in a thread, off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.experiments.sweeps import is_sweep
from backend.jsontext import dumps, loads
from backend.projections import RunSummary, summary_fields
from backend.readmodels import runpage, series
from backend.readmodels.runpage import RunPage
from backend.store import StoredSnapshot

if TYPE_CHECKING:
    from backend.runs import RunService

log = logging.getLogger(__name__)

FORMAT = 1
SUMMARIES = "summaries"
PAGE_PREFIX = "page:"
INTERVAL_S = 30.0


def schema_tag() -> str:
    """Names the summaries' snapshot format and fields: any change retires old ones."""
    return _tag(list(summary_fields()))


def page_schema_tag() -> str:
    """The same for run pages, apart: a page format change refolds pages, lazily, one
    run at a time as each is opened, and leaves the summaries (and start) alone."""
    shape = [
        f"bucket{series.BUCKET_LEN}",
        *runpage.METRIC_SERIES,
        *runpage.VALIDATION_SERIES,
        str(runpage.LOG_LINES),
        str(runpage.CHECKPOINTS),
        str(runpage.PREVIEWS),
        str(runpage.LIFECYCLE),
    ]
    return _tag(shape)


def _tag(shape: list[str]) -> str:
    digest = hashlib.sha256(",".join(shape).encode()).hexdigest()[:16]
    return f"{FORMAT}:{digest}"


class SnapshotUnusable(Exception):
    """Why a snapshot cannot be trusted (logged; the models are folded from the log)."""


@dataclass
class Restored:
    """How the read models were rebuilt at start."""

    from_snapshot: bool
    snapshot_seq: int  # 0 when folded from the whole log
    tail_events: int  # events folded after the snapshot (all of them when from the log)
    refolded_runs: int  # runs the verification refolded from their own events
    reason: str = ""  # why the snapshot was not used


def _decode(row: StoredSnapshot, last_seq: int, schema: str) -> Any:
    if row.schema != schema:
        raise SnapshotUnusable(f"{row.name} has schema {row.schema}, this version {schema}")
    if hashlib.sha256(row.data).hexdigest() != row.checksum:
        raise SnapshotUnusable(f"{row.name} does not match its checksum (corrupt)")
    if not 0 <= row.seq <= last_seq:
        raise SnapshotUnusable(f"{row.name} is at seq {row.seq}, the log ends at {last_seq}")
    try:
        return loads(row.data)
    except ValueError as exc:
        raise SnapshotUnusable(f"{row.name} is not JSON: {exc}") from exc


async def restore(service: RunService) -> Restored:
    """Rebuild `service`'s read models: snapshot + tail when valid, else the whole log."""
    store = service.store
    started = time.perf_counter()
    try:
        seq = await _load(service)
    except SnapshotUnusable as exc:
        reason = str(exc)
        if reason != "no snapshot":
            log.warning("snapshots unusable (%s): folding the whole log", reason)
        service.clear()
        # Summaries only: each run's page is folded from that run's events when it is
        # first opened (or appended to), so this start costs the summary fold alone.
        service.lazy_pages = set(store.run_ids())
        await service.fold_from(0)  # indexes the command ids too, in log order
        service.changed = set(service.runs)
        result = Restored(False, 0, store.last_seq, 0, reason)
    else:
        tail = store.last_seq - seq
        await service.fold_from(seq)
        refolded = await _verify(service)
        await service.index_commands()
        result = Restored(True, seq, tail, refolded)
    log.info("read models ready in %.2f s: %s", time.perf_counter() - started, result)
    return result


async def _load(service: RunService) -> int:
    """Install the snapshots into `service`; returns their seq. SnapshotUnusable if not."""
    store, schema = service.store, schema_tag()
    rows = await store.load_snapshots(SUMMARIES)
    summary_row = next((r for r in rows if r.name == SUMMARIES), None)
    if summary_row is None:
        raise SnapshotUnusable("no snapshot")
    saved = _decode(summary_row, store.last_seq, schema)
    try:
        runs = {run_id: RunSummary.from_state(s) for run_id, s in saved.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotUnusable(f"a snapshot does not hold what it should: {exc!r}") from exc
    service.runs.clear()
    service.runs.update(runs)
    service.pages.clear()
    service.lazy_pages = set(runs)
    service.changed = set()
    return summary_row.seq


async def _verify(service: RunService) -> int:
    """Refold, from its own events, every run the snapshot + tail got wrong; how many."""
    store = service.store
    wrong = [
        run_id
        for run_id in store.run_ids()
        if not is_sweep(run_id)  # a sweep's stream: its own service restores it
        and (
            run_id not in service.runs
            or service.runs[run_id].run.version != store.run_version(run_id)
        )
    ]
    wrong += [run_id for run_id in service.runs if store.run_version(run_id) == 0]
    for run_id in wrong:
        log.warning("snapshot disagrees with the log for run %s: refolding it", run_id)
        service.runs.pop(run_id, None)
        service.pages.pop(run_id, None)
        service.lazy_pages.discard(run_id)
        if store.run_version(run_id):
            await service.fold_from(0, run_id)
        service.changed.add(run_id)
    return len(wrong)


async def load_page(service: RunService, run_id: str) -> RunPage:
    """A run's page from its snapshot plus the run's events after it, verified against
    the run's version; folded from all the run's events when that fails (logged).
    The caller holds the run's lock: no append of this run happens meanwhile."""
    store = service.store
    page = None
    for row in await store.load_snapshots(PAGE_PREFIX + run_id):
        if row.name != PAGE_PREFIX + run_id:
            continue
        try:
            page = RunPage.from_state(_decode(row, store.last_seq, page_schema_tag()))
        except (SnapshotUnusable, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("page snapshot of run %s unusable (%s): folding its events", run_id, exc)
    page = page or RunPage(run_id)
    await _fold_page(service, page, page.seq)
    if page.version != store.run_version(run_id):
        log.warning("page snapshot of run %s disagrees with the log: folding its events", run_id)
        page = RunPage(run_id)
        await _fold_page(service, page, 0)
    return page


async def _fold_page(service: RunService, page: RunPage, after: int) -> None:
    while batch := await service.store.read_run_after_seq(page.run_id, after, limit=10_000):
        for event in batch:
            page.apply(event)
        after = batch[-1].seq


def capture(service: RunService, everything: bool = False) -> tuple[int, dict[str, Any]]:
    """The models' state at one seq, as plain values (no await: nothing changes meanwhile).

    The summaries always; the pages that changed since the last set (all with
    `everything`). The seq is the last one applied to the models."""
    seq = max((s.run.last_seq for s in service.runs.values()), default=0)
    states: dict[str, Any] = {SUMMARIES: {rid: s.to_state() for rid, s in service.runs.items()}}
    for name, state_of in service.snapshots.extras.items():  # other models (sweeps)
        states[name] = state_of()
    changed = set(service.pages) if everything else service.changed
    for run_id in changed:
        page = service.pages.get(run_id)
        if page is not None:
            states[PAGE_PREFIX + run_id] = page.to_state()
    service.changed = set()
    return seq, states


async def save(service: RunService, everything: bool = False) -> int:
    """Write one snapshot set; returns its seq. Encoding runs in a thread."""
    seq, states = capture(service, everything)
    schema, page_schema = schema_tag(), page_schema_tag()
    try:
        encoded = await asyncio.to_thread(lambda: [(n, dumps(s)) for n, s in states.items()])
        rows = [
            (n, seq, page_schema if n.startswith(PAGE_PREFIX) else schema, data)
            for n, data in encoded
        ]
        await service.store.save_snapshots(rows)
    except BaseException:
        # Not written (a failure, or cancelled at shutdown): the next set writes them.
        service.changed |= {n[len(PAGE_PREFIX) :] for n in states if n.startswith(PAGE_PREFIX)}
        raise
    service.unload_idle_pages()
    return seq


class Snapshotter:
    """Writes a snapshot set every `interval_s` when events arrived, and one at close."""

    def __init__(self, service: RunService, interval_s: float = INTERVAL_S) -> None:
        self.service = service
        self.interval_s = interval_s
        self.saved_seq = -1
        # Snapshot rows of other read models: name -> their state now (JSON values).
        self.extras: dict[str, Callable[[], Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self, save_now: bool = False) -> None:
        """Save every `interval_s`; with `save_now`, first at once (after a full fold)."""
        self._task = asyncio.create_task(self._loop(save_now), name="snapshotter")

    async def _loop(self, save_now: bool) -> None:
        if save_now:
            await self.save_if_behind()
        while True:
            await asyncio.sleep(self.interval_s)
            await self.save_if_behind()

    async def save_if_behind(self) -> None:
        if self.service.store.last_seq == self.saved_seq:
            return
        try:
            self.saved_seq = await save(self.service)
        except Exception:
            log.exception("could not write the read-model snapshots (start will fold more)")

    async def close(self) -> None:
        """Stop the timer and write a last set (clean shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.save_if_behind()
