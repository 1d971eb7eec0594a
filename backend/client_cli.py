"""Client subcommands of `trainboard`: runs, show, start, stop, resume, queue, dequeue, move,
watch, replay, export.

They talk to a running server: `--url`/`--token`, or TRAINBOARD_URL/TRAINBOARD_TOKEN (the
URL `trainboard serve` prints, token included, works as --url on its own).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from backend.client import Client, ClientError, Rest, resolve
from backend.events import Event

# How `watch` exits: the run's outcome.
EXIT_CODES = {"Complete": 0, "Error": 1, "Stopped": 130}
FINAL_TYPES = {"completed": "Complete", "failed": "Error", "stopped": "Stopped"}


def add_client_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server URL (default $TRAINBOARD_URL or 127.0.0.1:8000)")
    common.add_argument("--token", help="access token (default $TRAINBOARD_TOKEN)")

    def add(name: str, help_: str, func: Any, run: bool = True) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help_, description=help_, parents=[common])
        if run:
            parser.add_argument("run", metavar="RUN", help="run id (or a unique prefix)")
        parser.set_defaults(func=lambda args: _guard(func, args))
        return parser

    runs = add("runs", "list the runs on the server", cmd_runs, run=False)
    runs.add_argument("--archived", action="store_true", help="also list archived runs")
    runs.add_argument("--deleted", action="store_true", help="also list deleted runs")
    add("show", "show one run", cmd_show)
    add("start", "start an idle run", lambda args: cmd_command(args, "start"))
    add(
        "stop",
        "stop a training run (it saves a checkpoint)",
        lambda args: cmd_command(args, "stop"),
    )
    add("resume", "resume a stopped or failed run", lambda args: cmd_command(args, "resume"))
    add("queue", "show the slots and the queued runs", cmd_queue, run=False)
    add("dequeue", "take a queued run out of the queue", lambda args: cmd_command(args, "dequeue"))
    move = add("move", "move a queued run in the queue", cmd_move)
    where = move.add_mutually_exclusive_group(required=True)
    where.add_argument("--position", type=int, help="its new place (1 starts first)")
    where.add_argument("--before", metavar="RUN", help="just before this queued run")
    add("watch", "follow a run live; exit 0 Complete, 1 Error, 130 Stopped", cmd_watch)
    replay = add("replay", "print a run's timeline as it happened", cmd_replay)
    replay.add_argument("--speed", type=float, default=1.0, help="X times faster (default 1)")
    replay.add_argument(
        "--max-gap", type=float, default=None, help="wait at most this many seconds between events"
    )
    export = add(
        "export",
        "download a run's events (jsonl), metrics (csv), or scalars and previews as "
        "TensorBoard event files (tensorboard DIR)",
        cmd_export,
    )
    export.add_argument("--format", choices=("jsonl", "csv", "tensorboard"), default="jsonl")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    export.add_argument(
        "directory", metavar="DIR", nargs="?", help="with --format tensorboard: the folder"
    )
    export.__class__ = IntermixedParser  # `export RUN --format tensorboard DIR`
    add_manage_parsers(add)


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand whose positionals may come on both sides of its options (plain argparse
    fills an optional positional from the first run of positionals, and then refuses DIR
    in `export RUN --format tensorboard DIR`)."""

    _parsing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._parsing:  # parse_known_intermixed_args parses through here, twice
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def add_manage_parsers(add: Any) -> None:
    """rename, tag, notes, archive, unarchive, delete (docs/experiments.md)."""
    rename = add("rename", "rename a run", cmd_rename)
    rename.add_argument("name", metavar="NAME", help="the new name (one line, 1 to 200 chars)")
    tag = add("tag", "add or remove a run's tags", cmd_tag)
    tag.add_argument("--add", action="append", default=[], metavar="TAG", help="(repeatable)")
    tag.add_argument("--remove", action="append", default=[], metavar="TAG", help="(repeatable)")
    notes = add(
        "notes", "set a run's notes (Markdown) from a file, or - for standard input", cmd_notes
    )
    notes.add_argument("file", metavar="FILE", help="a Markdown file, or - (standard input)")
    add("archive", "hide a run from the runs list (shown with --archived)", cmd_archive)
    add("unarchive", "show an archived run in the runs list again", cmd_unarchive)
    delete = add("delete", "delete a run (its events stay; not while it trains)", cmd_delete)
    delete.add_argument(
        "--remove-files",
        action="store_true",
        help="also remove its own files: its log folder and the checkpoints it wrote",
    )


