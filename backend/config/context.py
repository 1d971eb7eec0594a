"""What every check needs: the values, where each was written, and which keys are sane.

Cross-key checks (OUT_PLANES against TARGET_OPT, ...) only run on keys that passed their own
type and range checks, so one wrong value is reported once, not again by every check that
reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.config.load import LoadedConfig
from backend.config.problems import Level, Problem, Source, at


@dataclass
class Checks:
    loaded: LoadedConfig
    valid: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)

    def value(self, key: str) -> Any:
        return self.loaded.get(key)

    def ok(self, *keys: str) -> bool:
        return all(k in self.valid for k in keys)

    def user_set(self, key: str) -> bool:
        return key in self.loaded.user_keys

    def source(self, *keys: str) -> Source | None:
        """Where the first of `keys` the user wrote was written (None: all are defaults)."""
        for key in keys:
            found = self.loaded.source(key)
            if found is not None:
                return found
        return None

    def report(
        self,
        level: Level,
        key: str,
        message: str,
        expected: str = "",
        suggestion: str = "",
        *,
        near: tuple[str, ...] = (),
    ) -> None:
        """Add a problem at `key`, located at `key` or else the first of `near` the user set."""
        source = self.source(key, *near)
        self.problems.append(at(source, level, key, message, expected, suggestion))


def show(value: Any) -> str:
    """A value as the user would write it in YAML: ['0', '2'], [8, 256, 256], True, null."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)
