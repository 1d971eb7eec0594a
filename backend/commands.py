"""Client commands (create, start, stop, resume), the same whether REST or WebSocket asks.

A command may carry a client-chosen id, and is applied at most once per id, across
connections, restarts and crashes. The event a command appends records its id
(`data.command_id`), and every run's summary keeps the ids its log holds, so the answer
to an id that made an event is found again after a restart (the status, the run as it is
now, and that event) and never appended twice. Answers are also remembered in memory
(the last `remember` ids), refusals included; a repeat that arrives while the first is
still running waits for it. A create's id also fixes the new run's id (`run_id_for`).

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
from backend import events as ev
from backend.errors import ApiError
from backend.events import Event
from backend.execution.scheduler import NoRoom
from backend.execution.supervisor import Busy, Supervisor
from backend.experiments import manage
from backend.fsm.machine import IllegalCommand
from backend.outputs import OutputInUse
from backend.projections import CommandRecord, RunSummary
from backend.runs import RunService, UnknownRun, new_run_id
from backend.runspec import InvalidConfig, InvalidRequest, claim_output, created_data

log = logging.getLogger(__name__)

COMMANDS = ("create", "start", "stop", "resume", "dequeue", "move", *manage.COMMANDS)
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
        self.manager = manage.Manager(service, base_dir)  # files are removed only under it
        self._answers: OrderedDict[str, tuple[str, str | None, asyncio.Task[Outcome]]] = (
            OrderedDict()
        )
        self._running: set[asyncio.Task[Outcome]] = set()
        # Creates one at a time: two creates must not both find the same folder free.
        self._creating = asyncio.Lock()

    async def run(
        self,
        command: str,
        run_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        command_id: str | None = None,
        *,
        annotations: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Apply a command, or answer a repeated id from its first answer. `annotations`
        (from the server itself, never a client: a sweep's trial) join a create's data."""
        remembered = None if command_id is None else self._remembered(command_id)
        if command_id is not None and remembered is not None:
            first_command, first_run, answer = remembered
            if first_command != command or (first_run != run_id and command != "create"):
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
        task = self._task(self._settle(command, run_id, data or {}, command_id, annotations))
        if command_id is not None:
            self._remember(command_id, command, run_id, task)
        return await asyncio.shield(task)

    def _remembered(self, command_id: str) -> tuple[str, str | None, asyncio.Task[Outcome]] | None:
        """The answer to an id: from memory, else from the event the id is recorded in.
        Synchronous up to the lookup, so a command cannot slip in between."""
        remembered = self._answers.get(command_id)
        if remembered is not None:
            return remembered
        found = self.service.find_command(command_id)
        if found is None:
            return None
        summary, record = found
        task = self._task(self._recorded(summary, record))
        return self._remember(command_id, record.command, summary.run.run_id, task)

    def _remember(
        self, command_id: str, command: str, run_id: str | None, task: asyncio.Task[Outcome]
    ) -> tuple[str, str | None, asyncio.Task[Outcome]]:
        entry = self._answers[command_id] = (command, run_id, task)
        while len(self._answers) > self.remember:
            self._answers.popitem(last=False)
        return entry

    def _task(self, coro: Any) -> asyncio.Task[Outcome]:
        task: asyncio.Task[Outcome] = asyncio.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _recorded(self, summary: RunSummary, record: CommandRecord) -> Outcome:
        """The answer to a command found in the log: the run now, and the event it made
        (for a create that also started the run, its `started` event too)."""
        run_id = summary.run.run_id
        events = await self.service.store.read_run(run_id, record.version - 1, limit=2)
        body: dict[str, Any] = {"run": summary.to_json(), "event": events[0].to_json()}
        if record.command == "create":
            started = [
                e
                for e in events[1:]
                if e.data.get("command_id") == events[0].data.get("command_id")
            ]
            if started:
                _add_start(body, summary, started[0])
            return Outcome(201, body)
        if events[0].type == ev.QUEUED:
            return Outcome(202, _queued_body(body, summary))
        return Outcome(200, body)

    async def _settle(
        self,
        command: str,
        run_id: str | None,
        data: Mapping[str, Any],
        command_id: str | None,
        annotations: Mapping[str, Any] | None = None,
    ) -> Outcome:
        try:
            outcome = await self._execute(command, run_id, data, command_id, annotations)
        except Exception as exc:
            log.exception("command %s of run %s failed", command, run_id)
            message = f"the server failed ({type(exc).__name__}: {exc}); see its log"
            outcome = _refused(ApiError(500, "internal", message))
        if outcome.status >= 500 and command_id is not None:
            self._answers.pop(command_id, None)  # not applied: a retry may try again
        return outcome

    async def _execute(
        self,
        command: str,
        run_id: str | None,
        data: Mapping[str, Any],
        command_id: str | None,
        annotations: Mapping[str, Any] | None = None,
    ) -> Outcome:
        started: Event | None = None
        try:
            if command == "create":
                event, started = await self._create(data, command_id, annotations)
                status = 201
            elif command in COMMANDS:
                if not run_id:
                    raise errors.bad_request(f"'{command}' needs a run_id")
                if self.service.get(run_id).deleted:  # UnknownRun before anything else
                    raise manage.deleted_run(run_id)
                if command in manage.COMMANDS:
                    event = await self.manager.run(command, run_id, data, command_id)
                elif command == "move":
                    target = self._move_target(data)
                    event = await self.supervisor.move(run_id, command_id, **target)
                else:
                    event = await getattr(self.supervisor, command)(run_id, command_id)
                status = 202 if event.type == ev.QUEUED else 200
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
        except NoRoom as exc:
            details = {"need": exc.need, "have": exc.have}
            return _refused(ApiError(422, "not_enough_devices", str(exc), details))
        except InvalidRequest as exc:
            return _refused(errors.bad_request(str(exc), **exc.details))
        except InvalidConfig as exc:
            return _refused(ApiError(422, "invalid_config", str(exc), {"problems": exc.to_json()}))
        except OutputInUse as exc:
            return _refused(ApiError(409, "output_in_use", str(exc), exc.details()))
        summary = self.service.get(event.run_id)
        body = {"run": summary.to_json(), "event": event.to_json()}
        if started is not None:
            _add_start(body, summary, started)
        elif event.type == ev.QUEUED:
            _queued_body(body, summary)
        return Outcome(status, body)

    def _move_target(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """A move's `{"before": run_id | null}` or `{"position": n}`, checked."""
        if ("before" in data) == ("position" in data):
            raise errors.bad_request(
                "a move needs either 'before' (a queued run's id, or null for the end) "
                "or 'position' (1 is the first to start)"
            )
        if "position" in data:
            position = data["position"]
            if isinstance(position, bool) or not isinstance(position, int) or position < 1:
                raise errors.bad_request("'position' must be an integer of at least 1")
            return {"position": position}
        before = data["before"]
        if before is not None and not isinstance(before, str):
            raise errors.bad_request("'before' must be a run id or null")
        if before is not None and (
            before not in self.service.runs or not self.service.runs[before].queued
        ):
            raise errors.bad_request(
                f"run '{before}' is not queued; 'before' names a queued run (see GET /api/queue)"
            )
        return {"before": before}

    async def _create(
        self,
        data: Mapping[str, Any],
        command_id: str | None,
        annotations: Mapping[str, Any] | None = None,
    ) -> tuple[Event, Event | None]:
        """The `created` event (and `started`, for a create with `start: true`)."""
        run_id = new_run_id() if command_id is None else run_id_for(command_id)
        async with self._creating:
            if run_id in self.service.runs:
                # A create repeated after a restart, from a log older than command ids in
                # events: the run its id made is the first answer.
                [first] = await self.service.store.read_run(run_id, limit=1)
                return first, None
            # A snapshot the worker thread may read. A deleted run's folder is judged by
            # what it left (its marker, checkpoints): a delete that removed them frees it.
            runs = {rid: s for rid, s in self.service.runs.items() if not s.deleted}
            # Validation reads volume headers: keep the event loop free meanwhile.
            created = await anyio.to_thread.run_sync(
                lambda: created_data(
                    data,
                    run_id,
                    check_paths=self.check_paths,
                    base_dir=self.base_dir,
                    runs=runs,
                )
            )
            created.update(annotations or {})
            if command_id is not None:
                created["command_id"] = command_id
            if data.get("start"):
                first, started = await self.supervisor.create_and_start(run_id, created, command_id)
            else:
                first, started = await self.service.create(created, run_id), None
            if self.check_paths:
                await anyio.to_thread.run_sync(lambda: claim_output(created, run_id))
            return first, started


def run_id_for(command_id: str) -> str:
    """The run a create command with this id makes: the same id always names the same run,
    so a repeated create is recognised even after a restart emptied the answer cache."""
    return hashlib.blake2b(command_id.encode(), digest_size=6).hexdigest()


def _add_start(body: dict[str, Any], summary: RunSummary, started: Event) -> None:
    """A create-and-start's second event: `started`, or `queued` when no slot was free."""
    if started.type == ev.QUEUED:
        _queued_body(body, summary)
        body["queued_event"] = started.to_json()
    else:
        body["started"] = started.to_json()


def _queued_body(body: dict[str, Any], summary: RunSummary) -> dict[str, Any]:
    body["queued"] = True
    body["position"] = summary.queue_position
    return body


def _refused(exc: ApiError) -> Outcome:
    return Outcome(exc.status, {"error": exc.to_json()})


def check_id(value: Any) -> str | None:
    """A command id from a request, validated: a short string, or absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise errors.bad_request(f"a command 'id' must be a string of 1 to {MAX_ID_LENGTH} chars")
    return value
