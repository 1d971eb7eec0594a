"""A chart series kept in bounded memory, faithful at every zoom: min/max buckets.

Points `(x, y)` arrive in x order. A `Series` keeps

- `levels[k]`: the latest `width` buckets of 2**k points each (level 0 is the raw points),
  so the most recent stretch can be drawn at any zoom from the finest level that covers it;
- `overview`: at most `2 * width` buckets covering the whole series, their size doubling
  (pairs merged) whenever they would exceed that.

A bucket is `[x_first, x_last, x_min, y_min, x_max, y_max, n, v_first, v_last, t_last]`:
its extremes and where they are, so a chart drawn from buckets (the lowest and highest
point of each, in x order) shows every spike a full-resolution chart shows; the run
versions of its first and last point: where its events are in the log (a zoom reads them
back at full resolution, `zoom.window`) and when it was complete (a replay draws, as of a
version, the buckets that ended by then); and the timestamp of its last point (a
comparison draws runs against wall time). Adding a point is O(1) amortized; the
memory is O(width * levels) whatever the length of the run.

A point whose x is not after the last one (a resumed attempt restarting from its
checkpoint) cuts the series there first, as the client's fold does: buckets that start
at or after it are dropped; one that straddles it is kept (its extremes may include a
point of the cut-off stretch: never a missing spike, at most an extra one).
"""

from __future__ import annotations

from collections import deque
from typing import Any

Bucket = list[float]  # [x_first, x_last, x_min, y_min, x_max, y_max, n, v_first, v_last, t_last]
BUCKET_LEN = 10
WIDTH = 512
LEVELS = 8  # level 7: buckets of 128 points; the overview covers everything beyond


def point(x: float, y: float, v: int = 0, t: float = 0.0) -> Bucket:
    return [x, x, x, y, x, y, 1, v, v, t]


def merge(a: Bucket, b: Bucket) -> Bucket:
    """One bucket covering `a` then `b`."""
    low = a if a[3] <= b[3] else b
    high = a if a[5] >= b[5] else b
    return [a[0], b[1], low[2], low[3], high[4], high[5], a[6] + b[6], a[7], b[8], b[9]]


