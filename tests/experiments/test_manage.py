"""Managing runs (backend/experiments/manage.py) against a real server and real files.

Every command over REST (and one over the WebSocket), archived and deleted runs hidden
from the list, at most once per id across a restart, replay giving the summary the live
server keeps, and deletes with and without files: only the run's provable own files go.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from backend import outputs
from backend.cli import main
from backend.events import Event, NewEvent
from backend.projections import summarize
from backend.runs import new_run_id
from tests.server.live import TOKEN, LiveServer, make_settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path_factory.mktemp("manage"))).start()
    yield live
    live.stop()


def post(server: LiveServer, run_id: str, command: str, body: Any = None) -> tuple[int, Any]:
    status, answer, _ = server.request("POST", f"/api/runs/{run_id}/{command}", body or {})
    return status, answer


def listed(server: LiveServer, query: str = "") -> list[str]:
    return [r["run_id"] for r in server.request("GET", f"/api/runs{query}")[1]["runs"]]


def ended_run(server: LiveServer, name: str, kind: str = "completed") -> str:
    run_id = server.synthetic_run(name)
    server.record(run_id, [(kind, {"iteration": 3})])
    return run_id


# --- every command ------------------------------------------------------------------------


def test_rename_tag_notes_archive_unarchive_over_rest(server: LiveServer) -> None:
    run_id = server.synthetic_run("first name")  # Training: management is legal there too
    status, answer = post(server, run_id, "rename", {"name": "  better name  "})
    assert status == 200 and answer["event"]["type"] == "renamed"
    assert answer["run"]["name"] == "better name" and answer["run"]["state"] == "Training"
    status, answer = post(server, run_id, "tag", {"add": ["lr:0.01", "baseline", "unet/2d"]})
    assert status == 200 and answer["event"]["data"]["tags"] == ["baseline", "lr:0.01", "unet/2d"]
    status, answer = post(server, run_id, "tag", {"add": ["done"], "remove": ["baseline"]})
    assert answer["run"]["tags"] == ["done", "lr:0.01", "unet/2d"]
    status, answer = post(server, run_id, "tag", {"tags": ["only"]})
    assert answer["run"]["tags"] == ["only"]
    notes = "# Idea\n\nTry a *lower* rate. ünïcode ✓\n"
    status, answer = post(server, run_id, "notes", {"notes": notes})
    assert status == 200 and answer["run"]["notes"] == notes
    assert run_id in listed(server)
    status, answer = post(server, run_id, "archive")
    assert status == 200 and answer["run"]["archived"] is True
    assert run_id not in listed(server) and run_id in listed(server, "?archived=1")
    status, answer = post(server, run_id, "unarchive")
    assert answer["run"]["archived"] is False and run_id in listed(server)
    types = [e["type"] for e in server.request("GET", f"/api/runs/{run_id}/events")[1]["events"]]
    assert types[2:] == [
        *("renamed", "tags_set", "tags_set", "tags_set", "notes_set"),
        *("archived", "unarchived"),
    ]
    assert answer["run"]["legal_commands"] == ["stop"]  # lifecycle commands only


def test_concurrent_tag_commands_keep_each_others_tags(server: LiveServer) -> None:
    run_id = ended_run(server, "tagged twice")

    async def both() -> None:
        manager = server.ctx.commands.manager
        await asyncio.gather(
            manager.run("tag", run_id, {"add": ["a"]}, None),
            manager.run("tag", run_id, {"add": ["b"]}, None),
        )

    server.call(both())
    assert server.ctx.service.get(run_id).tags == ["a", "b"]


def test_commands_over_the_websocket(server: LiveServer) -> None:
    run_id = ended_run(server, "ws managed")

    async def talk() -> list[dict[str, Any]]:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with websockets.connect(server.ws_url, additional_headers=auth) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            frames = [
                {"command": "rename", "data": {"name": "renamed by ws"}},
                {"command": "tag", "data": {"add": ["bad tag"]}},
                {"command": "archive"},
            ]
            results = []
            for n, frame in enumerate(frames):
                command_id = f"ws-{run_id}-{n}"
                await ws.send(
                    json.dumps({"type": "command", "id": command_id, "run_id": run_id, **frame})
                )
                while (answer := json.loads(await ws.recv()))["type"] != "result":
                    pass
                results.append(answer)
            return results

    renamed, refused, archived = asyncio.run(talk())
    assert renamed["ok"] and renamed["run"]["name"] == "renamed by ws"
    assert not refused["ok"] and refused["error"]["code"] == "bad_request"
    assert (
        "bad tag" in refused["error"]["message"]
        and "letters, digits" in refused["error"]["message"]
    )
    assert archived["ok"] and archived["run"]["archived"] is True


# --- refusals -------------------------------------------------------------------------------


def test_delete_is_refused_while_training_and_while_queued(server: LiveServer) -> None:
    training = server.synthetic_run("training, not deletable")
    before = server.ctx.store.last_seq
    status, answer = post(server, training, "delete", {"remove_files": True})
    assert status == 409 and answer["error"]["code"] == "illegal_command"
    assert "stop it first" in answer["error"]["message"]

    async def queued_run() -> str:
        event = await server.ctx.service.create({"name": "queued", "total_iterations": 5})
        await server.ctx.service.record(event.run_id, [NewEvent("queued", {"rank": 1.0})])
        return event.run_id

    queued = server.call(queued_run())
    before = server.ctx.store.last_seq
    status, answer = post(server, queued, "delete")
    assert status == 409 and "dequeue" in answer["error"]["message"]
    assert server.ctx.store.last_seq == before


# --- deleting -------------------------------------------------------------------------------


@dataclass
class Folders:
    """A run with an output folder (marker, checkpoints) and a log folder on disk."""

    run_id: str
    output: Path
    log: Path


def run_with_files(
    server: LiveServer, name: str, checkpoints: list[str], *, marker: bool = True
) -> Folders:
    """A run whose events name `checkpoints` (paths relative to its output folder, or
    absolute), ended Stopped; the files themselves are the test's to make."""
    root = server.settings.data_root
    run_id = new_run_id()
    output = root / "out" / name
    log = output / "log" / run_id
    log.mkdir(parents=True)
    (log / "train.log").write_text("hello")
    if marker:
        outputs.claim(str(output), run_id, name)
    paths = [p if os.path.isabs(p) else str(output / p) for p in checkpoints]

    async def make() -> None:
        service = server.ctx.service
        data = {"name": name, "output_path": str(output), "log_path": str(log)}
        await service.create({**data, "total_iterations": 10}, run_id)
        await service.command(run_id, "start", {"attempt": 1})
        checkpoint_events = [
            NewEvent("checkpoint", {"iteration": i, "path": p}) for i, p in enumerate(paths)
        ]
        await service.record(run_id, checkpoint_events)
        await service.record(run_id, [NewEvent("stopped", {"iteration": len(paths)})])

    server.call(make())
    return Folders(run_id, output, log)


