"""The spool follower against a writer that appends lines in torn pieces."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from backend.execution.follow import SpoolFollower
from backend.execution.job import WireEvent


def line(type_: str, attempt: int, n: int, **data: Any) -> bytes:
    record = {"type": type_, "ts": 1000.0 + n, "data": {**data, "attempt": attempt, "n": n}}
    return orjson.dumps(record) + b"\n"


def metrics(attempt: int, count: int, first: int = 1) -> bytes:
    return b"".join(
        line("metric", attempt, n, iteration=n, loss=1.0 / n) for n in range(first, first + count)
    )


def ns(events: list[WireEvent]) -> list[int]:
    return [data["n"] for _, data, _ in events]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def test_torn_pieces_give_each_event_once_in_order(tmp_path: Path) -> None:
    """Bytes arrive in random pieces (cutting lines anywhere); reads in between see only
    complete lines, every event exactly once, in order."""
    spool = tmp_path / "events.jsonl"
    payload = metrics(1, 300) + line("completed", 1, 301, iteration=300)
    follower = SpoolFollower(spool, 1)
    rng = random.Random(7)
    seen: list[WireEvent] = []
    at = 0
    while at < len(payload):
        step = rng.randint(1, 97)
        append(spool, payload[at : at + step])
        at += step
        seen.extend(follower.read())
        assert follower.offset <= at
    seen.extend(follower.read())
    assert ns(seen) == list(range(1, 302))
    assert seen[-1][0] == "completed" and follower.ended
    assert follower.offset == len(payload)


def test_concurrent_writer_thread(tmp_path: Path) -> None:
    """A writer thread flushing half lines while the follower polls: nothing lost."""
    spool = tmp_path / "events.jsonl"
    payload = metrics(2, 2000) + line("stopped", 2, 2001, iteration=2000)
    follower = SpoolFollower(spool, 2)

    def writer() -> None:
        with open(spool, "ab", buffering=0) as handle:
            for start in range(0, len(payload), 113):
                handle.write(payload[start : start + 113])

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[WireEvent] = []
    while thread.is_alive() or not follower.ended:
        seen.extend(follower.read())
        if not thread.is_alive() and not follower.ended:
            seen.extend(follower.read())
            break
    thread.join()
    assert ns(seen) == list(range(1, 2002))


def test_resumes_from_its_offset_and_dedupes_known(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    append(spool, metrics(1, 10))
    first = SpoolFollower(spool, 1)
    assert ns(first.read()) == list(range(1, 11))
    append(spool, metrics(1, 5, first=11))
    # Resumed at the offset: only what came after.
    assert ns(SpoolFollower(spool, 1, offset=first.offset).read()) == list(range(11, 16))
    # From the start, with what the store has: only the missing numbers.
    known = set(range(1, 13))
    assert ns(SpoolFollower(spool, 1, known=known).read()) == [13, 14, 15]


def test_known_with_gaps_recovers_the_gaps_then_forgets_known(tmp_path: Path) -> None:
    """The store may lack lines in the middle (a batch lost with the server): they come
    back; past the largest known number the set is dropped (constant memory)."""
    spool = tmp_path / "events.jsonl"
    append(spool, metrics(1, 7))
    follower = SpoolFollower(spool, 1, known={1, 2, 5})
    assert ns(follower.read()) == [3, 4, 6, 7]
    assert follower.known == set()


def test_skips_other_attempts_and_stops_at_the_final_event(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    append(spool, metrics(1, 3) + line("stopped", 1, 4) + metrics(2, 3))
    append(spool, line("completed", 2, 4) + line("metric", 2, 5))
    follower = SpoolFollower(spool, 2)
    events = follower.read()
    assert ns(events) == [1, 2, 3, 4] and events[-1][0] == "completed"
    assert follower.ended and follower.read() == []


def test_repeated_numbers_are_dropped(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    append(spool, metrics(1, 3) + metrics(1, 3))
    assert ns(SpoolFollower(spool, 1).read()) == [1, 2, 3]


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b'{"type": "metric", "ts": 1, "da', "a line torn by a crash, closed off later"),
        (b"not json at all", "not JSON"),
        (b'["a", "list"]', "JSON but not an event"),
        (b'{"type": "metric", "ts": 1, "data": {"iteration": 1}}', "no attempt or n"),
    ],
)
def test_malformed_lines_are_skipped(tmp_path: Path, garbage: bytes, why: str) -> None:
    spool = tmp_path / "events.jsonl"
    append(spool, metrics(1, 2) + garbage + b"\n" + metrics(1, 2, first=3))
    follower = SpoolFollower(spool, 1)
    assert ns(follower.read()) == [1, 2, 3, 4], why


def test_missing_file_reads_nothing_until_it_appears(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    follower = SpoolFollower(spool, 1)
    assert follower.read() == [] and follower.size() == 0
    append(spool, metrics(1, 2))
    assert ns(follower.read()) == [1, 2]


def test_reads_are_bounded_and_a_giant_line_is_skipped(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    giant = line("log", 1, 2, message="x" * 5000)
    append(spool, metrics(1, 1) + giant + metrics(1, 50, first=3))
    follower = SpoolFollower(spool, 1, max_bytes=1024)
    assert ns(follower.read()) == [1, *range(3, 53)]
    assert follower.skipped >= 1
