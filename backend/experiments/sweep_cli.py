"""`trainboard sweep CONFIG --param KEY=SPEC ... --trials N`: a sweep, with live progress.

By default the sweep runs in this process, on the event store (`--db`), through the same
RunService, Supervisor, Commands and SweepService the server wires (as `trainboard
train` does), so it lands in the history like any other: a store is held by one process,
so this is for a machine where no server is running. With `--server URL` it is created
on that server instead (its queue, its GPUs, its browser) and followed over REST until it
ends.

A line is printed per trial as it ends (state, value, best so far). Ctrl-C stops the
sweep gracefully (its trials checkpoint and stop; a server resumes it with
`POST /api/sweeps/ID/resume`). Exit status: 0 complete, 1 refused, 130 stopped.

`--param` specs: `loguniform:LOW:HIGH`, `uniform:LOW:HIGH`, `int:LOW:HIGH`,
`logint:LOW:HIGH`, `choice:A,B,C` (values read as numbers when they are numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from backend.config.cli import add_config_argument
from backend.store import add_durability_argument

if TYPE_CHECKING:
    from backend.commands import Commands
    from backend.events import Event
    from backend.execution.supervisor import Supervisor
    from backend.experiments.sweep_service import SweepService
    from backend.runs import RunService
    from backend.store import EventStore

EXIT_COMPLETE, EXIT_REFUSED, EXIT_STOPPED = 0, 1, 130
_RANGES = {"uniform": ("float", False), "loguniform": ("float", True)}
_RANGES |= {"int": ("int", False), "logint": ("int", True)}


def add_sweep_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="search hyperparameters: a sweep of trial runs, sampled and pruned by Optuna",
        description="Create a sweep over a config's keys and follow it: one line per trial "
        "as it ends, with the best so far. Ctrl-C stops it gracefully. "
        "Exit status: 0 complete, 1 refused, 130 stopped.",
    )
    add_config_argument(parser, _add_options)
    parser.set_defaults(func=run_sweep)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, help="base config the file is merged over")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a swept key: SOLVER.BASE_LR=loguniform:1e-4:1e-1, "
        "SOLVER.SAMPLES_PER_BATCH=choice:2,4,8, KEY=int:1:8, KEY=uniform:0:1",
    )
    parser.add_argument("--trials", type=int, default=12, help="the budget (default 12)")
    parser.add_argument("--parallel", type=int, default=1, help="trials at once (default 1)")
    parser.add_argument("--prune", choices=("none", "median", "halving"), default="none")
    parser.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
    parser.add_argument("--objective", choices=("max_dice", "min_val_loss"), default="max_dice")
    parser.add_argument("--seed", type=int, help="the sampler's seed (and every trial's)")
    parser.add_argument("--name", help="the sweep's name")
    parser.add_argument(
        "--db", type=Path, default=Path("events.db"), help="event store (default: events.db)"
    )
    add_durability_argument(parser)
    parser.add_argument("--server", metavar="URL", help="create it on this server instead")
    parser.add_argument("--token", help="the server's access token (default $TRAINBOARD_TOKEN)")


class BadParam(ValueError):
    """A --param the CLI cannot read; the message says how to write it."""


def parse_param(text: str) -> tuple[str, dict[str, Any]]:
    """`KEY=SPEC` as a space entry of the sweep request."""
    key, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or not key or not rest:
        raise BadParam(
            f"--param {text!r}: write KEY=SPEC, e.g. SOLVER.BASE_LR=loguniform:1e-4:1e-1 "
            "or SOLVER.SAMPLES_PER_BATCH=choice:2,4,8"
        )
    if kind == "choice":
        return key, {"type": "choice", "choices": [_value(v) for v in rest.split(",")]}
    if kind not in _RANGES:
        kinds = ", ".join([*_RANGES, "choice"])
        raise BadParam(f"--param {text!r}: unknown kind {kind!r}; use one of {kinds}")
    low, sep, high = rest.partition(":")
    type_, log = _RANGES[kind]
    try:
        bounds = [int(v) if type_ == "int" else float(v) for v in (low, high)]
    except ValueError:
        raise BadParam(f"--param {text!r}: write {kind}:LOW:HIGH with two numbers") from None
    return key, {"type": type_, "low": bounds[0], "high": bounds[1], "log": log}


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    texts: dict[str, str | None] = {"config": None, "base": None}
    for key, path in (("config", args.config), ("base", args.base)):
        if path is not None:
            texts[key] = Path(path).read_text(encoding="utf-8")
    return {
        **texts,
        "overrides": list(args.overrides),
        "space": dict(parse_param(p) for p in args.param),
        "objective": args.objective,
        "trials": args.trials,
        "parallel": args.parallel,
        "sampler": args.sampler,
        "pruner": args.prune,
        "seed": args.seed,
        "name": args.name,
    }


def run_sweep(args: argparse.Namespace) -> int:
    try:
        request = _request(args)
    except (BadParam, OSError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not request["space"]:
        print("error: give at least one --param KEY=SPEC to sweep", file=sys.stderr)
        return EXIT_REFUSED
    if args.server:
        return _follow_server(args, request)
    return asyncio.run(_sweep_here(args, request))


# --- in this process -------------------------------------------------------------------------


@dataclass
class LocalStack:
    store: EventStore
    service: RunService
    supervisor: Supervisor
    commands: Commands
    sweeps: SweepService


@contextlib.asynccontextmanager
async def local_stack(
    db: Path,
    *,
    synchronous: str = "NORMAL",
    job_options: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> AsyncIterator[LocalStack]:
    """The server's parts on one event store, as `backend.server` wires them (no HTTP)."""
    from backend.commands import Commands
    from backend.execution.reconcile import reconcile
    from backend.execution.supervisor import Supervisor
    from backend.experiments.sweep_service import SweepService
    from backend.runs import RunService
    from backend.store import EventStore

    store = await EventStore.open(db, synchronous="FULL" if synchronous == "FULL" else "NORMAL")
    try:
        service = RunService(store)
        await service.load()
        supervisor = Supervisor(service, job_options=job_options)
        await reconcile(service, supervisor, kill_grace_s=supervisor.kill_grace_s)
        commands = Commands(service, supervisor, base_dir=base_dir)
        sweeps = SweepService(commands)
        await sweeps.load()
        try:
            yield LocalStack(store, service, supervisor, commands, sweeps)
        finally:
            await sweeps.close()
            await supervisor.shutdown()
    finally:
        await store.close()