def every_file(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_delete_without_files_touches_nothing_and_leaves_a_tombstone(
    server: LiveServer,
) -> None:
    run = run_with_files(server, "kept-files", ["checkpoint_00001.pth.tar"])
    (run.output / "checkpoint_00001.pth.tar").write_bytes(b"weights")
    before = every_file(server.settings.data_root)
    status, answer = post(server, run.run_id, "delete", {"id": f"del-{run.run_id}"})
    assert status == 200 and answer["event"]["type"] == "deleted"
    assert answer["event"]["data"] == {
        "remove_files": False,
        "removed": [],
        "command_id": f"del-{run.run_id}",
    }
    assert every_file(server.settings.data_root) == before
    # The tombstone: still answered, hidden from the list, changed by nothing.
    status, shown, _ = server.request("GET", f"/api/runs/{run.run_id}")
    assert status == 200 and shown["run"]["deleted"] is True
    assert shown["run"]["legal_commands"] == []
    assert run.run_id not in listed(server) and run.run_id in listed(server, "?deleted=1")
    last = server.ctx.store.last_seq
    for command, body in [("rename", {"name": "x"}), ("resume", {}), ("delete", {})]:
        status, refused = post(server, run.run_id, command, body)
        assert status == 410 and refused["error"]["code"] == "deleted", command
        assert "events stay" in refused["error"]["message"]
    assert server.ctx.store.last_seq == last
    # Not even a fact legal while Stopped (a `log`) is taken any more.
    assert server.record(run.run_id, [("log", {"level": "info", "message": "late"})]) == []
    # A repeated delete id is answered from its event, not refused.
    status, again = post(server, run.run_id, "delete", {"id": f"del-{run.run_id}"})
    assert status == 200 and again["event"]["seq"] == answer["event"]["seq"]
    # Its events stay: replay and export still have them all.
    events = server.request("GET", f"/api/runs/{run.run_id}/events")[1]["events"]
    assert [e["type"] for e in events][-2:] == ["stopped", "deleted"]
    status, jsonl, _ = server.request("GET", f"/api/runs/{run.run_id}/export?format=jsonl")
    assert status == 200 and len(jsonl.splitlines()) == len(events)


def test_delete_with_files_removes_only_what_is_provably_the_runs_own(
    server: LiveServer, tmp_path: Path
) -> None:
    root = server.settings.data_root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not the run's")
    (outside / "elsewhere.pth.tar").write_bytes(b"outside")
    other = run_with_files(server, "other", ["checkpoint_00010.pth.tar"])
    (other.output / "checkpoint_00010.pth.tar").write_bytes(b"other's")
    run = run_with_files(
        server,
        "doomed",
        [
            "checkpoint_00010.pth.tar",
            "checkpoint_best.pth.tar",
            "checkpoint_00020.pth.tar",  # named by a second run's events too
            "checkpoint_alias.pth.tar",  # a symlink to the other run's checkpoint
            "checkpoint_link.pth.tar",  # a symlink out of the data root
            str(outside / "elsewhere.pth.tar"),  # outside the data root
            "checkpoint_gone.pth.tar",  # named, never written (or already removed)
        ],
    )
    for name in ("checkpoint_00010.pth.tar", "checkpoint_best.pth.tar", "checkpoint_00020.pth.tar"):
        (run.output / name).write_bytes(b"mine")
    (run.output / "checkpoint_alias.pth.tar").symlink_to(other.output / "checkpoint_00010.pth.tar")
    (run.output / "checkpoint_link.pth.tar").symlink_to(outside / "secret.txt")
    (run.output / "notes.txt").write_text("a file no event names")
    (run.log / "leak").symlink_to(outside / "secret.txt")  # rmtree must not follow it
    sharer = run_with_files(
        server, "doomed-sharer", [str(run.output / "checkpoint_00020.pth.tar")], marker=False
    )
    status, answer = post(server, run.run_id, "delete", {"remove_files": True})
    assert status == 200, answer
    data = answer["event"]["data"]
    out = str(run.output)
    assert data["remove_files"] is True
    assert data["removed"] == [
        f"{out}/checkpoint_00010.pth.tar",
        f"{out}/checkpoint_best.pth.tar",
        str(run.log),
    ]
    assert {k["path"]: k["reason"] for k in data["kept"]} == {
        f"{out}/checkpoint_00020.pth.tar": "another run's events name this file too",
        f"{out}/checkpoint_alias.pth.tar": "a symbolic link",
        f"{out}/checkpoint_link.pth.tar": "outside the data root",
        str(outside / "elsewhere.pth.tar"): "outside the data root",
    }
    assert not run.log.exists() and not (run.output / "checkpoint_best.pth.tar").exists()
    assert (outside / "secret.txt").read_text() == "not the run's"
    assert (outside / "elsewhere.pth.tar").read_bytes() == b"outside"
    assert (other.output / "checkpoint_00010.pth.tar").read_bytes() == b"other's"
    assert (run.output / "checkpoint_00020.pth.tar").read_bytes() == b"mine"
    assert (run.output / "notes.txt").exists() and (run.output / outputs.MARKER).exists()
    assert other.log.exists() and sharer.log.exists()
    assert (root / "out" / "doomed-sharer").exists()


def test_delete_with_files_frees_the_output_folder(server: LiveServer) -> None:
    run = run_with_files(server, "freed", ["checkpoint_00005.pth.tar"])
    (run.output / "checkpoint_00005.pth.tar").write_bytes(b"w")
    status, answer = post(server, run.run_id, "delete", {"remove_files": True})
    out = str(run.output)
    assert status == 200 and answer["event"]["data"]["kept"] == []
    assert answer["event"]["data"]["removed"] == [
        f"{out}/checkpoint_00005.pth.tar",
        str(run.log),
        f"{out}/{outputs.MARKER}",
        f"{out}/log",
        out,
    ]
    assert not run.output.exists()
    live = {rid: s for rid, s in server.ctx.service.runs.items() if not s.deleted}
    assert outputs.owner_of(out, None, live) is None  # a new run may use the folder


def test_delete_with_files_keeps_checkpoints_of_a_folder_marked_for_another_run(
    server: LiveServer,
) -> None:
    run = run_with_files(server, "remarked", ["checkpoint_00001.pth.tar"])
    (run.output / "checkpoint_00001.pth.tar").write_bytes(b"w")
    outputs.claim(str(run.output), "someoneelse", "a later run")
    status, answer = post(server, run.run_id, "delete", {"remove_files": True})
    assert status == 200
    assert answer["event"]["data"]["removed"] == [str(run.log)]
    [kept] = answer["event"]["data"]["kept"]
    assert kept["path"] == str(run.output) and "someoneelse" in kept["reason"]
    assert (run.output / "checkpoint_00001.pth.tar").exists()


# --- at most once, across a restart; replay -----------------------------------------------


def test_at_most_once_across_a_restart_and_replay_gives_the_same_summary(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    first = LiveServer(settings).start()
    try:
        run_id = ended_run(first, "before restart", "stopped")
        commands = [
            ("rename", {"name": "kept name", "id": "m-rename"}),
            ("tag", {"add": ["x", "y"], "id": "m-tag"}),
            ("notes", {"notes": "first notes", "id": "m-notes"}),
            ("archive", {"id": "m-archive"}),
        ]
        answers = [post(first, run_id, c, b) for c, b in commands]
        assert [s for s, _ in answers] == [200] * 4
        post(first, run_id, "tag", {"remove": ["x"]})
        lived = first.ctx.service.get(run_id).to_json()
    finally:
        first.stop()
    second = LiveServer(settings).start()
    try:
        last = second.ctx.store.last_seq
        for (command, body), (_, answer) in zip(commands, answers, strict=True):
            repeated = {**body, **({"name": "other"} if command == "rename" else {})}
            if command == "tag":
                repeated = {"add": ["z"], "id": body["id"]}
            status, again = post(second, run_id, command, repeated)
            assert status == 200 and again["event"] == answer["event"], command
        assert second.ctx.store.last_seq == last  # nothing appended twice
        summary = second.ctx.service.get(run_id)
        assert summary.name == "kept name" and summary.tags == ["y"] and summary.archived
        assert summary.to_json() == lived

        async def everything() -> list[Event]:
            return await second.ctx.store.read_run(run_id, 0, limit=10_000)

        replayed = summarize(second.call(everything()), run_id)
        assert replayed.to_json() == lived
        assert replayed.to_state() == summary.to_state()
    finally:
        second.stop()


def test_notes_over_64_kib_are_refused(server: LiveServer) -> None:
    run_id = ended_run(server, "long notes")
    before = server.ctx.store.last_seq
    status, answer = post(server, run_id, "notes", {"notes": "é" * (32 * 1024 + 1)})
    assert status == 400 and "64 KiB" in answer["error"]["message"]
    assert "65,538" in answer["error"]["message"]  # what it was, in bytes of UTF-8
    assert server.ctx.store.last_seq == before
    status, answer = post(server, run_id, "notes", {"notes": "é" * (32 * 1024)})
    assert status == 200 and len(answer["run"]["notes"]) == 32 * 1024


# --- the command line -----------------------------------------------------------------------


def cli(server: LiveServer, *args: str) -> int:
    return main([*args[:1], "--url", server.url, "--token", TOKEN, *args[1:]])


def test_the_cli_manages_runs(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_with_files(server, "cli-managed", [])
    prefix = run.run_id[:8]
    assert cli(server, "rename", prefix, "from the terminal") == 0
    assert cli(server, "tag", prefix, "--add", "cli", "--add", "lr:0.1") == 0
    assert cli(server, "tag", prefix, "--remove", "lr:0.1") == 0
    notes = tmp_path / "notes.md"
    notes.write_text("# Run\n\nLooks good.\n")
    assert cli(server, "notes", prefix, str(notes)) == 0
    out = capsys.readouterr().out
    assert "'from the terminal'" in out and "cli, lr:0.1" in out
    assert cli(server, "archive", prefix) == 0
    capsys.readouterr()
    assert cli(server, "runs") == 0
    assert run.run_id not in capsys.readouterr().out
    assert cli(server, "runs", "--archived") == 0
    listing = capsys.readouterr().out
    assert run.run_id in listing and "(archived)" in listing and "cli" in listing
    assert cli(server, "show", prefix) == 0  # an archived run is still found by its prefix
    shown = capsys.readouterr().out
    assert "Looks good." not in shown and "# Run" in shown and "archived" in shown
    assert cli(server, "unarchive", prefix) == 0
    assert cli(server, "tag", prefix) == 1
    assert "--add" in capsys.readouterr().err
    assert cli(server, "delete", prefix, "--remove-files") == 0
    out = capsys.readouterr().out
    assert f"removed {run.log}" in out and not run.log.exists()
    assert cli(server, "rename", prefix, "too late") == 1
    assert "is deleted" in capsys.readouterr().err
    summary = server.ctx.service.get(run.run_id)
    assert (summary.name, summary.tags, summary.notes) == (
        "from the terminal",
        ["cli"],
        notes.read_text(),
    )


def test_a_foreign_log_folds_without_a_crash() -> None:
    """Management data nothing here would write (no list, no strings) folds leniently."""
    data: list[tuple[str, dict[str, Any]]] = [
        ("created", {"name": "n", "tags": [3, "b", "a", "b"]}),
        ("renamed", {"name": 5}),
        ("notes_set", {"notes": None}),
        ("archived", {}),
    ]
    events = [Event(v, "run", v, kind, 0.0, d) for v, (kind, d) in enumerate(data, 1)]
    summary = summarize(events[:1], "run")
    assert summary.tags == ["a", "b"]
    summary = summarize([*events, Event(5, "run", 5, "tags_set", 0.0, {"tags": "zz"})], "run")
    assert (summary.name, summary.tags, summary.notes, summary.archived) == ("n", [], "", True)
    assert summary.run.problems == []
