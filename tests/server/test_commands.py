"""Command ids: a repeated command is answered from its first answer, even after a restart;
create refuses another run's output folder and unknown fields."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backend.commands import Commands, run_id_for
from backend.execution.supervisor import Supervisor
from backend.runs import RunService
from backend.store import EventStore
from tests.server.live import tiny_yaml

pytestmark = pytest.mark.anyio


class Server:
    """The command runner over a real store, reopened on `restart` (answers forgotten)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store: EventStore | None = None
        self.commands: Commands | None = None

    async def restart(self) -> Commands:
        if self.store is not None:
            await self.store.close()
        self.store = await EventStore.open(self.path)
        service = RunService(self.store)
        await service.load()
        self.commands = Commands(service, Supervisor(service, job_options={"threads": 1}))
        return self.commands

    @property
    def last_seq(self) -> int:
        assert self.store is not None
        return self.store.last_seq


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = Server(tmp_path / "events.db")
    await running.restart()
    yield running
    if running.store is not None:
        await running.store.close()


def create(tmp_path: Path, folder: str, **extra: Any) -> dict[str, Any]:
    return {"config": tiny_yaml(tmp_path, folder), **extra}


async def test_a_create_repeated_after_a_restart_finds_its_run(
    server: Server, tmp_path: Path
) -> None:
    request = create(tmp_path, "repeat", name="once")
    commands = await server.restart()
    first = await commands.run("create", data=request, command_id="create-42")
    assert first.status == 201 and first.body["run"]["run_id"] == run_id_for("create-42")
    assert first.body["event"]["data"]["command_id"] == "create-42"

    restarted = await server.restart()  # an empty answer cache
    again = await restarted.run("create", data=request, command_id="create-42")
    assert (again.status, again.body["event"]) == (201, first.body["event"])
    assert list(restarted.service.runs) == [run_id_for("create-42")]
    assert server.last_seq == 1  # nothing appended by the repeat
    other = await restarted.run("create", data=create(tmp_path, "other"), command_id="create-43")
    assert other.body["run"]["run_id"] != first.body["run"]["run_id"]


@pytest.mark.parametrize("command", ["start", "resume", "stop"])
async def test_an_id_used_for_another_command_is_refused_after_a_restart(
    server: Server, tmp_path: Path, command: str
) -> None:
    commands = await server.restart()
    made = await commands.run("create", data=create(tmp_path, "a"), command_id="id-1")
    run_id = made.body["run"]["run_id"]
    restarted = await server.restart()
    reused = await restarted.run(command, run_id, {}, "id-1")
    assert reused.status == 409 and reused.body["error"]["code"] == "id_reused"
    assert server.last_seq == 1


async def test_another_runs_output_folder_is_refused_with_a_free_one_proposed(
    server: Server, tmp_path: Path
) -> None:
    commands = await server.restart()
    first = await commands.run("create", data=create(tmp_path, "shared", name="first"))
    owner = first.body["run"]
    for _ in range(2):  # a restart forgets nothing: the store knows the owner
        refused = await commands.run("create", data=create(tmp_path, "shared"))
        assert refused.status == 409, refused.body
        error = refused.body["error"]
        assert error["code"] == "output_in_use" and "reuse" in error["message"]
        assert error["details"] == {
            "output_path": owner["output_path"],
            "owner": {"run_id": owner["run_id"], "name": "first"},
            "proposed": owner["output_path"] + "-2",
        }
        commands = await server.restart()
    assert server.last_seq == 1
    reused = await commands.run("create", data=create(tmp_path, "shared", reuse_output=True))
    assert reused.status == 201
    [warning] = [w for w in reused.body["event"]["data"]["warnings"] if "reused" in w["message"]]
    assert owner["run_id"] in warning["message"]


@pytest.mark.parametrize(
    ("extra", "field", "suggestion"),
    [
        ({"overide": ["SOLVER.BASE_LR", "0.1"]}, "overide", "overrides"),
        ({"reuse": True}, "reuse", "reuse_output"),
        ({"x": 1}, "x", None),
    ],
)
async def test_unknown_create_fields_are_refused_naming_the_nearest(
    server: Server, tmp_path: Path, extra: dict[str, Any], field: str, suggestion: str | None
) -> None:
    commands = await server.restart()
    refused = await commands.run("create", data=create(tmp_path, "typo", **extra))
    assert refused.status == 400
    assert refused.body["error"]["details"] == {"field": field, "suggestion": suggestion}
    assert f"'{field}'" in refused.body["error"]["message"]
    assert server.last_seq == 0