def _guard(func: Any, args: argparse.Namespace) -> int:
    try:
        return int(func(args) or 0)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for line in explain(exc.code, exc.details or {}):
            print(f"  {line}", file=sys.stderr)
        return 1


def explain(code: str, details: dict[str, Any]) -> list[str]:
    """What a refusal means for the person at the terminal, and what to do next."""
    if code == "busy":
        training = details.get("training_run")
        return [
            f"run {training} is training and at most {details.get('max_concurrent')} run(s) "
            "may train at once; nothing was started",
            f"wait for it (trainboard watch {training}) or stop it (trainboard stop {training})",
        ]
    if code == "output_in_use":
        owner = details.get("owner") or {}
        whose = f"run {owner['run_id']} ({owner.get('name')})" if owner.get("run_id") else None
        return [
            f"{details.get('output_path')} holds the checkpoints of "
            f"{whose or owner.get('name') or 'another run'}; nothing was created",
            f"a free folder: {details.get('proposed')} (set DATASET.OUTPUT_PATH to it), "
            "or reuse the folder on purpose (reuse_output, --reuse-output)",
        ]
    if "legal_commands" in details:
        legal = ", ".join(details["legal_commands"]) or "none"
        return [f"the run is {details.get('state')}; allowed now: {legal}"]
    return []


def _rest(args: argparse.Namespace) -> Rest:
    url, token = resolve(args.url, args.token)
    return Rest(url, token)


