"""The run page's read model: what the live view draws, in bounded memory, as of a seq.

Kept per run as its events are applied (the same events, in the same order, that the
summary folds): the metric and validation series as min/max buckets (`series.Series`),
and the few events the page shows as they are: every lifecycle event (created, started,
stop, the end, ...), the latest trainer_ready and progress, the last `LOG_LINES` log
lines, the last `CHECKPOINTS` checkpoints and the last `PREVIEWS` validations with a
preview. `to_json()` says the seq it reflects: a client that subscribes `after` that seq
gets every later event of the run, none twice (docs/protocol.md, "The run page").
"""

from __future__ import annotations

from collections import deque
from typing import Any

from backend import events as ev
from backend.events import Event
from backend.readmodels.series import Series

LOG_LINES = 200
CHECKPOINTS = 50
PREVIEWS = 20
LIFECYCLE = 200  # a run resumed a hundred times still shows its latest story
METRIC_SERIES = ("loss", "lr")  # metric data keys
VALIDATION_SERIES = {"val_loss": "loss", "dice": "dice", "iou": "iou"}  # name -> data key
_METRIC_KEYS = {name: name for name in METRIC_SERIES}
# Where each series' points come from: name -> (event type, data key).
SOURCES = {
    **{name: (ev.METRIC, name) for name in METRIC_SERIES},
    **{name: (ev.VALIDATION, key) for name, key in VALIDATION_SERIES.items()},
}
_KEPT = ("lifecycle", "logs", "checkpoints", "previews")


def number(value: Any) -> float | None:
    """A finite int or float, else None (bool, NaN, infinities, anything else)."""
    kind = type(value)  # exact types, not isinstance: this runs for every point folded
    if kind is float:
        return value if value - value == 0.0 else None  # inf - inf and NaN - NaN are NaN
    return value if kind is int else None


class RunPage:
    """One run's page, folded event by event."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.seq = 0
        self.version = 0
        self.series: dict[str, Series] = {
            name: Series() for name in (*METRIC_SERIES, *VALIDATION_SERIES)
        }
        self.lifecycle: deque[dict[str, Any]] = deque(maxlen=LIFECYCLE)
        self.logs: deque[dict[str, Any]] = deque(maxlen=LOG_LINES)
        self.checkpoints: deque[dict[str, Any]] = deque(maxlen=CHECKPOINTS)
        self.previews: deque[dict[str, Any]] = deque(maxlen=PREVIEWS)
        self.trainer_ready: dict[str, Any] | None = None
        self.progress: dict[str, Any] | None = None

    def apply(self, event: Event) -> None:
        self.seq = event.seq
        self.version = event.version
        kind, data = event.type, event.data
        if kind == ev.METRIC:
            self._points(data, _METRIC_KEYS, event.version, event.ts)
        elif kind == ev.VALIDATION:
            self._points(data, VALIDATION_SERIES, event.version, event.ts)
            if data.get("preview"):
                self.previews.append(event.to_json())
        elif kind == ev.PROGRESS:
            self.progress = event.to_json()
        elif kind == ev.LOG:
            self.logs.append(event.to_json())
        elif kind == ev.CHECKPOINT:
            self.checkpoints.append(event.to_json())
        elif kind == ev.TRAINER_READY:
            self.trainer_ready = event.to_json()
        else:
            self.lifecycle.append(event.to_json())

    def _points(self, data: Any, names: dict[str, str], version: int, ts: float) -> None:
        x = number(data.get("iteration"))
        if x is None:
            return
        for name, key in names.items():
            y = number(data.get(key))
            series = self.series[name]
            if y is not None:
                series.add(x, y, version, ts)
            elif series.last_x is not None and x <= series.last_x:
                series.cut(x)  # a resumed attempt cuts every series, valued here or not

    def kept_events(self) -> list[dict[str, Any]]:
        """The events the page shows as they are, in seq order."""
        kept = [e for name in _KEPT for e in getattr(self, name)]
        kept += [e for e in (self.trainer_ready, self.progress) if e is not None]
        return sorted(kept, key=lambda e: int(e["seq"]))

    def to_json(self) -> dict[str, Any]:
        """The page as the client draws it: series as buckets, the kept events, the seq."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "version": self.version,
            "series": {
                name: {"count": s.count, "overview_size": s.overview_size, "buckets": s.whole()}
                for name, s in self.series.items()
            },
            "events": self.kept_events(),
        }

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"run_id": self.run_id, "seq": self.seq, "version": self.version}
        state["series"] = {name: s.to_state() for name, s in self.series.items()}
        for name in _KEPT:
            state[name] = list(getattr(self, name))
        state["trainer_ready"] = self.trainer_ready
        state["progress"] = self.progress
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunPage:
        page = cls(str(state["run_id"]))
        page.seq, page.version = int(state["seq"]), int(state["version"])
        if set(state["series"]) != set(page.series):
            raise ValueError("the snapshot's series are not this version's")
        page.series = {name: Series.from_state(s) for name, s in state["series"].items()}
        for name in _KEPT:
            getattr(page, name).extend(state[name])
        page.trainer_ready = state["trainer_ready"]
        page.progress = state["progress"]
        return page
