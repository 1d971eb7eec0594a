"""The in-loop emitter: batching, the writer thread, files, strict JSON, log events, a dead
parent."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import pytest

from backend.execution.job import EVENTS_FILE, LOG_FILE, WireEvent, decode_batch, receive_batch
from backend.trainer.emitter import Emitter, strict_json


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingConn:
    """Stands in for the pipe: records every message sent, and its decoded batch."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[list[WireEvent]] = []
        self.payloads: list[bytes] = []
        self.fail = fail
        self.closed = False

    def send_bytes(self, payload: bytes) -> None:
        if self.fail:
            raise BrokenPipeError(32, "Broken pipe")
        self.payloads.append(payload)
        self.sent.append(decode_batch(payload))

    def close(self) -> None:
        self.closed = True


def make(tmp_path: Path, conn: Any, clock: FakeClock, **kw: Any) -> Emitter:
    return Emitter(cast(Connection, conn), tmp_path, attempt=2, clock=clock, **kw)


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / EVENTS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_events_batch_until_the_flush_interval(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock, flush_interval=0.25)
    for i in range(1, 4):
        emitter.emit("metric", {"iteration": i, "loss": 0.5, "lr": 0.1, "components": {}})
    assert conn.sent == []
    clock.now += 0.3
    emitter.emit("metric", {"iteration": 4, "loss": 0.5, "lr": 0.1, "components": {}})
    emitter.drain()  # the writer thread sends it
    assert len(conn.sent) == 1, "one message carries the whole batch"
    batch = conn.sent[0]
    assert [data["iteration"] for _, data, _ in batch] == [1, 2, 3, 4]
    assert [data["n"] for _, data, _ in batch] == [1, 2, 3, 4]
    assert all(data["attempt"] == 2 for _, data, _ in batch)
    assert all(t == "metric" and isinstance(ts, float) for t, _, ts in batch)
    emitter.close()
    assert conn.closed


def test_jsonl_and_train_log(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock, log_every=5)
    emitter.emit("progress", {"iteration": 5, "total": 10, "its_per_s": 2.0, "eta_s": 125.0})
    for i in range(1, 11):
        emitter.emit("metric", {"iteration": i, "loss": 1.0 / i, "lr": 0.001, "components": {}})
    emitter.emit("validation", {"iteration": 10, "loss": 0.3, "dice": 0.9, "iou": 0.8})
    emitter.emit("checkpoint", {"iteration": 10, "path": "/o/checkpoint_00010.pth.tar"})
    assert emitter.finish("completed", {"iteration": 10, "metrics": {}, "checkpoint": "x"})
    emitter.close()

    records = lines(tmp_path)
    facts = [r["type"] for r in records if r["type"] != "log"]
    assert facts[-3:] == ["validation", "checkpoint", "completed"]
    assert records[-1]["type"] == "completed", "the final event stays last"
    assert [r["data"]["n"] for r in records] == list(range(1, len(records) + 1))
    assert set(records[0]) == {"type", "ts", "data"}

    log = (tmp_path / LOG_FILE).read_text().splitlines()
    iteration_lines = [line for line in log if "[Iteration" in line]
    assert len(iteration_lines) == 2, "one line per MONITOR.ITERATION_NUM[0] iterations"
    assert "[Iteration 00005] train_loss=0.20000 lr=1.000e-03 time_left=0:02:05" in log[0]
    assert any("[Validation 00010]" in line and "dice=0.9000" in line for line in log)
    assert any("checkpoint_00010.pth.tar" in line for line in log)
    assert "Training completed at iteration 10" in log[-1]


def test_non_finite_values_become_null_with_a_repr(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock)
    components = {"0/DiceLoss": math.inf, "0/BCE": 0.5}
    emitter.emit("metric", {"iteration": 3, "loss": math.nan, "lr": 1e6, "components": components})
    emitter.close()

    record, said = lines(tmp_path)  # json.loads would accept NaN; check the raw text too
    assert said["type"] == "log" and said["data"]["level"] == "warning"
    assert "NaN" not in (tmp_path / EVENTS_FILE).read_text()
    data = record["data"]
    assert data["loss"] is None and data["loss_repr"] == "nan"
    assert data["components"] == {"0/DiceLoss": None, "0/DiceLoss_repr": "inf", "0/BCE": 0.5}
    # The parent receives the same strict data.
    sent = conn.sent[0][0][1]
    assert sent["loss"] is None and sent["loss_repr"] == "nan"
    json.dumps(sent, allow_nan=False)
    assert "train_loss=nan" in (tmp_path / LOG_FILE).read_text()


def test_strict_json_converts_scalars_and_tuples() -> None:
    np = pytest.importorskip("numpy")
    value = {"a": np.float32(0.5), "b": (1, float("-inf")), "c": Path("/x"), "d": None}
    assert strict_json(value) == {"a": 0.5, "b": [1, None], "c": "/x", "d": None}


