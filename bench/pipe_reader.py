"""The far end of a trainer pipe for benchmarks: a process that reads and decodes every
batch, as the server would."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection

from backend.execution.job import receive_batch


def _drain(conn: Connection, ready: Connection, sender: Connection) -> None:
    sender.close()  # the fork's copy of the write end: EOF comes only once all are closed
    ready.send(True)
    try:
        while True:
            receive_batch(conn)
    except EOFError:
        pass


def start_reader() -> tuple[mp.process.BaseProcess, Connection]:
    """Start the reader; returns it and the write end. Forked, so it imports nothing: a
    spawned one would re-import the benchmark, torch included, and compete for the CPUs
    while the loop is being timed."""
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    ready_r, ready_w = ctx.Pipe(duplex=False)
    reader = ctx.Process(target=_drain, args=(receiver, ready_w, sender), daemon=True)
    reader.start()
    receiver.close()
    ready_r.recv()  # running before the clock starts
    return reader, sender