def downsample(buckets: list[Bucket], points: int) -> list[Bucket]:
    """At most `points` buckets covering the same stretch (consecutive ones merged)."""
    if len(buckets) <= points:
        return buckets
    size = -(-len(buckets) // points)  # ceil
    out = []
    for start in range(0, len(buckets), size):
        group = buckets[start : start + size]
        merged = group[0]
        for bucket in group[1:]:
            merged = merge(merged, bucket)
        out.append(merged)
    return out


class Series:
    """One named series of one run (loss, lr, validation dice, ...)."""

    def __init__(self, width: int = WIDTH, levels: int = LEVELS) -> None:
        self.width = width
        self.levels: list[deque[Bucket]] = [deque(maxlen=width) for _ in range(levels)]
        self._carry: list[Bucket | None] = [None] * levels  # a closed bucket awaiting its pair
        self.overview: list[Bucket] = []
        self.overview_size = 1  # points per closed overview bucket
        self._open: Bucket | None = None  # the overview's last, still filling
        self.count = 0

    @property
    def last_x(self) -> float | None:
        return self.levels[0][-1][0] if self.levels[0] else None

    def add(self, x: float, y: float, v: int = 0, t: float = 0.0) -> None:
        """The point `(x, y)` of the run's event at version `v`, time `t`. Runs once per point of
        every series of every event folded: level 0 is inlined (half its points close
        no pair)."""
        level0 = self.levels[0]
        if level0 and x <= level0[-1][0]:
            self.cut(x)
        self.count += 1
        bucket = [x, x, x, y, x, y, 1, v, v, t]
        level0.append(bucket)
        if len(self.levels) > 1:
            pending = self._carry[0]
            if pending is None:
                self._carry[0] = bucket
            else:
                self._carry[0] = None
                self._add_level(1, merge(pending, bucket))
        self._add_overview(x, y, v, t)

    def _add_level(self, k: int, bucket: Bucket) -> None:
        while True:
            self.levels[k].append(bucket)
            if k + 1 == len(self.levels):
                return
            pending = self._carry[k]
            if pending is None:
                self._carry[k] = bucket
                return
            self._carry[k] = None
            bucket, k = merge(pending, bucket), k + 1

    def _add_overview(self, x: float, y: float, v: int, t: float) -> None:
        bucket = self._open
        if bucket is None:
            bucket = self._open = [x, x, x, y, x, y, 1, v, v, t]
        else:  # in place: this runs once per point
            bucket[1] = x
            if y < bucket[3]:
                bucket[2], bucket[3] = x, y
            if y > bucket[5]:
                bucket[4], bucket[5] = x, y
            bucket[6] += 1
            bucket[8] = v
            bucket[9] = t
        if bucket[6] < self.overview_size:
            return
        self.overview.append(bucket)
        self._open = None
        if len(self.overview) >= 2 * self.width:
            pairs = zip(self.overview[0::2], self.overview[1::2], strict=True)
            self.overview = [merge(a, b) for a, b in pairs]
            self.overview_size *= 2

    def cut(self, x: float) -> None:
        """Forget what starts at or after `x` (a resumed attempt replaces it)."""
        for k, level in enumerate(self.levels):
            while level and level[-1][0] >= x:
                level.pop()
            carry = self._carry[k]
            if carry is not None and carry[0] >= x:
                self._carry[k] = None
        while self.overview and self.overview[-1][0] >= x:
            self.overview.pop()
        if self._open is not None and self._open[0] >= x:
            self._open = None

    def whole(self) -> list[Bucket]:
        """The whole series in at most about `2 * width` buckets (the chart's first draw)."""
        tail = [] if self._open is None else [list(self._open)]
        return [*self.overview, *tail]

    def window(
        self, x_from: float, x_to: float, points: int | None = None
    ) -> tuple[int, list[Bucket]]:
        """The finest kept buckets covering [x_from, x_to], at most `points` (default
        `2 * width`; merged down when more): (level, buckets).

        Level k holds buckets of 2**k points; -1 is the overview, used when no finer level
        still holds x_from (an old stretch: `zoom.window` reads it back from the log).
        """
        points = points or 2 * self.width
        for k, level in enumerate(self.levels):
            if level and level[0][0] <= x_from:
                return k, downsample([b for b in level if b[1] >= x_from and b[0] <= x_to], points)
        inside = [b for b in self.whole() if b[1] >= x_from and b[0] <= x_to]
        return -1, downsample(inside, points)

    def to_state(self) -> dict[str, Any]:
        """A copy (encoded later, in a thread, while points keep arriving): closed
        buckets are never changed, so copying the lists that hold them is enough."""
        return {
            "width": self.width,
            "levels": [list(level) for level in self.levels],
            "carry": list(self._carry),
            "overview": list(self.overview),
            "overview_size": self.overview_size,
            "open": None if self._open is None else list(self._open),
            "count": self.count,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Series:
        series = cls(int(state["width"]), len(state["levels"]))
        for level, saved in zip(series.levels, state["levels"], strict=True):
            level.extend(_bucket(b) for b in saved)
        series._carry = [None if b is None else _bucket(b) for b in state["carry"]]
        series.overview = [_bucket(b) for b in state["overview"]]
        series.overview_size = int(state["overview_size"])
        series._open = None if state["open"] is None else _bucket(state["open"])
        series.count = int(state["count"])
        return series


def _bucket(value: Any) -> Bucket:
    if not isinstance(value, list) or len(value) != BUCKET_LEN:
        raise ValueError(f"not a bucket: {value!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(f"not a bucket: {value!r}")
    return list(value)