def test_broken_pipe_marks_parent_gone_and_keeps_writing(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn(fail=True)
    emitter = make(tmp_path, conn, clock)
    emitter.emit("log", {"level": "info", "message": "hello"})
    emitter.drain()
    assert emitter.parent_gone and emitter.check_parent()
    emitter.finish("stopped", {"iteration": 4, "checkpoint": "c"})
    emitter.close()
    assert [r["type"] for r in lines(tmp_path)] == ["log", "log", "stopped"]


def test_only_the_first_final_event_counts(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock)
    assert emitter.finish("stopped", {"iteration": 1, "checkpoint": None})
    assert not emitter.finish("failed", {"message": "late", "hint": "", "iteration": 1})
    with pytest.raises(ValueError, match="final"):
        emitter.finish("metric", {})
    emitter.emit("log", {"level": "info", "message": "too late: never stored"})
    emitter.emit_threadsafe("log", {"level": "warning", "message": "too late as well"})
    emitter.close()
    assert [r["type"] for r in lines(tmp_path)] == ["log", "stopped"], "the final stays last"


def test_clock_going_backwards_flushes(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock)
    clock.now -= 3600  # NTP step: must not hold events for an hour
    emitter.emit("log", {"level": "info", "message": "x"})
    emitter.drain()
    assert len(conn.sent) == 1
    emitter.close()


def test_a_real_pipe_carries_batches(tmp_path: Path) -> None:
    receiver, sender = mp.Pipe(duplex=False)
    emitter = Emitter(sender, tmp_path, attempt=1, flush_interval=10.0)
    for i in range(100):
        emitter.emit("metric", {"iteration": i, "loss": 0.1, "lr": 0.1, "components": {}})
    emitter.close()
    batch = receive_batch(receiver)
    metrics = [data for type_, data, _ in batch if type_ == "metric"]
    assert len(metrics) == 100 and len(batch) == 105, "a loss line every 20 iterations"
    assert [data["n"] for _, data, _ in batch] == list(range(1, 106))
    with pytest.raises(EOFError):
        receiver.recv_bytes()


@pytest.mark.parametrize(
    "data",
    [
        {"iteration": 7, "loss": 0.25, "lr": 1e-05, "components": {'a"b\\': 0.1, "0/é": 2.5}},
        {"iteration": 7, "loss": 0.25, "lr": 0.001, "components": {}},
        {"iteration": 7, "loss": 1, "lr": 0.001, "components": {"x": 0.5}},  # int loss
        {"iteration": 7, "loss": 0.5, "lr": 0.001, "components": {"x": True}},
        {"iteration": 7, "loss": 0.5, "lr": 0.001, "components": {}, "extra": "kept"},
    ],
)
def test_metric_lines_are_the_data_as_given(tmp_path: Path, data: dict[str, Any]) -> None:
    clock = FakeClock(1795744714.242574)
    emitter = make(tmp_path, RecordingConn(), clock)
    emitter.emit("metric", dict(data))
    emitter.close()
    (record,) = lines(tmp_path)
    assert record == {"type": "metric", "ts": clock.now, "data": {**data, "attempt": 2, "n": 1}}


def test_the_pipe_carries_the_spool_bytes_exactly(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock, log_every=2)
    for i in range(1, 6):
        emitter.emit("metric", {"iteration": i, "loss": 0.5, "lr": 0.1, "components": {}})
        clock.now += 0.3  # a batch per event
    emitter.finish("completed", {"iteration": 5, "metrics": {}, "checkpoint": None})
    emitter.close()
    assert b"".join(conn.payloads) == (tmp_path / EVENTS_FILE).read_bytes()


def test_every_train_log_line_is_a_log_event(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock, log_every=5)
    emitter.emit("trainer_ready", {"device": "cpu", "amp": False, "parameters": 10})
    for i in range(1, 11):
        emitter.emit("metric", {"iteration": i, "loss": 1.0 / i, "lr": 0.001, "components": {}})
    emitter.emit("metric", {"iteration": 11, "loss": math.nan, "lr": 0.001, "components": {}})
    emitter.emit("validation", {"iteration": 10, "loss": 0.3, "dice": 0.9, "iou": 0.8})
    emitter.emit("checkpoint", {"iteration": 10, "path": "/o/checkpoint_00010.pth.tar"})
    emitter.emit("log", {"level": "warning", "message": "disk nearly full"})
    emitter.finish("failed", {"message": "boom", "hint": "fix it", "iteration": 11})
    emitter.close()

    logs = [r["data"] for r in lines(tmp_path) if r["type"] == "log"]
    text = (tmp_path / LOG_FILE).read_text()
    # One log event per train.log line (a failed line carries its hint on a second line).
    assert len(logs) == text.count("\n") - 1
    for data in logs:
        assert data["source"] == "trainer" and data["message"] in text
    levels = {d["message"].split(" ", 1)[0]: d["level"] for d in logs}
    assert levels["[Iteration"] == "warning", "the NaN loss is the last loss line"
    assert levels["[Validation"] == levels["[Checkpoint"] == "info"
    assert levels["disk"] == "warning" and levels["Training"] == "error"
    assert sum(d["message"].startswith("[Iteration") for d in logs) == 3  # 5, 10 and the NaN


def test_other_threads_emit_through_the_next_flush(tmp_path: Path) -> None:
    clock, conn = FakeClock(), RecordingConn()
    emitter = make(tmp_path, conn, clock)
    handler_thread = threading.Thread(
        target=emitter.emit_threadsafe, args=("log", {"level": "warning", "message": "w"})
    )
    handler_thread.start()
    handler_thread.join()
    emitter.flush()
    emitter.close()
    assert [r["data"]["message"] for r in lines(tmp_path)] == ["w"]
    assert logging.getLevelName("WARNING") == 30  # the child maps logging levels by number


def test_a_torn_last_line_is_closed_before_new_events(tmp_path: Path) -> None:
    (tmp_path / EVENTS_FILE).write_bytes(b'{"type":"metric","ts":1.0,"data":{"iter')
    emitter = make(tmp_path, RecordingConn(), FakeClock())
    emitter.emit("log", {"level": "info", "message": "next attempt"})
    emitter.close()
    torn, line = (tmp_path / EVENTS_FILE).read_bytes().splitlines()
    assert torn.endswith(b'"iter') and json.loads(line)["data"]["message"] == "next attempt"
