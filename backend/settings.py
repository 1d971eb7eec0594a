"""Everything a server instance is configured with, in one immutable value.

`trainboard serve` builds it from flags; tests and benchmarks build it directly. Nothing
here reads the environment or the disk, so a `Settings` is cheap and predictable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backend.store import Synchronous

if TYPE_CHECKING:
    from backend.execution.executor import Executor

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# The built browser app, when this is a source checkout with `frontend/dist`.
DEFAULT_FRONTEND = Path(__file__).resolve().parent.parent / "frontend" / "dist"


@dataclass(frozen=True, slots=True)
class Settings:
    """A server's configuration. Only `token` has no safe default."""

    token: str
    db_path: Path = Path("events.db")
    data_root: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    # Slots (runs training at once); None: one per visible GPU, one without a GPU.
    max_concurrent: int | None = None
    # Supervisor escalation: seconds to wait for a graceful stop, then after SIGTERM.
    stop_grace_s: float = 30.0
    kill_grace_s: float = 10.0
    synchronous: Synchronous = "NORMAL"
    # At start, resume the runs a server stop or crash interrupted (`serve --auto-resume`).
    auto_resume: bool = False
    # Extra origins a browser may open the WebSocket from (a dev server, say).
    allowed_origins: frozenset[str] = frozenset()
    # WebSocket: heartbeat ping period; a client silent this long is closed.
    heartbeat_s: float = 15.0
    heartbeat_timeout_s: float = 45.0
    # A frame larger than this is refused by the server (close 1009).
    ws_max_frame: int = 64 * KIB
    # Per-client outgoing queue, in events; a client this far behind is closed (4408).
    ws_queue_events: int = 20_000
    # At most this many events, and about this many bytes, go into one `events` frame.
    ws_batch_events: int = 1_000
    ws_batch_bytes: int = 256 * KIB
    # The hub's tick: live events go out at most once per tick, one frame per tick shared
    # by every client that keeps up, so at high event rates each client gets a few dozen
    # large frames per second instead of a frame per append. After a quiet tick a new
    # event goes out at once.
    ws_coalesce_s: float = 0.02
    # How long a close frame may wait for a client that does not read, before giving up.
    ws_close_timeout_s: float = 10.0
    # Commands one connection may have in flight at once.
    ws_max_pending_commands: int = 16
    # Upload limits: YAML configs, and everything else (volumes).
    max_upload_bytes: int = 2 * GIB
    max_yaml_bytes: int = 1 * MIB
    # JSON request bodies (a create request carries YAML text, so a little above it).
    max_json_bytes: int = 4 * MIB
    frontend_dir: Path | None = DEFAULT_FRONTEND
    # Presets: YAML files shown by GET /api/presets; `<data_root>/presets` is added.
    preset_dirs: tuple[Path, ...] = field(default_factory=tuple)
    # Write the demo dataset under the data root when it is empty at start (serve does).
    demo_on_first_run: bool = False
    # Options handed to every trainer job (tests shorten intervals with it).
    job_options: dict[str, object] = field(default_factory=dict)
    # Where runs train (`serve --executor`): None is the local executor (child processes).
    executor: Executor | None = None

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("a server needs an access token")
        if self.heartbeat_timeout_s <= self.heartbeat_s:
            raise ValueError("heartbeat_timeout_s must be longer than heartbeat_s")

    @property
    def presets(self) -> tuple[Path, ...]:
        return (*self.preset_dirs, self.data_root / "presets")
