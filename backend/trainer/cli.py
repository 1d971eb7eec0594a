"""`trainboard train CONFIG [--base BASE] [KEY VALUE ...]`: one run, in this terminal.

No server: this process opens the event store itself, creates the run and starts it
through the same `RunService` and `Supervisor` the server uses, so the run lands in the
history like any other. A progress bar follows the events. Ctrl-C stops gracefully
(checkpoint, then `stopped`); a second Ctrl-C sends the next signal of the escalation
at once. Exit status: 0 Complete, 1 Error (or an invalid config), 130 Stopped.

Only the child imports torch; this module must stay importable without it, since the
`trainboard` command registers every subcommand at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from backend import events as ev
from backend.config.cli import add_config_argument
from backend.events import Event
from backend.fsm.machine import IllegalCommand, State
from backend.store import add_durability_argument

if TYPE_CHECKING:
    from backend.execution.supervisor import Supervisor

EXIT_COMPLETE, EXIT_ERROR, EXIT_STOPPED = 0, 1, 130


def add_train_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one run in this terminal (no server), recorded in the event store",
        description="Validate a PyTorch Connectomics config, create a run in the event "
        "store and train it here, with a progress bar. Ctrl-C stops it gracefully "
        "(a second Ctrl-C forces it). Exit status: 0 complete, 1 error, 130 stopped.",
    )
    add_config_argument(parser, _add_options)
    parser.set_defaults(func=run_train)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, help="base config the file is merged over")
    parser.add_argument(
        "--db", type=Path, default=Path("events.db"), help="event store (default: events.db)"
    )
    add_durability_argument(parser)
    parser.add_argument("--name", help="the run's name (default: output folder and time)")
    parser.add_argument(
        "--log-path", help="folder for events.jsonl and train.log (default: OUTPUT_PATH/log/RUN)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument(
        "--reuse-output",
        action="store_true",
        help="write into an OUTPUT_PATH that holds another run's checkpoints (overwriting them)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after a stop request, seconds before the trainer is terminated (default 30)",
    )


def run_train(args: argparse.Namespace) -> int:
    request = _request(args)
    if request is None:
        return EXIT_ERROR
    return asyncio.run(_train(args, request))


def _request(args: argparse.Namespace) -> dict[str, Any] | None:
    """The create request, as the server would receive it; None if a file is unreadable."""
    texts: dict[str, str | None] = {"config": None, "base": None}
    for key, path in (("config", args.config), ("base", args.base)):
        if path is None:
            continue
        try:
            texts[key] = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{path}: error: cannot read the file: {exc}", file=sys.stderr)
            return None
    return {
        **texts,
        "overrides": list(args.overrides),
        "name": args.name,
        "log_path": args.log_path,
        "seed": args.seed,
        "reuse_output": bool(getattr(args, "reuse_output", False)),
    }


async def _train(args: argparse.Namespace, request: dict[str, Any]) -> int:
    # Imported here: `trainboard --help` should not pay for the store and the config schema.
    from backend import runspec
    from backend.config.cli import summary
    from backend.execution.supervisor import Supervisor
    from backend.runs import RunService, new_run_id
    from backend.store import EventStore, StoreError

    run_id = new_run_id()
    try:
        created = runspec.created_data(request, run_id)
    except runspec.InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except runspec.OutputInUse as exc:  # the folder holds another run's checkpoints
        print(f"error: {exc}", file=sys.stderr)
        print(f"  e.g. trainboard train ... DATASET.OUTPUT_PATH {exc.proposed}", file=sys.stderr)
        return EXIT_ERROR
    except runspec.InvalidConfig as exc:
        for problem in exc.problems:
            print(_located(problem, args), file=sys.stdout)
        print(summary(exc.problems))
        return EXIT_ERROR
    for warning in created["warnings"]:
        print(_located_json(warning, args))
    try:
        store = await EventStore.open(args.db, synchronous=args.durability.upper())
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        service = RunService(store)
        await service.load()
        await service.create(created, run_id)
        runspec.claim_output(created, run_id)  # the folder is this run's now
        print(f"run {run_id} ({created['name']}) in {args.db}; logs in {created['log_path']}")
        # Its own run only: on every GPU it may use, never behind a server's queue.
        supervisor = Supervisor(service, stop_grace_s=args.stop_grace, queue=False)
        progress = Progress(run_id, created["total_iterations"])
        unsubscribe = service.listen(progress.on_events)
        try:
            state = await _run(supervisor, run_id)
        finally:
            unsubscribe()
            progress.close()
            await supervisor.shutdown()
        return _report(service.get(run_id).to_json(), state)
    finally:
        await store.close()


async def _run(supervisor: Supervisor, run_id: str) -> State | None:
    """Start the run and wait for its end, turning Ctrl-C into stop, then escalation."""
    loop = asyncio.get_running_loop()
    interrupts = 0
    tasks: set[asyncio.Task[None]] = set()

    async def stop() -> None:
        # IllegalCommand: it ended (or began stopping) on its own meanwhile.
        with contextlib.suppress(IllegalCommand):
            await supervisor.stop(run_id)

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print("\nstopping: saving a checkpoint (Ctrl-C again to force)", file=sys.stderr)
            if run_id in supervisor.training():
                task = loop.create_task(stop())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        elif supervisor.escalate(run_id):
            print("\nforcing the stop", file=sys.stderr)

    # Not available off the main thread or on some platforms: Ctrl-C then just ends us.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        await supervisor.start(run_id)
        if interrupts:  # Ctrl-C while it was starting
            await stop()
        return await supervisor.wait(run_id)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _report(run: dict[str, Any], state: State | None) -> int:
    run_id = run["run_id"]
    checkpoint = run["last_checkpoint"] or "none"
    if state is State.COMPLETE:
        dice = run["best_dice"]
        best = f", best dice {dice:.4f} at {run['best_iteration']}" if dice is not None else ""
        print(
            f"run {run_id} complete at iteration {run['iteration']}{best}; checkpoint {checkpoint}"
        )
        return EXIT_COMPLETE
    if state is State.STOPPED:
        print(
            f"run {run_id} stopped at iteration {run['iteration']}; checkpoint {checkpoint}; "
            "resume it from the web app (trainboard serve)"
        )
        return EXIT_STOPPED
    error = run["error"] or {}
    print(f"run {run_id} failed: {error.get('message') or state}", file=sys.stderr)
    if error.get("hint"):
        print(f"  hint: {error['hint']}", file=sys.stderr)
    if error.get("key") and error.get("suggested") is not None:
        # The override that retries with the fix, as it would be typed.
        print(f"  retry with: {error['key']} {error['suggested']!r}", file=sys.stderr)
    return EXIT_ERROR


def _located(problem: Any, args: argparse.Namespace) -> str:
    """A problem in `trainboard validate`'s format, naming the user's files."""
    files = {"config": str(args.config), "base": str(args.base)}
    if problem.file in files:
        problem = dataclasses.replace(problem, file=files[problem.file])
    return str(problem.format(default_file=str(args.config)))


def _located_json(data: dict[str, Any], args: argparse.Namespace) -> str:
    from backend.config.problems import Problem

    fields = {f.name for f in dataclasses.fields(Problem)}
    return _located(Problem(**{k: v for k, v in data.items() if k in fields}), args)


class Progress:
    """A one-line progress bar on a terminal; periodic plain lines anywhere else."""

    WIDTH = 24
    PLAIN_EVERY_S = 10.0

    def __init__(self, run_id: str, total: int, out: TextIO | None = None) -> None:
        self.run_id = run_id
        self.total = total
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.iteration = 0
        self.its_per_s: float | None = None
        self.eta_s: float | None = None
        self.loss: float | None = None
        self._drawn = 0.0
        self._shown = False

    def on_events(self, events: Sequence[Event]) -> None:
        changed = False
        for event in events:
            if event.run_id != self.run_id:
                continue
            data = event.data
            if event.type == ev.PROGRESS:
                self.iteration = data.get("iteration", self.iteration)
                self.total = data.get("total", self.total)
                self.its_per_s, self.eta_s = data.get("its_per_s"), data.get("eta_s")
                changed = True
            elif event.type == ev.METRIC:
                self.iteration = data.get("iteration", self.iteration)
                self.loss = data.get("loss")
                changed = True
            else:
                line = _describe(event)
                if line:
                    self._say(line)
        if changed:
            self._draw()

    def close(self) -> None:
        if self.tty and self._shown:
            self._draw(force=True)
            self.out.write("\n")
            self.out.flush()
            self._shown = False

    def line(self) -> str:
        total = max(self.total, 1)
        done = min(self.iteration / total, 1.0)
        filled = round(done * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        parts = [f"[{bar}] {self.iteration}/{self.total} {done:4.0%}"]
        if self.its_per_s:
            parts.append(f"{self.its_per_s:.1f} it/s")
        if self.eta_s is not None and math.isfinite(self.eta_s):
            parts.append(f"ETA {_clock(self.eta_s)}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        return "  ".join(parts)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        every = 0.1 if self.tty else self.PLAIN_EVERY_S
        if not force and now - self._drawn < every:
            return
        self._drawn = now
        if self.tty:
            self.out.write("\r\x1b[K" + self.line())
            self._shown = True
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()

    def _say(self, text: str) -> None:
        if self.tty and self._shown:
            self.out.write("\r\x1b[K")
        self.out.write(text + "\n")
        if self.tty and self._shown:
            self.out.write(self.line())
        self.out.flush()


def _describe(event: Event) -> str | None:
    """A line for the events worth a line of their own."""
    data = event.data
    it = data.get("iteration")
    if event.type == ev.TRAINER_READY:
        start = data.get("start_iteration") or 0
        resumed = f", resuming at iteration {start}" if start else ""
        return (
            f"trainer ready on {data.get('device')} ({data.get('parameters')} parameters{resumed})"
        )
    if event.type == ev.VALIDATION:
        best = " (best)" if data.get("best") else ""
        return (
            f"validation at {it}: dice {_num(data.get('dice'))} iou {_num(data.get('iou'))}{best}"
        )
    if event.type == ev.LOG and data.get("level") in ("warning", "error"):
        return f"{data['level']}: {data.get('message')}"
    if event.type == ev.STOP_ESCALATED:
        return f"the trainer did not stop in time: sent {data.get('signal')}"
    return None


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
