"""A zoomed chart window of one run-page series at full resolution, min/max preserved.

`window` answers `GET /api/runs/{id}/series?name=&from=&to=&points=`: the finest buckets
the page keeps for [from, to] (`Series.window`), and, when those are coarser than asked
(an old stretch of a long run is only in the overview), the stretch's points read back
from the log instead: the buckets carry the run versions of their first and last point,
so the read is one indexed range of the run's events, bounded by `MAX_READ`. Those points
are folded as the page folds them (a point at or before the last one cuts: a resumed
attempt), so the answer is what a full-resolution chart of the run shows there, merged
down to at most `points` buckets whose extremes are the true ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.readmodels.runpage import SOURCES, number
from backend.readmodels.series import Bucket, downsample, point

if TYPE_CHECKING:
    from backend.readmodels.runpage import RunPage
    from backend.store import EventStore

DEFAULT_POINTS = 1_024
MAX_POINTS = 4_096
MAX_READ = 200_000  # events read back for one window (~0.5 s); wider windows use the pyramid
PAGE = 10_000


@dataclass
class Window:
    level: int  # buckets of 2**level points (0: raw points); -1: the overview's
    buckets: list[Bucket]
    from_log: bool  # read back from the log (the pyramid was too coarse there)

    def to_json(self, name: str, seq: int) -> dict[str, Any]:
        return {
            "name": name,
            "seq": seq,
            "level": self.level,
            "from_log": self.from_log,
            "buckets": self.buckets,
        }


async def window(
    store: EventStore, page: RunPage, name: str, x_from: float, x_to: float, points: int
) -> Window:
    """Series `name` of `page` over [x_from, x_to] in at most `points` buckets."""
    level, buckets = page.series[name].window(x_from, x_to, points)
    coarse = level != 0 and len(buckets) < points // 2
    if not buckets or not coarse:
        return Window(level, buckets, False)
    first, last = int(buckets[0][7]), int(buckets[-1][8])
    if last - first >= MAX_READ or first <= 0:
        return Window(level, buckets, False)
    raw = await _read_points(store, page.run_id, name, first, last)
    inside = [point(x, y, v, t) for x, y, v, t in raw if x_from <= x <= x_to]
    merged = downsample(inside, points)
    most = max((b[6] for b in merged), default=1)
    return Window(max(0, int(most - 1).bit_length()), merged, True)


async def _read_points(
    store: EventStore, run_id: str, name: str, first: int, last: int
) -> list[tuple[float, float, int, float]]:
    """The series' points of the run's events at versions first..last, folded with cuts."""
    kind, key = SOURCES[name]
    points: list[tuple[float, float, int, float]] = []
    after = first - 1
    while after < last:
        batch = await store.read_run(run_id, after, limit=min(PAGE, last - after))
        if not batch:
            break
        for event in batch:
            if event.type != kind:
                continue
            x = number(event.data.get("iteration"))
            if x is None:
                continue
            while points and points[-1][0] >= x:  # a resumed attempt replaces them
                points.pop()
            y = number(event.data.get(key))
            if y is not None:
                points.append((x, y, event.version, event.ts))
        after = batch[-1].version
    return points
