"""Read models derived only from events, rebuildable from the log at any time.

A run's summary also keeps what a restarted server must know without re-reading the
log: the command ids its events record (so a repeated command is answered, not applied
again), the run's own checkpoints (what a resume may load), and whether a server stop
or crash interrupted it.

`to_state` / `from_state` carry a summary through a snapshot (`backend.readmodels`) as
plain JSON, every field included, so a summary restored from a snapshot is the summary
the fold made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from backend import events as ev
from backend.events import Event
from backend.fsm import Run
from backend.fsm.machine import Lifecycle, State

# The command each command event records (the inverse of events.COMMAND_EVENTS).
_COMMAND_OF = {event_type: command for command, event_type in ev.COMMAND_EVENTS.items()}
_COMMAND_OF |= ev.COMMAND_ALIASES
SERVER_SHUTDOWN = "server_shutdown"  # the reason of a stop the server asks for as it stops


class CommandRecord(NamedTuple):
    """A command id found in a run's log: which command it was and the event it appended."""

    command: str
    version: int


@dataclass
class RunSummary:
    """What a runs table shows about one run, as of its last event."""

    run: Run
    name: str = ""
    iteration: int = 0
    total: int = 0
    last_loss: float | None = None
    its_per_s: float | None = None
    eta_s: float | None = None
    best_dice: float | None = None
    best_iteration: int | None = None
    last_checkpoint: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    error: dict[str, Any] | None = None
    output_path: str | None = None
    log_path: str | None = None
    # Command id -> the command and the version of the event it appended (the first one).
    commands: dict[str, CommandRecord] = field(default_factory=dict)
    # The run's own checkpoints, path -> iteration, oldest first (a rewrite moves it last).
    checkpoints: dict[str, int] = field(default_factory=dict)
    interrupted: dict[str, Any] | None = None
    stop_reason: str | None = None  # of the stop under way
    queue_rank: float | None = None  # while queued: orders the queue (lowest first)
    job_state: dict[str, Any] | None = None  # the executor's latest `job_state` fact
    # The version of the current attempt's `started`/`resumed` event: where reconcile reads.
    attempt_version: int | None = None
    # What reconcile needs of the current attempt without reading it back: when it began,
    # the highest `n` (the trainer's line number) stored of it, and the executor's handle
    # from its launch `log` event.
    attempt_ts: float | None = None
    attempt_n: int = 0
    launch: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None  # a sweep trial's {id, number, params}
    tags: list[str] = field(default_factory=list)  # sorted
    notes: str = ""  # Markdown
    archived: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # 1-based place among queued runs: derived by RunService from every run's rank, so
    # not part of a snapshot (see `summary_fields`).
    queue_position: int | None = field(default=None, metadata={"derived": True})

    @classmethod
    def new(cls, run_id: str) -> RunSummary:
        return cls(Run(run_id))

    @property
    def state(self) -> State | None:
        return self.run.state

    @property
    def deleted(self) -> bool:
        """A tombstone (`deleted`): kept, shown only on demand, changed by nothing."""
        return self.run.deleted

    @property
    def queued(self) -> bool:
        return self.run.queued

    def apply(self, event: Event) -> None:
        """Apply an accepted event (strict: the live path)."""
        self.run.apply(event)
        self._update(event)

    def replay(self, event: Event) -> None:
        """Apply from the log, recording events that cannot apply as problems."""
        problems = len(self.run.problems)
        self.run.replay(event)
        if len(self.run.problems) == problems:
            self._update(event)

    @property
    def own_checkpoints(self) -> list[str]:
        """The run's checkpoint paths, newest first (what a resume may load)."""
        return list(reversed(self.checkpoints))

    @property
    def resumable_from(self) -> dict[str, Any] | None:
        """The run's latest own checkpoint, if it has one."""
        if not self.checkpoints:
            return None
        path = next(reversed(self.checkpoints))
        return {"path": path, "iteration": self.checkpoints[path]}

    def _update(self, event: Event) -> None:
        data = event.data
        kind = event.type
        n = data.get("n")
        if isinstance(n, int) and n > self.attempt_n and data.get("attempt") == self.attempts:
            self.attempt_n = n  # the trainer numbers an attempt's lines upwards
        command_id = data.get("command_id")
        if kind in _COMMAND_OF and isinstance(command_id, str):
            self.commands.setdefault(command_id, CommandRecord(_COMMAND_OF[kind], event.version))
        if kind == ev.METRIC:
            self.iteration = data.get("iteration", self.iteration)
            self.last_loss = data.get("loss", self.last_loss)
        elif kind == ev.PROGRESS:
            self.iteration = data.get("iteration", self.iteration)
            self.total = data.get("total", self.total)
            self.its_per_s = data.get("its_per_s")
            self.eta_s = data.get("eta_s")
        elif kind == ev.VALIDATION:
            dice = data.get("dice")
            if dice is not None and (self.best_dice is None or dice > self.best_dice):
                self.best_dice = dice
                self.best_iteration = data.get("iteration")
        elif kind == ev.CHECKPOINT:
            self.last_checkpoint = data.get("path")
            self._own_checkpoint(data.get("path"), data.get("iteration"))
        elif kind == ev.STOP_REQUESTED:
            self.stop_reason = data.get("reason")
        elif kind == ev.LOG and (
            isinstance(data.get("pid"), int) or isinstance(data.get("executor"), str)
        ):
            self.launch = _launch_handle(data)
        elif kind == ev.RENAMED:
            name = data.get("name")
            self.name = name if isinstance(name, str) else self.name
        elif kind == ev.TAGS_SET:
            self.tags = _tags(data.get("tags"))
        elif kind == ev.NOTES_SET:
            notes = data.get("notes")
            self.notes = notes if isinstance(notes, str) else ""
        elif kind in (ev.ARCHIVED, ev.UNARCHIVED):
            self.archived = kind == ev.ARCHIVED
        elif kind in (ev.QUEUED, ev.QUEUE_MOVED):
            rank = data.get("rank")
            self.queue_rank = float(rank) if isinstance(rank, int | float) else 0.0
        elif kind == ev.DEQUEUED:
            self.queue_rank = None
        elif kind == ev.JOB_STATE:
            self.job_state = dict(data)
        elif kind == ev.CREATED:
            self.name = data.get("name", "")
            self.total = data.get("total_iterations", 0)
            self.output_path = data.get("output_path")
            self.log_path = data.get("log_path")
            sweep = data.get("sweep")
            self.sweep = dict(sweep) if isinstance(sweep, dict) else None
            self.tags = _tags(data.get("tags"))
            self.created_at = event.ts
        elif kind in (ev.STARTED, ev.RESUMED):
            self.attempts += 1
            self.attempt_version = event.version
            self.attempt_ts, self.attempt_n, self.launch = event.ts, 0, None
            self.queue_rank = None
            self.job_state = None
            self.started_at = self.started_at or event.ts
            self.ended_at = None
            self.error = None
            self.eta_s = None
            self.interrupted = None
            self.stop_reason = None
        elif kind in (ev.COMPLETED, ev.STOPPED, ev.FAILED):
            self.ended_at = event.ts
            self.eta_s = None
            self.its_per_s = None
            self.iteration = data.get("iteration", self.iteration)
            if kind == ev.FAILED:
                # cause / key / suggested: what "Fix configuration and retry" changes.
                fields = ("message", "hint", "exit_code", "cause", "key", "suggested")
                self.error = {k: data.get(k) for k in fields}
            checkpoint = data.get("checkpoint")
            if checkpoint:
                self.last_checkpoint = checkpoint
                if checkpoint not in self.checkpoints:
                    self._own_checkpoint(checkpoint, data.get("iteration"))
            if self._was_interrupted(kind, data):
                latest = self.resumable_from
                self.interrupted = {
                    "reason": "server_restart",
                    "at": event.ts,
                    "checkpoint_iteration": latest["iteration"] if latest else None,
                }

    def _own_checkpoint(self, path: Any, iteration: Any) -> None:
        if isinstance(path, str) and path:
            self.checkpoints.pop(path, None)
            self.checkpoints[path] = iteration if isinstance(iteration, int) else 0

    def _was_interrupted(self, kind: str, final: Any) -> bool:
        """An end caused by the server going away, not by the run itself: a reconciled
        end (`interrupted`), or a stop the server asked for as it shut down."""
        if kind == ev.COMPLETED:
            return False
        shutdown = kind == ev.STOPPED and self.stop_reason == SERVER_SHUTDOWN
        return bool(final.get("interrupted")) or shutdown

    def to_state(self) -> dict[str, Any]:
        """Everything this summary holds, as JSON values (a snapshot's record of it)."""
        run = self.run
        state: dict[str, Any] = {
            "run": {
                "run_id": run.run_id,
                "state": None if run.lifecycle is None else str(run.lifecycle.state),
                "stopping": run.stopping,
                "deleted": run.deleted,
                "queued": run.queued,
                "version": run.version,
                "last_seq": run.last_seq,
                "problems": list(run.problems),
            }
        }
        for f in summary_fields():
            value = getattr(self, f)
            if f == "commands":
                value = {cid: [r.command, r.version] for cid, r in value.items()}
            elif isinstance(value, dict | list):
                value = _copy(value)
            state[f] = value
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunSummary:
        """The summary `to_state` recorded; KeyError/TypeError/ValueError if it is not one."""
        saved = state["run"]
        run = Run(saved["run_id"], None, int(saved["version"]), int(saved["last_seq"]))
        run.problems = [str(p) for p in saved["problems"]]
        if saved["state"] is not None:
            run.lifecycle = Lifecycle(initial=State(saved["state"]))
            run.lifecycle.stopping = bool(saved["stopping"])
            run.lifecycle.tombstone = bool(saved["deleted"])
            run.lifecycle.in_queue = bool(saved["queued"])
        values = {f: state[f] for f in summary_fields()}
        values["commands"] = {
            cid: CommandRecord(str(c), int(v)) for cid, (c, v) in values["commands"].items()
        }
        return cls(run, **values)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id,
            "name": self.name,
            "tags": list(self.tags),
            "notes": self.notes,
            "archived": self.archived,
            "deleted": self.deleted,
            "state": self.run.state,
            "stopping": self.run.stopping,
            "queued": self.run.queued,
            "queue_position": self.queue_position,
            "job_state": self.job_state,
            "legal_commands": self.run.legal_commands(),
            "version": self.run.version,
            "last_seq": self.run.last_seq,
            "iteration": self.iteration,
            "total": self.total,
            "last_loss": self.last_loss,
            "its_per_s": self.its_per_s,
            "eta_s": self.eta_s,
            "best_dice": self.best_dice,
            "best_iteration": self.best_iteration,
            "last_checkpoint": self.last_checkpoint,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "attempts": self.attempts,
            "error": self.error,
            "output_path": self.output_path,
            "log_path": self.log_path,
            "interrupted": self.interrupted,
            "resumable_from": self.resumable_from,
            "stop_reason": self.stop_reason,
            "sweep": self.sweep,
            "problems": list(self.run.problems),
        }


def summary_fields() -> tuple[str, ...]:
    """RunSummary's fields besides the lifecycle, in declaration order."""
    return tuple(
        f.name for f in fields(RunSummary) if f.name != "run" and not f.metadata.get("derived")
    )


def _tags(value: Any) -> list[str]:
    """A tag set as the summary keeps it (sorted strings), whatever a foreign log holds."""
    return sorted({t for t in value if isinstance(t, str)}) if isinstance(value, list) else []


def _launch_handle(log_data: Mapping[str, Any]) -> dict[str, Any]:
    """The executor's handle of an attempt, from the `log` event that recorded its launch
    (`{"executor": "local", "pid", "pid_started"}` or `{"executor": "slurm", "job_id"}`)."""
    handle = {k: v for k, v in log_data.items() if k not in ("level", "message", "devices")}
    handle.setdefault("executor", "local")
    return handle


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def summarize(events: list[Event], run_id: str) -> RunSummary:
    """A run's summary rebuilt from its events."""
    summary = RunSummary.new(run_id)
    for event in events:
        summary.replay(event)
    return summary