def _run_id(rest: Rest, given: str) -> str:
    """A full run id from an id or a unique prefix of one."""
    ids: list[str] = [r["run_id"] for r in rest.runs(archived=True, deleted=True)]
    if given in ids:
        return given
    matches = [i for i in ids if i.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    reason = "no run" if not matches else f"{len(matches)} runs"
    raise ClientError(f"{reason} matching '{given}'; see `trainboard runs`", "not_found")


# --- runs, show, commands ------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    runs = _rest(args).runs(archived=args.archived, deleted=args.deleted)
    if not runs:
        print("no runs yet")
        return 0
    rows = [["RUN", "NAME", "TAGS", "STATE", "PROGRESS", "LOSS", "BEST DICE", "CREATED"]]
    for r in runs:
        state = r["state"] + (" (stopping)" if r["stopping"] else "")
        state += " (deleted)" if r.get("deleted") else " (archived)" if r.get("archived") else ""
        rows.append(
            [
                r["run_id"],
                _clip(r["name"], 28),
                _clip(",".join(r.get("tags", [])), 24),
                state,
                f"{r['iteration']}/{r['total']}",
                _num(r["last_loss"]),
                _num(r["best_dice"], 3),
                _when(r["created_at"]),
            ]
        )
    print(_table(rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    rest = _rest(args)
    answer = rest.run(_run_id(rest, args.run))
    run, created = answer["run"], answer["created"]
    fields = [
        ("run", run["run_id"]),
        ("name", run["name"]),
        ("tags", ", ".join(run.get("tags", [])) or "-"),
        ("state", run["state"] + (" (stopping)" if run["stopping"] else "")),
        ("allowed now", ", ".join(run["legal_commands"]) or "none"),
        ("progress", f"{run['iteration']}/{run['total']}"),
        ("last loss", _num(run["last_loss"])),
        ("best dice", f"{_num(run['best_dice'], 4)} at iteration {run['best_iteration']}"),
        ("attempts", str(run["attempts"])),
        ("checkpoint", run["last_checkpoint"] or "-"),
        ("created", _when(run["created_at"])),
        ("started", _when(run["started_at"])),
        ("ended", _when(run["ended_at"])),
        ("output", run["output_path"] or "-"),
        ("logs", run["log_path"] or "-"),
        ("seed", str(created.get("seed", "-"))),
    ]
    if run["error"]:
        fields.append(("error", run["error"].get("message") or "-"))
        fields.append(("hint", run["error"].get("hint") or "-"))
    if run.get("interrupted"):
        fields.append(("interrupted", interruption(run["interrupted"])))
    if run.get("archived") or run.get("deleted"):
        fields.append(("hidden", "deleted" if run.get("deleted") else "archived"))
    if run.get("notes"):
        first = run["notes"].strip().splitlines()[0] if run["notes"].strip() else ""
        fields.append(("notes", _clip(first, 72)))
    resumable = run.get("resumable_from")
    if "resume" in run["legal_commands"]:
        fields.append(
            (
                "resume from",
                f"{resumable['path']} (iteration {resumable['iteration']})"
                if resumable
                else "nothing: no checkpoint yet, a resume starts afresh",
            )
        )
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key:>{width}}  {value}")
    return 0


def cmd_command(args: argparse.Namespace, command: str) -> int:
    rest = _rest(args)
    run_id = _run_id(rest, args.run)
    answer = rest.command(run_id, command)
    return _print_answer(command, run_id, answer)


def cmd_move(args: argparse.Namespace) -> int:
    rest = _rest(args)
    run_id = _run_id(rest, args.run)
    where = (
        {"position": args.position}
        if args.position is not None
        else {"before": _run_id(rest, args.before)}
    )
    return _print_answer("move", run_id, rest.command(run_id, "move", data=where))


def cmd_queue(args: argparse.Namespace) -> int:
    table = _rest(args).queue()
    for slot in table["slots"]:
        print(f"slot {slot['index']} ({', '.join(slot['devices'])}): {slot['run_id'] or 'free'}")
    if not table["queued"]:
        print("nothing queued")
    for position, run_id in enumerate(table["queued"], 1):
        print(f"{position}. {run_id}")
    return 0


def _print_answer(command: str, run_id: str, answer: dict[str, Any]) -> int:
    run = answer["run"]
    state = run["state"] + (" (stopping)" if run["stopping"] else "")
    if run.get("queued"):
        state += f" (queued, position {run.get('queue_position')})"
    print(
        f"{command}: run {run_id} is {state} ({answer['event']['type']} at seq {run['last_seq']})"
    )
    return 0


# --- managing runs -------------------------------------------------------------------------


def cmd_rename(args: argparse.Namespace) -> int:
    rest = _rest(args)
    return _managed("rename", rest.rename(_run_id(rest, args.run), args.name))


def cmd_tag(args: argparse.Namespace) -> int:
    if not args.add and not args.remove:
        raise ClientError("give tags to --add and/or --remove", "bad_request")
    rest = _rest(args)
    return _managed("tag", rest.tag(_run_id(rest, args.run), args.add, args.remove))


def cmd_notes(args: argparse.Namespace) -> int:
    try:
        notes = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the notes from {args.file}: {exc}", "bad_request") from None
    rest = _rest(args)
    return _managed("notes", rest.notes(_run_id(rest, args.run), notes))


def cmd_archive(args: argparse.Namespace) -> int:
    rest = _rest(args)
    return _managed("archive", rest.archive(_run_id(rest, args.run)))


def cmd_unarchive(args: argparse.Namespace) -> int:
    rest = _rest(args)
    return _managed("unarchive", rest.unarchive(_run_id(rest, args.run)))


def cmd_delete(args: argparse.Namespace) -> int:
    rest = _rest(args)
    answer = rest.delete(_run_id(rest, args.run), remove_files=args.remove_files)
    data = answer["event"]["data"]
    for path in data.get("removed", []):
        print(f"removed {path}")
    for kept in data.get("kept", []):
        print(f"kept {kept['path']}: {kept['reason']}")
    return _managed("delete", answer)


def _managed(command: str, answer: dict[str, Any]) -> int:
    run = answer["run"]
    tags = ", ".join(run.get("tags", [])) or "no tags"
    hidden = " (deleted)" if run.get("deleted") else " (archived)" if run.get("archived") else ""
    print(
        f"{command}: run {run['run_id']} '{run['name']}', {tags}, {run['state']}{hidden} "
        f"({answer['event']['type']} at seq {run['last_seq']})"
    )
    return 0


# --- watch ---------------------------------------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    url, token = resolve(args.url, args.token)
    rest = Rest(url, token)
    run = rest.run(_run_id(rest, args.run))["run"]
    if run["state"] in EXIT_CODES:
        print(ending(run["run_id"], run["state"], run.get("error")))
        return EXIT_CODES[run["state"]]
    return asyncio.run(_watch(url, token, run))


async def _watch(url: str, token: str | None, run: dict[str, Any]) -> int:
    # The bar `trainboard train` draws (torch-free, like this module).
    from backend.trainer.cli import Progress

    progress = Progress(run["run_id"], run["total"], sys.stdout)
    progress.iteration, progress.loss = run["iteration"], run["last_loss"]
    progress.its_per_s, progress.eta_s = run["its_per_s"], run["eta_s"]
    async with Client(url, token, run_id=run["run_id"], after=run["last_seq"]) as client:
        async for event in client.events():
            progress.on_events([Event(**event)])
            state = FINAL_TYPES.get(event["type"])
            if state is not None:
                progress.close()
                print(progress.line())
                print(ending(run["run_id"], state, event["data"]), flush=True)
                return EXIT_CODES[state]
    return 1


def interruption(interrupted: dict[str, Any]) -> str:
    """ "the server restarted at 21:44; checkpoint at iteration 71"."""
    at = (
        datetime.fromtimestamp(interrupted["at"]).strftime("%H:%M")
        if interrupted.get("at")
        else "?"
    )
    iteration = interrupted.get("checkpoint_iteration")
    where = f"checkpoint at iteration {iteration}" if iteration is not None else "no checkpoint"
    return f"the server restarted at {at}; {where}"


def ending(run_id: str, state: str, error: dict[str, Any] | None) -> str:
    line = f"run {run_id}: {state}"
    if state == "Error" and error:
        line += f": {error.get('message', '')}"
        if error.get("hint"):
            line += f"\n  hint: {error['hint']}"
    return line


# --- replay and export ---------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        raise ClientError("--speed must be above 0", "bad_request")
    rest = _rest(args)
    events = rest.iter_events(_run_id(rest, args.run))
    replay(events, sys.stdout, args.speed, args.max_gap)
    return 0


def replay(
    events: Iterable[dict[str, Any]],
    out: IO[str],
    speed: float = 1.0,
    max_gap: float | None = None,
    sleep: Any = time.sleep,
) -> None:
    """Print events with their original spacing divided by `speed`."""
    first: float | None = None
    previous: float | None = None
    for event in events:
        ts = float(event["ts"])
        first = ts if first is None else first
        if previous is not None:
            gap = max(0.0, ts - previous) / speed
            sleep(min(gap, max_gap) if max_gap is not None else gap)
        previous = ts
        print(f"+{ts - first:9.2f}s  {describe(event)}", file=out, flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    rest = _rest(args)
    run_id = _run_id(rest, args.run)
    if args.format == "tensorboard":
        return export_tensorboard(rest, run_id, args.directory or args.output)
    if args.directory:
        raise ClientError(f"DIR is for --format tensorboard; write {args.format} with -o FILE")
    path = f"/api/runs/{run_id}/export?format={args.format}"
    if args.output:
        with open(args.output, "wb") as handle:
            written = rest.download(path, handle)
        print(f"wrote {written:,} bytes to {args.output}", file=sys.stderr)
    else:
        rest.download(path, sys.stdout.buffer)
        sys.stdout.flush()
    return 0


def export_tensorboard(rest: Rest, run_id: str, directory: str | None) -> int:
    """The run's scalars and previews as TensorBoard event files in `directory`, from the
    events read page by page (`backend.export.TensorBoardExport`)."""
    from backend.export import TensorBoardExport, tensorboard_files

    if not directory:
        raise ClientError(
            "--format tensorboard needs a folder: trainboard export RUN --format tensorboard DIR",
            "bad_request",
        )
    folder = Path(directory)
    if tensorboard_files(folder):
        raise ClientError(
            f"{folder} already holds TensorBoard event files: TensorBoard would show both; "
            "choose an empty folder (one per run, e.g. DIR/<run>) or remove them",
            "bad_request",
        )

    def read_preview(path: str) -> bytes | None:
        try:
            return rest.artifact(run_id, path)
        except ClientError:
            return None

    with TensorBoardExport(folder, run_id, read_preview) as board:
        for event in rest.iter_events(run_id):
            board.feed(Event(**event))
    counts = board.counts
    print(
        f"wrote {counts.scalar_events:,} scalar events and {counts.images:,} previews to "
        f"{folder} (open with: tensorboard --logdir {folder})",
        file=sys.stderr,
    )
    if counts.missing_previews:
        print(
            f"{len(counts.missing_previews)} preview(s) not found, first "
            f"{counts.missing_previews[0]}",
            file=sys.stderr,
        )
    return 0


# --- formatting ----------------------------------------------------------------------------


def describe(event: dict[str, Any]) -> str:
    """One line about an event, for people."""
    d, kind = event["data"], event["type"]
    text = {
        "created": lambda: f"'{d.get('name')}', {d.get('total_iterations')} iterations",
        "started": lambda: f"attempt {d.get('attempt')}",
        "resumed": lambda: f"attempt {d.get('attempt')} from {d.get('checkpoint') or 'scratch'}",
        "stop_requested": lambda: f"escalation after {d.get('deadline_s')}s",
        "stop_escalated": lambda: f"{d.get('signal')} after {d.get('after_s')}s",
        "trainer_ready": lambda: f"{d.get('device')}, {d.get('parameters'):,} parameters",
        "metric": lambda: f"iteration {d.get('iteration')} loss {_num(d.get('loss'))}",
        "progress": lambda: (
            f"{d.get('iteration')}/{d.get('total')} {_num(d.get('its_per_s'), 1)} it/s"
        ),
        "validation": lambda: (
            f"iteration {d.get('iteration')} val loss {_num(d.get('loss'))} "
            f"dice {_num(d.get('dice'), 3)} iou {_num(d.get('iou'), 3)}"
            + (" (best)" if d.get("best") else "")
        ),
        "checkpoint": lambda: f"iteration {d.get('iteration')} -> {d.get('path')}",
        "log": lambda: f"[{d.get('level', 'info')}] {d.get('message')}",
        "completed": lambda: f"at iteration {d.get('iteration')}",
        "failed": lambda: (
            f"{d.get('message')}"
            + (f" (exit code {d['exit_code']})" if d.get("exit_code") is not None else "")
        ),
        "stopped": lambda: (
            f"at iteration {d.get('iteration')}, checkpoint {d.get('checkpoint') or 'none'}"
        ),
    }.get(kind)
    try:
        detail = text() if text else ""
    except (TypeError, ValueError):
        detail = ""
    return f"{kind:<14} {detail}".rstrip()


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
