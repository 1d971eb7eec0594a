"""The protocol's one error shape, `{"error": {"code", "message", "details"}}`.

REST answers carry it with an HTTP status; WebSocket results and error frames carry the
same object, so a client handles a refusal the same way whichever way it asked.
"""

from __future__ import annotations

from typing import Any

from backend.fsm.machine import IllegalCommand
from backend.runs import UnknownRun


class ApiError(Exception):
    """A refusal the client can act on: `message` says what to do."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


def bad_request(message: str, **details: Any) -> ApiError:
    return ApiError(400, "bad_request", message, details)


def not_found(message: str, **details: Any) -> ApiError:
    return ApiError(404, "not_found", message, details)


def illegal(exc: IllegalCommand) -> ApiError:
    return ApiError(
        409,
        "illegal_command",
        str(exc),
        {
            "run_id": exc.run_id,
            "command": exc.command,
            "state": str(exc.state),
            "legal_commands": list(exc.legal),
        },
    )


def unknown_run(exc: UnknownRun) -> ApiError:
    return not_found(f"{exc}; list the runs with GET /api/runs", run_id=exc.run_id)
