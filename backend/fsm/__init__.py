"""The run lifecycle: a `transitions` state machine and the fold that rebuilds it from events."""

from backend.fsm.fold import Run, fold
from backend.fsm.machine import IllegalCommand, IllegalEvent, State, legal_commands, to_mermaid

__all__ = ["IllegalCommand", "IllegalEvent", "Run", "State", "fold", "legal_commands", "to_mermaid"]
