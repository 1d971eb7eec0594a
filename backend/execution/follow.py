"""Following a trainer's spool, `<log_path>/events.jsonl`, as another process writes it.

A batch job (Slurm) has no pipe to the server: the server learns what it does only from
the spool on the shared filesystem. `SpoolFollower.read()` returns the events appended
since the last call, with these guarantees:

- **Complete lines only.** A line is read once its newline is on disk; a torn last line
  (the writer is halfway through, or died there) stays unread until it is completed. A
  line the writer never completed is closed off by the next writer's newline (the
  emitter opens the spool that way) and is then skipped as malformed.
- **Resumable.** `offset` is the byte offset after the last complete line read; a new
  follower started there (or at 0, with the `known` numbers) reads on without a gap.
- **Each `(attempt, n)` once.** Only events of the follower's attempt are returned, each
  `n` once: numbers in `known` (already stored) and numbers not above the last one read
  (the writer numbers lines upwards) are skipped, so re-reading the file from the start
  after a server restart duplicates nothing, in constant memory however long the run.
- **Nothing after the attempt's final event** (`completed`, `failed`, `stopped`): `ended`
  becomes true and later lines are ignored.

Lines are decoded with `backend.execution.job.decode_batch`. A line that is not an event
of this attempt (another attempt's, or malformed) is skipped; malformed ones are counted
in `skipped` and logged. Reads are bounded (`max_bytes` per call), so a huge backlog
comes in pieces. Torch-free and synchronous: a read of a local or NFS file is short.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from backend import events as ev
from backend.execution.job import WireEvent, decode_batch

log = logging.getLogger(__name__)

FINAL_TYPES = frozenset({ev.COMPLETED, ev.FAILED, ev.STOPPED})
MAX_READ_BYTES = 4 << 20


class SpoolFollower:
    """Reads one attempt's new complete lines of a spool file, each `n` once."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        attempt: int,
        *,
        known: Iterable[int] = (),
        offset: int = 0,
        since_ts: float | None = None,
        max_bytes: int = MAX_READ_BYTES,
    ) -> None:
        self.path = Path(path)
        self.attempt = attempt
        self.offset = offset
        self.since_ts = since_ts  # lines older than this are an earlier run's (shared folder)
        self.max_bytes = max_bytes
        # The writer numbers an attempt's lines 1, 2, 3... in file order, so a high-water
        # mark dedupes in constant memory; `known` (what the store has) is only consulted
        # up to its largest number, then dropped.
        self.known: set[int] = set(known)
        self.known_max = max(self.known, default=0)
        self.last_n = 0
        self.ended = False
        self.skipped = 0  # malformed lines

    def size(self) -> int:
        """The spool's size now (0 while it does not exist)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self) -> list[WireEvent]:
        """The new events of this attempt since the last call (maybe none)."""
        events: list[WireEvent] = []
        while not self.ended:
            chunk = self._read_complete_lines()
            if not chunk:
                break
            events.extend(self._accept(chunk))
        return events

    def _read_complete_lines(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.max_bytes)
        except FileNotFoundError:
            return b""
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= self.max_bytes:  # one line longer than a whole read: skip it
                return self._skip_long_line()
            return b""
        self.offset += end + 1
        return data[: end + 1]

    def _skip_long_line(self) -> bytes:
        log.warning("%s: skipped a line longer than %d bytes", self.path, self.max_bytes)
        self.skipped += 1
        self.offset += self.max_bytes
        return b"\n"

    def _accept(self, chunk: bytes) -> list[WireEvent]:
        accepted: list[WireEvent] = []
        for line in chunk.splitlines():
            if not line.strip():
                continue
            [(type_, data, ts)] = decode_batch(line)
            n = data.get("n")
            if data.get("attempt") != self.attempt or not isinstance(n, int):
                if type_ == ev.LOG and "attempt" not in data:
                    self.skipped += 1  # decode_batch's report of a malformed line
                    log.warning("%s: %s", self.path, data.get("message"))
                continue
            if n <= self.last_n or (self.since_ts is not None and ts < self.since_ts):
                continue
            self.last_n = n
            if n <= self.known_max and n in self.known:
                continue
            if n >= self.known_max:
                self.known.clear()
            accepted.append((type_, data, ts))
            if type_ in FINAL_TYPES:
                self.ended = True
                break
        return accepted
