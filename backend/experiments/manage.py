"""Managing runs: rename, tag, notes, archive, unarchive and delete, each an event.

A command is checked here first (its fields and limits; a 400 that says what to do), then
appended through `RunService.command`, so the state machine decides whether it is legal
(a delete while Training or queued is not; after a delete nothing is) and the event joins
the run's own stream. `backend.commands.Commands` applies each at most once per id.

What depends on the run as it is now is worked out under the run's lock, once the command
is known legal (`RunService.prepared_command`): a tag command's new set (two tag
commands never lose each other's tags) and a delete's file removal (no start can slip in
while files go).

A delete touches files only with `remove_files: true`, and then only what is provably the
run's own (`remove_own_files`): its log folder `<output_path>/log/<run_id>`, and the
checkpoints its own events name inside its output folder when that folder's marker
(`backend.outputs`) names this run, then the marker and the emptied folders. Paths are
resolved first: nothing outside the data root, no symlink, no file another run's events
name too, no folder holding another run's folders. The `deleted` event lists what was
removed (`removed`) and what was kept, with why (`kept`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from backend import events as ev
from backend.errors import ApiError
from backend.events import Event
from backend.fsm.machine import IllegalCommand, State
from backend.outputs import MARKER, read_marker
from backend.projections import RunSummary
from backend.runs import RunService
from backend.runspec import InvalidRequest, check_fields

NAME_MAX = 200
TAG_MAX = 64
TAGS_MAX = 100  # per run
NOTES_MAX_BYTES = 64 * 1024
TAG_PATTERN = re.compile(rf"[A-Za-z0-9_.:/-]{{1,{TAG_MAX}}}")
TAG_RULE = f"1 to {TAG_MAX} characters of letters, digits and _ . : / -"

# The fields of each command's request (REST body, WebSocket `data`), `id` aside.
FIELDS: dict[str, tuple[str, ...]] = {
    "rename": ("name",),
    "tag": ("add", "remove", "tags"),
    "notes": ("notes",),
    "archive": (),
    "unarchive": (),
    "delete": ("remove_files",),
}
COMMANDS = tuple(FIELDS)
assert set(COMMANDS) == set(ev.MANAGE_COMMANDS), "events.MANAGE_COMMANDS and FIELDS differ"


def deleted_run(run_id: str) -> ApiError:
    """The answer to any command on a deleted run."""
    return ApiError(
        410,
        "deleted",
        f"run '{run_id}' is deleted: nothing can change it any more; its events stay "
        f"readable (GET /api/runs/{run_id}/events)",
        {"run_id": run_id},
    )


# --- checking requests ---------------------------------------------------------------------


def check_request(command: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The command's data, checked: InvalidRequest (HTTP 400) names what to send instead."""
    check_fields(data, FIELDS[command], f"a {command} request")
    if command == "rename":
        return {"name": check_name(data.get("name"))}
    if command == "tag":
        return _tag_request(data)
    if command == "notes":
        return {"notes": check_notes(data.get("notes"))}
    if command == "delete":
        remove_files = data.get("remove_files", False)
        if not isinstance(remove_files, bool):
            raise InvalidRequest("'remove_files' must be true or false (false: keep every file)")
        return {"remove_files": remove_files}
    return {}