class Progress:
    """One line per trial as it is told, with the best so far."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.began = time.monotonic()

    def told(self, sweep: Mapping[str, Any], trial: Mapping[str, Any]) -> None:
        value = "-" if trial.get("value") is None else f"{trial['value']:.4f}"
        best = sweep.get("best_value")
        best_text = "-" if best is None else f"{best:.4f} (trial {sweep.get('best_trial')})"
        params = " ".join(f"{k}={_num(v)}" for k, v in trial.get("params", {}).items())
        print(
            f"[{time.monotonic() - self.began:7.1f}s] trial {trial['number']:>3} "
            f"{trial['state']:<8} value={value}  best={best_text}  "
            f"{sweep.get('done')}/{sweep.get('budget')} done  {params}",
            file=self.out,
            flush=True,
        )


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


async def _sweep_here(args: argparse.Namespace, request: dict[str, Any]) -> int:
    from backend.experiments import sweeps as sw
    from backend.experiments.sweeps import SweepState
    from backend.store import StoreError

    try:
        opened = local_stack(args.db, synchronous=args.durability.upper())
        s = await opened.__aenter__()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        outcome = await s.sweeps.run("create", None, request)
        if not outcome.ok:
            _print_refusal(outcome.body)
            return EXIT_REFUSED
        sweep_id = outcome.body["sweep"]["sweep_id"]
        print(f"sweep {sweep_id} ({request['trials']} trials) in {args.db}", flush=True)
        progress = Progress()

        def on_events(events: list[Event]) -> None:
            for e in events:
                if e.run_id == sweep_id and e.type == sw.TRIAL_TOLD:
                    summary = s.sweeps.get(sweep_id)
                    progress.told(summary.to_json(), summary.trials[e.data["number"]].to_json())

        unlisten = s.sweeps.listen(on_events)
        stop = _on_interrupt(lambda: asyncio.ensure_future(s.sweeps.run("stop", sweep_id)))
        try:
            ended = (SweepState.COMPLETE, SweepState.STOPPED)
            summary = await s.sweeps.wait(sweep_id, lambda x: x.state in ended)
        finally:
            stop()
            unlisten()
        return _report(summary.to_json())
    finally:
        await opened.__aexit__(None, None, None)


def _on_interrupt(handler: Any) -> Any:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, handler)
        return lambda: loop.remove_signal_handler(signal.SIGINT)
    return lambda: None


def _report(sweep: Mapping[str, Any]) -> int:
    best = sweep.get("best_value")
    print(
        f"sweep {sweep['sweep_id']} {str(sweep['state']).lower()}: {sweep['done']} of "
        f"{sweep['budget']} trials done ({sweep['pruned']} pruned, {sweep['failed']} failed)"
        + (
            ""
            if best is None
            else f"; best {best:.4f}: trial {sweep['best_trial']} "
            f"(run {sweep['best_run_id']}) {sweep['best_params']}"
        ),
        flush=True,
    )
    return EXIT_COMPLETE if sweep["state"] == "Complete" else EXIT_STOPPED


def _print_refusal(body: Mapping[str, Any]) -> None:
    error = body.get("error", {})
    print(f"error: {error.get('message')}", file=sys.stderr)
    for problem in error.get("details", {}).get("problems", []):
        if problem.get("level") == "error":
            print(f"  {problem.get('key')}: {problem.get('message')}", file=sys.stderr)


# --- on a server -----------------------------------------------------------------------------


def _follow_server(args: argparse.Namespace, request: dict[str, Any]) -> int:
    import os

    from backend.client import ClientError, Rest

    rest = Rest(args.server, args.token or os.environ.get("TRAINBOARD_TOKEN"))
    try:
        created = rest.call("POST", "/api/sweeps", request)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    sweep_id = created["sweep"]["sweep_id"]
    print(f"sweep {sweep_id} ({request['trials']} trials) on {args.server}", flush=True)
    progress, shown = Progress(), set()
    try:
        while True:
            table = rest.get(f"/api/sweeps/{sweep_id}/trials")
            for row in table["trials"]:
                if row["state"] != "asked" and row["number"] not in shown:
                    shown.add(row["number"])
                    progress.told(table["sweep"], row)
            if table["sweep"]["state"] in ("Complete", "Stopped"):
                return _report(table["sweep"])
            time.sleep(1.0)
    except KeyboardInterrupt:
        rest.call("POST", f"/api/sweeps/{sweep_id}/stop", {})
        print(f"stopping sweep {sweep_id} (resume: POST /api/sweeps/{sweep_id}/resume)")
        return EXIT_STOPPED
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
