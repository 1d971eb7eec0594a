"""A trainer that does not train: metric events at a chosen rate, for load and chaos tests.

Selected by `TrainJob.options["synthetic"]` (see `backend.execution.job`), it runs in the real
spawned child, through the real emitter, spool and pipe, so the server cannot tell it from
a training run except by its speed: `trainer_ready`, then one `metric` event per
"iteration" at `rate` events per second (a `progress` event each second, a loss line in
`train.log` every MONITOR.ITERATION_NUM[0] iterations), then `completed` after `seconds`
(never, if 0), or `stopped` as soon as a stop is requested (the flag, SIGTERM or a dead
parent), like the training loop. It imports neither torch nor numpy, so it starts in a
fraction of a second.

Options: `rate` (events per second, default 10,000), `seconds` (default 0: until stopped),
`components` (loss components per metric, default 2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend.events import COMPLETED, FAILED, METRIC, PROGRESS, STOPPED, TRAINER_READY
from backend.execution.job import TrainJob
from backend.trainer.emitter import Emitter

TICK_S = 0.001  # sleep between bursts: events go out in bursts of rate * TICK_S


@dataclass(frozen=True)
class Outcome:
    """How the attempt ended (the same shape as the training loop's)."""

    type: str
    data: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return 1 if self.type == FAILED else 0


class SyntheticLoop:
    """Emits metrics at a fixed rate until done or asked to stop."""

    def __init__(self, job: TrainJob, emitter: Emitter, should_stop: Callable[[], bool]) -> None:
        options = dict(job.options.get("synthetic") or {})
        self.rate = float(options.get("rate", 10_000))
        self.seconds = float(options.get("seconds", 0))
        self.names = [f"0/Component{k}" for k in range(int(options.get("components", 2)))]
        if not (self.rate > 0 and math.isfinite(self.rate) and self.seconds >= 0):
            raise ValueError(f"synthetic options need rate > 0 and seconds >= 0: {options}")
        self.emitter = emitter
        self.should_stop = should_stop
        self.iteration = 0

    def run(self) -> Outcome:
        self.emitter.emit(
            TRAINER_READY,
            {"device": "synthetic", "amp": False, "parameters": 0, "start_iteration": 0},
        )
        began = time.perf_counter()
        next_progress = 1.0
        while not self.should_stop():
            elapsed = time.perf_counter() - began
            if self.seconds and elapsed >= self.seconds:
                return Outcome(COMPLETED, {"iteration": self.iteration, "checkpoint": None})
            self._burst(int(self.rate * elapsed) - self.iteration)
            if elapsed >= next_progress:
                next_progress += 1.0
                self._progress(elapsed)
            time.sleep(TICK_S)
        return Outcome(STOPPED, {"iteration": self.iteration, "checkpoint": None})

    def _burst(self, due: int) -> None:
        emit, names = self.emitter.emit, self.names
        for _ in range(max(0, due)):
            self.iteration += 1
            loss = 1.0 / (1.0 + 0.001 * self.iteration)
            components = {name: loss / len(names) for name in names}
            data = {"iteration": self.iteration, "loss": loss, "lr": 0.01}
            emit(METRIC, data | {"components": components})

    def _progress(self, elapsed: float) -> None:
        total = int(self.rate * self.seconds) if self.seconds else None
        eta = (self.seconds - elapsed) if self.seconds else None
        self.emitter.emit(
            PROGRESS,
            {"iteration": self.iteration, "total": total, "its_per_s": self.rate, "eta_s": eta},
        )
