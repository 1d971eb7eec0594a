"""TensorBoard exports, read back with TensorBoard's own reader.

A run served by a real server (metrics over several pages of events, validations with
preview PNGs, a resume that repeats iterations) is exported by the CLI (`trainboard export
RUN --format tensorboard DIR`) and by the server (`?format=tensorboard`, a zip);
TensorBoard's `EventAccumulator` must find every stored value at its iteration and time,
and every preview image byte for byte. The server reads previews only inside the run's
own folders.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from backend.cli import main
from backend.events import NewEvent
from backend.runs import new_run_id
from tests.server.live import TOKEN, LiveServer, make_settings

METRICS = 12_000  # more than two pages of the events endpoint (5,000 each)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path_factory.mktemp("tb"))).start()
    yield live
    live.stop()


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.full((6, 10, 3), value, dtype=np.uint8)
    pixels[0, 0] = (255 - value, 0, 0)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def exported_run(server: LiveServer) -> tuple[str, dict[str, bytes]]:
    """A run with metrics, validations with previews, a stop, and a resume repeating
    iterations; returns its id and its previews (path -> PNG)."""
    run_id = new_run_id()
    log = server.settings.data_root / "out" / "tb" / "log" / run_id
    (log / "previews").mkdir(parents=True)
    previews = {str(log / "previews" / f"val_{i:05d}.png"): png(i * 20) for i in (1, 2, 3)}
    for path, data in previews.items():
        Path(path).write_bytes(data)
    missing = str(log / "previews" / "never_written.png")

    def metric(i: int) -> NewEvent:
        data = {"iteration": i, "loss": 1 / i, "lr": 0.01, "attempt": 1, "n": i}
        return NewEvent("metric", {**data, "components": {"bce": 0.5 / i, "dice": 0.25 / i}})

    def validation(i: int, preview: str) -> NewEvent:
        data = {"iteration": i, "loss": 2 / i, "dice": 1 - 1 / i, "iou": 0.5, "best": True}
        return NewEvent("validation", {**data, "preview": preview, "attempt": 1, "n": 0})

    paths = list(previews)

    async def make() -> None:
        service = server.ctx.service
        data = {"name": "tb", "output_path": str(log.parent.parent), "log_path": str(log)}
        await service.create({**data, "total_iterations": METRICS}, run_id)
        await service.command(run_id, "start", {"attempt": 1})
        await service.record(run_id, [metric(i) for i in range(1, METRICS + 1)])
        await service.record(run_id, [validation(100, paths[0]), validation(200, paths[1])])
        await service.record(run_id, [validation(300, missing)])
        await service.record(run_id, [NewEvent("stopped", {"iteration": METRICS})])
        await service.command(run_id, "resume", {"attempt": 2})
        # The resume repeats iterations from its checkpoint: both stretches are kept.
        await service.record(run_id, [metric(i) for i in range(METRICS - 9, METRICS + 1)])
        await service.record(run_id, [validation(METRICS, paths[2])])

    server.call(make())
    return run_id, previews


def cli(server: LiveServer, *args: str) -> int:
    return main([*args[:1], "--url", server.url, "--token", TOKEN, *args[1:]])


def stored(server: LiveServer, run_id: str) -> list[dict[str, Any]]:
    from backend.client import Rest

    return list(Rest(server.url, TOKEN).iter_events(run_id))


def expected_scalars(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, float]]]:
    """Every tag's (step, value, wall time), in the order of the run's events."""
    tags: dict[str, list[tuple[int, float, float]]] = {}
    for event in events:
        data = event["data"]
        fields: dict[str, Any] = {}
        if event["type"] == "metric":
            fields = {f"train/{k}": data[k] for k in ("loss", "lr")}
            fields |= {f"train/components/{k}": v for k, v in data["components"].items()}
        elif event["type"] == "validation":
            fields = {f"val/{k}": data[k] for k in ("loss", "dice", "iou")}
        for tag, value in fields.items():
            tags.setdefault(tag, []).append((data["iteration"], value, event["ts"]))
    return tags


def test_export_reads_back_with_tensorboards_reader(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id, previews = exported_run(server)
    folder = tmp_path / "board"
    assert cli(server, "export", run_id, "--format", "tensorboard", str(folder)) == 0
    err = capsys.readouterr().err
    assert "tensorboard --logdir" in err and "1 preview(s) not found" in err

    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    expected = expected_scalars(stored(server, run_id))
    assert sorted(reader.Tags()["scalars"]) == sorted(expected)
    assert len(expected["train/loss"]) == METRICS + 10
    for tag, points in expected.items():
        got = [(s.step, s.value, s.wall_time) for s in reader.Scalars(tag)]
        want = [(step, float(np.float32(v)), ts) for step, v, ts in points]
        assert got == want, tag
    images = reader.Images("val/preview")
    assert [i.step for i in images] == [100, 200, METRICS]
    assert [i.encoded_image_string for i in images] == list(previews.values())
    assert {(i.width, i.height) for i in images} == {(10, 6)}


def test_export_refuses_a_folder_that_already_holds_event_files(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = server.synthetic_run("twice")
    server.record(run_id, [("metric", {"iteration": 1, "loss": 0.5, "lr": 0.1})])
    folder = tmp_path / "board"
    assert cli(server, "export", run_id, "--format", "tensorboard", str(folder)) == 0
    [written] = folder.iterdir()
    assert cli(server, "export", run_id, "--format", "tensorboard", str(folder)) == 1
    assert "already holds TensorBoard event files" in capsys.readouterr().err
    assert list(folder.iterdir()) == [written]
    assert cli(server, "export", run_id, "--format", "tensorboard") == 1
    assert "needs a folder" in capsys.readouterr().err


def test_the_server_answers_a_zip_of_the_same_event_file(
    server: LiveServer, tmp_path: Path
) -> None:
    run_id, previews = exported_run(server)
    status, body, headers = server.request("GET", f"/api/runs/{run_id}/export?format=tensorboard")
    assert status == 200 and headers["content-type"] == "application/zip"
    assert f'filename="run-{run_id}.tensorboard.zip"' in headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        [name] = archive.namelist()
        assert name.startswith(f"run-{run_id}/events.out.tfevents.")
        archive.extractall(tmp_path)
    reader = EventAccumulator(
        str(tmp_path / f"run-{run_id}"), size_guidance={"scalars": 0, "images": 0}
    )
    reader.Reload()
    expected = expected_scalars(stored(server, run_id))
    for tag, points in expected.items():
        assert [(s.step, s.value) for s in reader.Scalars(tag)] == [
            (step, float(np.float32(v))) for step, v, _ in points
        ], tag
    images = reader.Images("val/preview")
    assert [i.encoded_image_string for i in images] == list(previews.values())


def test_the_server_reads_previews_only_inside_the_runs_folders(
    server: LiveServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(7))
    run_id = server.synthetic_run("prying")  # a run without folders: no file is its own
    data = {"iteration": 1, "loss": 1.0, "dice": 0.1, "iou": 0.1, "preview": str(secret)}
    server.record(run_id, [("validation", data)])
    status, body, _ = server.request("GET", f"/api/runs/{run_id}/export?format=tensorboard")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        archive.extractall(tmp_path / "out")
    [folder] = (tmp_path / "out").iterdir()
    reader = EventAccumulator(str(folder), size_guidance={"images": 0})
    reader.Reload()
    assert reader.Tags()["images"] == [] and reader.Tags()["scalars"]
