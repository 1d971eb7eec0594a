"""Client commands (create, start, stop, resume), the same whether REST or WebSocket asks.

A command may carry a client-chosen id. The answer to each id is remembered (the last
`remember` ids, across connections), so a client that lost its connection before the
answer came can send the same command again and get the first answer: nothing is
applied twice. A repeat that arrives while the first is still running waits for it.
A create's id also fixes the new run's id (`run_id_for`), so a create repeated after a
server restart finds its run instead of making a second one; a repeated start, stop or
resume after a restart is refused by the state machine (409) rather than applied twice.

A command, once received, runs to its end even if the client goes away meanwhile: half a
start (the event stored, the child not yet spawned) must never be left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from backend import errors
from backend.errors import ApiError
from backend.events import Event
from backend.fsm.machine import IllegalCommand
from backend.runs import RunService, UnknownRun, new_run_id
from backend.runspec import InvalidConfig, InvalidRequest, created_data
from backend.supervisor import Busy, Supervisor

log = logging.getLogger(__name__)

COMMANDS = ("create", "start", "stop", "resume")
MAX_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's answer: the HTTP status and the JSON body (a run and event, or an error)."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status < 400


class Commands:
    """Runs commands through the supervisor (or the runspec, for create), once per id."""

    def __init__(
        self,
        service: RunService,
        supervisor: Supervisor,
        *,
        remember: int = 4096,
        check_paths: bool = True,
        base_dir: Path | None = None,
    ) -> None:
        self.service = service
        self.supervisor = supervisor
        self.remember = remember
        self.check_paths = check_paths
        # Relative paths in a config are relative to the data root, as the file browser's.
        self.base_dir = base_dir
        self._answers: OrderedDict[str, tuple[str, str | None, asyncio.Task[Outcome]]] = (
            OrderedDict()
        )
        self._running: set[asyncio.Task[Outcome]] = set()

    async def run(
        self,
        command: str,
        run_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        command_id: str | None = None,
    ) -> Outcome:
        """Apply a command, or answer a repeated id from its first answer."""
        remembered = None if command_id is None else self._answers.get(command_id)
        if command_id is not None and remembered is not None:
            first_command, first_run, answer = remembered
            if (first_command, first_run) != (command, run_id):
                return _refused(
                    ApiError(
                        409,
                        "id_reused",
                        f"command id '{command_id}' was already used for '{first_command}'; "
                        "choose a fresh id (a UUID) for every new command",
                    )
                )
            self._answers.move_to_end(command_id)
            return await asyncio.shield(answer)
        task = asyncio.create_task(self._settle(command, run_id, data or {}, command_id))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        if command_id is not None:
            self._answers[command_id] = (command, run_id, task)
            while len(self._answers) > self.remember:
                self._answers.popitem(last=False)
        return await asyncio.shield(task)

    async def _settle(
        self, command: str, run_id: str | None, data: Mapping[str, Any], command_id: str | None
    ) -> Outcome:
        try:
            outcome = await self._execute(command, run_id, data, command_id)
        except Exception as exc:
            log.exception("command %s of run %s failed", command, run_id)
            message = f"the server failed ({type(exc).__name__}: {exc}); see its log"
            outcome = _refused(ApiError(500, "internal", message))
        if outcome.status >= 500 and command_id is not None:
            self._answers.pop(command_id, None)  # not applied: a retry may try again
        return outcome

    async def _execute(
        self, command: str, run_id: str | None, data: Mapping[str, Any], command_id: str | None
    ) -> Outcome:
        try:
            if command == "create":
                event = await self._create(data, command_id)
                status = 201
            elif command in COMMANDS:
                if not run_id:
                    raise errors.bad_request(f"'{command}' needs a run_id")
                self.service.get(run_id)  # UnknownRun before anything else
                event = await getattr(self.supervisor, command)(run_id)
                status = 200
            else:
                raise errors.bad_request(
                    f"unknown command '{command}'; use one of {', '.join(COMMANDS)}"
                )
        except ApiError as exc:
            return _refused(exc)
        except IllegalCommand as exc:
            return _refused(errors.illegal(exc))
        except UnknownRun as exc:
            return _refused(errors.unknown_run(exc))
        except Busy as exc:
            return _refused(
                ApiError(
                    409,
                    "busy",
                    str(exc),
                    {
                        "training_run": exc.training_run_id,
                        "max_concurrent": exc.max_concurrent,
                    },
                )
            )
        except InvalidRequest as exc:
            return _refused(errors.bad_request(str(exc)))
        except InvalidConfig as exc:
            return _refused(ApiError(422, "invalid_config", str(exc), {"problems": exc.to_json()}))
        summary = self.service.get(event.run_id)
        return Outcome(status, {"run": summary.to_json(), "event": event.to_json()})

    async def _create(self, data: Mapping[str, Any], command_id: str | None) -> Event:
        run_id = new_run_id() if command_id is None else run_id_for(command_id)
        if run_id in self.service.runs:
            # A create repeated after the server forgot its answers (a restart): the run
            # its id made is the first answer.
            [first] = await self.service.store.read_run(run_id, limit=1)
            return first
        # Validation reads volume headers: keep the event loop free meanwhile.
        created = await anyio.to_thread.run_sync(
            lambda: created_data(data, run_id, check_paths=self.check_paths, base_dir=self.base_dir)
        )
        return await self.service.create(created, run_id)


def run_id_for(command_id: str) -> str:
    """The run a create command with this id makes: the same id always names the same run,
    so a repeated create is recognised even after a restart emptied the answer cache."""
    return hashlib.blake2b(command_id.encode(), digest_size=6).hexdigest()


def _refused(exc: ApiError) -> Outcome:
    return Outcome(exc.status, {"error": exc.to_json()})


def check_id(value: Any) -> str | None:
    """A command id from a request, validated: a short string, or absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise errors.bad_request(f"a command 'id' must be a string of 1 to {MAX_ID_LENGTH} chars")
    return value
