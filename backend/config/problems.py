"""What loading and validation report: one `Problem` per finding, never an exception.

A config can be wrong in many places at once; users fix them all in one pass when they see
them all in one pass. Every problem names the dotted key, where it was written (file and
line) when known, what was expected and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["error", "warning"]
ERROR: Level = "error"
WARNING: Level = "warning"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a key was written: `file` is "config", "base", "override" or a path."""

    file: str
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    level: Level
    key: str
    message: str
    expected: str = ""
    suggestion: str = ""
    file: str | None = None
    line: int | None = None

    @property
    def is_error(self) -> bool:
        return self.level == ERROR

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "key": self.key,
            "message": self.message,
            "expected": self.expected,
            "suggestion": self.suggestion,
            "file": self.file,
            "line": self.line,
        }

    def format(self, default_file: str = "config") -> str:
        """`FILE:LINE: level: KEY: message (expected ...; suggestion ...)`, compiler style."""
        where = self.file or default_file
        if self.line is not None:
            where = f"{where}:{self.line}"
        text = f"{where}: {self.level}: "
        if self.key:
            text += f"{self.key}: "
        text += self.message
        extra = [f"expected {self.expected}"] if self.expected else []
        if self.suggestion:
            extra.append(f"suggestion: {self.suggestion}")
        if extra:
            text += f" ({'; '.join(extra)})"
        return text

    def __str__(self) -> str:
        return self.format()


def at(
    source: Source | None,
    level: Level,
    key: str,
    message: str,
    expected: str = "",
    suggestion: str = "",
) -> Problem:
    """A problem located at `source` (None: the key was not written by the user)."""
    return Problem(
        level=level,
        key=key,
        message=message,
        expected=expected,
        suggestion=suggestion,
        file=source.file if source else None,
        line=source.line if source else None,
    )


def has_errors(problems: list[Problem]) -> bool:
    return any(p.is_error for p in problems)