def check_name(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'name' (a string of 1 to {NAME_MAX} characters) is required")
    name = value.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidRequest(
            f"a name is 1 to {NAME_MAX} characters, not blank; this one has {len(name)}"
        )
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise InvalidRequest("a name is one line: remove its control characters (newlines, tabs)")
    return name


def check_tags(value: Any, key: str = "tags") -> list[str]:
    """A list of valid tags (also what a create's `tags` must be)."""
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InvalidRequest(f"'{key}' must be a list of tags (strings of {TAG_RULE})", field=key)
    for tag in value:
        if not TAG_PATTERN.fullmatch(tag):
            shown = tag if len(tag) <= 80 else tag[:79] + "…"
            raise InvalidRequest(
                f"the tag '{shown}' is not allowed: a tag is {TAG_RULE}", field=key
            )
    return list(value)


def _tag_request(data: Mapping[str, Any]) -> dict[str, list[str]]:
    if "tags" in data and ("add" in data or "remove" in data):
        raise InvalidRequest("send either 'tags' (the whole new set) or 'add' / 'remove', not both")
    if not data:
        raise InvalidRequest(
            "a tag request needs 'add' and/or 'remove' (lists of tags), or 'tags' (the new set)"
        )
    return {key: check_tags(data[key], key) for key in ("add", "remove", "tags") if key in data}


def new_tags(current: Iterable[str], request: Mapping[str, list[str]]) -> list[str]:
    """The run's whole new tag set, sorted."""
    if "tags" in request:
        tags = set(request["tags"])
    else:
        tags = (set(current) | set(request.get("add", []))) - set(request.get("remove", []))
    if len(tags) > TAGS_MAX:
        raise InvalidRequest(f"a run has at most {TAGS_MAX} tags; this would give it {len(tags)}")
    return sorted(tags)


def check_notes(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest("'notes' (Markdown text; an empty string clears them) is required")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > NOTES_MAX_BYTES:
        raise InvalidRequest(
            f"notes are at most {NOTES_MAX_BYTES:,} bytes of UTF-8 (64 KiB); these are "
            f"{size:,}: shorten them, or link to a longer document"
        )
    return value


# --- the application -----------------------------------------------------------------------


class Manager:
    """Applies management commands to runs, through the service's one path."""

    def __init__(self, service: RunService, data_root: Path | None) -> None:
        self.service = service
        # Files are only ever removed inside it; without one (no server), none are.
        self.data_root = data_root

    async def run(
        self, command: str, run_id: str, data: Mapping[str, Any], command_id: str | None
    ) -> Event:
        """The stored event; InvalidRequest, IllegalCommand, UnknownRun or ApiError."""
        summary = self.service.get(run_id)
        request = check_request(command, data)
        if command == "delete" and summary.state is State.TRAINING:
            raise IllegalCommand(
                run_id,
                command,
                State.TRAINING,
                summary.run.legal_commands(),
                "a training run cannot be deleted: stop it first",
            )
        base = {} if command_id is None else {"command_id": command_id}
        if command == "tag":
            return await self.service.prepared_command(
                run_id, command, base, lambda s: _tags_data(s, request)
            )
        if command == "delete" and request["remove_files"]:
            if self.data_root is None:
                raise ApiError(
                    409,
                    "no_data_root",
                    "this server has no data root, so no file is provably the run's: "
                    "delete without remove_files",
                )
            return await self.service.prepared_command(
                run_id, command, {**request, **base}, self._remove_files
            )
        if command == "delete":
            request["removed"] = []
        return await self.service.command(run_id, command, {**request, **base})

    async def _remove_files(self, summary: RunSummary) -> dict[str, Any]:
        """Remove the run's own files (the caller holds its lock); what went and stayed."""
        assert self.data_root is not None
        files = RunFiles.of(summary)
        others = [RunFiles.of(s) for rid, s in self.service.runs.items() if rid != files.run_id]
        root = self.data_root
        outcome = await anyio.to_thread.run_sync(lambda: remove_own_files(files, root, others))
        return {"removed": outcome.removed, "kept": outcome.kept}


async def _tags_data(summary: RunSummary, request: Mapping[str, list[str]]) -> dict[str, Any]:
    return {"tags": new_tags(summary.tags, request)}


# --- removing a run's own files ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFiles:
    """The paths a run's events name (read on the event loop, used in a worker thread)."""

    run_id: str
    output_path: str | None
    log_path: str | None
    checkpoints: tuple[str, ...]

    @classmethod
    def of(cls, summary: RunSummary) -> RunFiles:
        named = [*summary.checkpoints, summary.last_checkpoint]
        checkpoints = tuple(dict.fromkeys(p for p in named if p))
        return cls(summary.run.run_id, summary.output_path, summary.log_path, checkpoints)


@dataclass
class Removal:
    removed: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)

    def keep(self, path: str, reason: str) -> None:
        self.kept.append({"path": path, "reason": reason})


def remove_own_files(run: RunFiles, root: Path, others: Iterable[RunFiles]) -> Removal:
    """Remove what is provably `run`'s own under `root` (module docstring); blocking."""
    removal = Removal()
    jail = os.path.realpath(root)
    others = list(others)
    if run.output_path:
        _remove_checkpoints(run, jail, others, removal)
    if run.log_path:
        folders = {os.path.realpath(p) for o in others for p in (o.output_path, o.log_path) if p}
        _remove_log_folder(run, jail, folders, removal)
    if run.output_path and not removal.kept:
        _remove_marker_and_empty_folders(run, jail, removal)
    return removal


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _remove_checkpoints(run: RunFiles, jail: str, others: list[RunFiles], removal: Removal) -> None:
    assert run.output_path is not None
    output = os.path.realpath(run.output_path)
    marker = read_marker(output)
    if run.checkpoints and (marker is None or marker.get("run_id") != run.run_id):
        whose = "no marker" if marker is None else f"its marker names run {marker.get('run_id')}"
        removal.keep(run.output_path, f"checkpoints kept: the output folder has {whose}")
        return
    names = {os.path.basename(p) for p in run.checkpoints}
    # Checkpoint names repeat from run to run: a file another run's events name too stays.
    shared = {
        os.path.realpath(p) for o in others for p in o.checkpoints if os.path.basename(p) in names
    }
    logs = {os.path.realpath(o.log_path) for o in others if o.log_path}
    for path in run.checkpoints:
        real = os.path.realpath(path)
        if not os.path.lexists(path):
            continue
        reason = _refusal(path, real, jail)
        if reason is None and not _inside(real, output):
            reason = "not inside the run's output folder"
        elif reason is None and real in shared:
            reason = "another run's events name this file too"
        elif reason is None and any(_inside(real, log) for log in logs):
            reason = "inside another run's log folder"
        if reason is not None:
            removal.keep(path, reason)
            continue
        _unlink(path, real, removal)


def _remove_log_folder(run: RunFiles, jail: str, foreign: set[str], removal: Removal) -> None:
    assert run.log_path is not None
    if not os.path.lexists(run.log_path):
        return
    real = os.path.realpath(run.log_path)
    default = os.path.join(run.output_path or "", "log", run.run_id)
    reason = _refusal(run.log_path, real, jail, folder=True)
    if reason is None and (not run.output_path or real != os.path.realpath(default)):
        reason = f"not the run's own log folder (<output_path>/log/{run.run_id})"
    elif reason is None and any(_inside(f, real) for f in foreign):
        reason = "it holds another run's folder"
    if reason is not None:
        removal.keep(run.log_path, reason)
        return
    failures: list[str] = []
    shutil.rmtree(real, onerror=lambda _f, p, exc: failures.append(f"{p}: {exc[1]}"))
    if failures:
        removal.keep(run.log_path, f"partly removed; {len(failures)} failed, first {failures[0]}")
    else:
        removal.removed.append(run.log_path)


def _remove_marker_and_empty_folders(run: RunFiles, jail: str, removal: Removal) -> None:
    """The marker naming this run, then `log/` and the output folder if nothing is left."""
    assert run.output_path is not None
    output = os.path.realpath(run.output_path)
    if output == jail or not _inside(output, jail):
        return  # the data root itself is never removed
    if (read_marker(output) or {}).get("run_id") != run.run_id:
        return
    _unlink(os.path.join(run.output_path, MARKER), os.path.join(output, MARKER), removal)
    for folder, shown in (
        (os.path.join(output, "log"), os.path.join(run.output_path, "log")),
        (output, run.output_path),
    ):
        try:
            os.rmdir(folder)  # only if empty: never another run's files
        except OSError:
            continue
        removal.removed.append(shown)


def _refusal(path: str, real: str, jail: str, *, folder: bool = False) -> str | None:
    """Why `path` may not be removed at all, or None."""
    if not _inside(real, jail) or real == jail:
        return "outside the data root"
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if folder and not stat.S_ISDIR(mode):
        return "not a folder"
    if not folder and not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _unlink(path: str, real: str, removal: Removal) -> None:
    try:
        os.unlink(real)
    except FileNotFoundError:
        return
    except OSError as exc:
        removal.keep(path, f"could not be removed: {exc.strerror}")
        return
    removal.removed.append(path)
