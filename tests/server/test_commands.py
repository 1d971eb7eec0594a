"""Command ids: a repeated command is answered from its first answer, even after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.commands import Commands, run_id_for
from backend.runs import RunService
from backend.store import EventStore
from backend.supervisor import Supervisor
from tests.server.live import tiny_yaml

pytestmark = pytest.mark.anyio


async def commands_over(path: Path) -> tuple[EventStore, Commands]:
    store = await EventStore.open(path)
    service = RunService(store)
    await service.load()
    return store, Commands(service, Supervisor(service))


async def test_a_create_repeated_after_a_restart_finds_its_run(tmp_path: Path) -> None:
    request = {"config": tiny_yaml(tmp_path, "repeat"), "name": "once"}
    store, commands = await commands_over(tmp_path / "events.db")
    first = await commands.run("create", data=request, command_id="create-42")
    assert first.status == 201 and first.body["run"]["run_id"] == run_id_for("create-42")
    await store.close()

    store, restarted = await commands_over(tmp_path / "events.db")  # empty answer cache
    again = await restarted.run("create", data=request, command_id="create-42")
    assert again.status == 201
    assert again.body["event"] == first.body["event"]
    assert list(restarted.service.runs) == [run_id_for("create-42")]
    assert store.last_seq == 1  # nothing appended by the repeat
    other = await restarted.run("create", data=request, command_id="create-43")
    assert other.body["run"]["run_id"] != first.body["run"]["run_id"]
    await store.close()
