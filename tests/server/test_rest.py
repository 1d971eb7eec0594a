"""The REST API against a live server (no trainer children: see test_training.py)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from backend.events import Event
from backend.export import MetricRows, csv_text
from tests.server.live import LiveServer, make_settings, tiny_yaml


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("rest")
    presets = tmp / "bundled"
    presets.mkdir()
    (presets / "small.yaml").write_text("# A small preset\nSOLVER:\n  BASE_LR: 0.01\n")
    frontend = tmp / "dist"
    (frontend / "assets").mkdir(parents=True)
    (frontend / "index.html").write_text("<!doctype html><title>app</title>")
    (frontend / "assets" / "app.js").write_text("console.log(1)")
    settings = make_settings(tmp, preset_dirs=(presets,), frontend_dir=frontend)
    live = LiveServer(settings).start()
    yield live
    live.stop()


def test_health(server: LiveServer) -> None:
    status, body, _ = server.request("GET", "/api/health")
    assert status == 200
    assert body["status"] == "ok" and body["max_concurrent"] == 1
    assert body["data_root"] == str(server.settings.data_root.resolve())
    assert isinstance(body["gpus"], list) and body["last_seq"] >= 0


def test_config_endpoints(server: LiveServer) -> None:
    status, body, _ = server.request("GET", "/api/config/defaults")
    assert status == 200 and body["values"]["SOLVER"]["BASE_LR"] > 0
    status, schema, _ = server.request("GET", "/api/config/schema")
    assert status == 200 and "SOLVER" in schema["properties"]
    yaml_text = tiny_yaml(server.settings.data_root, "validate")
    status, body, _ = server.request("POST", "/api/config/validate", {"config": yaml_text})
    assert status == 200 and body["ok"] is True
    assert body["values"]["MODEL"]["FILTERS"] == [4, 8]
    bad = "SOLVER:\n  BASE_LRR: 0.1\n  ITERATION_TOTAL: -3\n"
    status, body, _ = server.request("POST", "/api/config/validate", {"config": bad})
    assert status == 200 and body["ok"] is False
    keys = {p["key"] for p in body["problems"]}
    assert "SOLVER.BASE_LRR" in keys
    status, body, _ = server.request("POST", "/api/config/validate", {"config": 3})
    assert status == 400 and body["error"]["code"] == "bad_request"


def test_presets(server: LiveServer) -> None:
    status, body, _ = server.request("GET", "/api/presets")
    assert status == 200
    [small] = [p for p in body["presets"] if p["name"] == "small"]
    assert small["title"] == "A small preset" and "BASE_LR" in small["yaml"]


def test_create_invalid_config_stores_nothing_and_reports_every_problem(
    server: LiveServer,
) -> None:
    before = server.ctx.store.last_seq
    config = "MODEL:\n  ARCHITECTURE: unet_9d\n  FILTERS: x\nSOLVER:\n  BASE_LRR: 1\n"
    status, body, _ = server.request("POST", "/api/runs", {"config": config, "name": "bad"})
    assert status == 422
    assert body["error"]["code"] == "invalid_config"
    problems = body["error"]["details"]["problems"]
    keys = {p["key"] for p in problems if p["level"] == "error"}
    assert {"MODEL.ARCHITECTURE", "MODEL.FILTERS", "SOLVER.BASE_LRR"} <= keys
    assert all(
        {"level", "key", "message", "expected", "suggestion", "line"} <= set(p) for p in problems
    )
    assert server.ctx.store.last_seq == before
    status, body, _ = server.request("POST", "/api/runs", {"name": "no config"})
    assert status == 400
    status, body, _ = server.request(
        "POST", "/api/runs", raw=b"{not json", headers={"content-type": "application/json"}
    )
    assert status == 400


def test_create_show_list_and_repeat_id(server: LiveServer) -> None:
    config = tiny_yaml(server.settings.data_root, "created")
    request = {"config": config, "name": "first", "seed": 3, "id": "create-rest-1"}
    status, body, _ = server.request("POST", "/api/runs", request)
    assert status == 201, body
    run = body["run"]
    assert run["state"] == "Idle" and run["legal_commands"] == ["start"]
    assert body["event"]["type"] == "created"
    status, again, _ = server.request("POST", "/api/runs", request)
    assert again == body  # the same answer, and no second run
    status, shown, _ = server.request("GET", f"/api/runs/{run['run_id']}")
    assert shown["run"]["name"] == "first" and shown["created"]["seed"] == 3
    assert "FILTERS" in shown["created"]["config"]
    status, listing, _ = server.request("GET", "/api/runs")
    ids = [r["run_id"] for r in listing["runs"]]
    assert ids.count(run["run_id"]) == 1
    created = [r["created_at"] for r in listing["runs"]]
    assert created == sorted(created, reverse=True)
    assert server.request("GET", "/api/runs/nope")[0] == 404


def test_illegal_command_is_409_and_writes_nothing(server: LiveServer) -> None:
    config = tiny_yaml(server.settings.data_root, "illegal")
    _, body, _ = server.request("POST", "/api/runs", {"config": config})
    run_id = body["run"]["run_id"]
    before = server.ctx.store.last_seq
    for command in ("stop", "resume"):
        status, answer, _ = server.request("POST", f"/api/runs/{run_id}/{command}", {})
        assert status == 409
        error = answer["error"]
        assert error["code"] == "illegal_command"
        assert error["details"]["state"] == "Idle"
        assert error["details"]["legal_commands"] == ["start"]
    assert server.ctx.store.last_seq == before
    status, answer, _ = server.request("POST", "/api/runs/nope/start", {})
    assert status == 404 and answer["error"]["code"] == "not_found"
    status, answer, _ = server.request("POST", f"/api/runs/{run_id}/start", {"id": 5})
    assert status == 400


def test_events_are_paged(server: LiveServer) -> None:
    run_id = server.synthetic_run("paged")
    server.metrics(run_id, 0, 25)
    status, page, _ = server.request("GET", f"/api/runs/{run_id}/events?limit=10")
    assert status == 200 and len(page["events"]) == 10 and page["more"] is True
    seqs = [e["seq"] for e in page["events"]]
    after = page["next_after"]
    while page["more"]:
        _, page, _ = server.request("GET", f"/api/runs/{run_id}/events?after={after}&limit=10")
        seqs += [e["seq"] for e in page["events"]]
        after = page["next_after"]
    assert len(seqs) == 27 and seqs == sorted(seqs)
    assert page["next_after"] == seqs[-1]
    _, empty, _ = server.request("GET", f"/api/runs/{run_id}/events?after={seqs[-1]}")
    assert empty == {"events": [], "next_after": seqs[-1], "more": False}
    _, everything, _ = server.request("GET", "/api/events?limit=10000")
    assert [e["seq"] for e in everything["events"]] == list(range(1, server.ctx.store.last_seq + 1))
    for bad in ("limit=0", "limit=10001", "after=-1", "after=x"):
        assert server.request("GET", f"/api/events?{bad}")[0] == 400


def test_export_jsonl_and_csv(server: LiveServer) -> None:
    run_id = server.synthetic_run("export")
    server.record(
        run_id,
        [
            ("metric", {"iteration": 1, "loss": 0.9, "lr": 0.01}),
            ("metric", {"iteration": 2, "loss": 0.8, "lr": 0.01}),
            ("validation", {"iteration": 2, "loss": 0.7, "dice": 0.5, "iou": 0.4}),
            ("log", {"level": "info", "message": "hi"}),
            ("metric", {"iteration": 3, "loss": 0.6, "lr": 0.005}),
        ],
    )
    status, body, headers = server.request("GET", f"/api/runs/{run_id}/export?format=jsonl")
    assert status == 200 and "attachment" in headers["content-disposition"]
    lines = [json.loads(line) for line in body.decode().splitlines()]
    _, page, _ = server.request("GET", f"/api/runs/{run_id}/events")
    assert lines == page["events"]
    status, body, headers = server.request("GET", f"/api/runs/{run_id}/export?format=csv")
    assert headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]
    assert rows[1] == {
        "iteration": "2",
        "loss": "0.8",
        "lr": "0.01",
        "val_loss": "0.7",
        "dice": "0.5",
        "iou": "0.4",
    }
    assert server.request("GET", f"/api/runs/{run_id}/export?format=xml")[0] == 400


def test_metric_rows_keep_repeated_iterations_of_a_resumed_run() -> None:
    def event(kind: str, **data: float) -> Event:
        return Event(1, "r", 1, kind, 0.0, data)

    rows = MetricRows()
    out = []
    for e in (
        event("metric", iteration=10, loss=1.0),
        event("validation", iteration=10, dice=0.5),
        event("metric", iteration=10, loss=0.9),  # resumed from iteration 9
    ):
        out += rows.feed(e)
    out += rows.finish()
    assert [r["iteration"] for r in out] == [10, 10]
    assert out[0]["dice"] == 0.5 and "dice" not in out[1]
    assert csv_text(out, header=True).splitlines()[0] == "iteration,loss,lr,val_loss,dice,iou"


def test_diagram(server: LiveServer) -> None:
    run_id = server.synthetic_run("diagram")
    status, body, _ = server.request("GET", f"/api/runs/{run_id}/diagram")
    assert status == 200 and body["state"] == "Training"
    assert body["mermaid"].startswith("stateDiagram-v2")
    assert "class Training current" in body["mermaid"]


def test_artifacts_are_confined_to_the_run_folders(server: LiveServer) -> None:
    config = tiny_yaml(server.settings.data_root, "artifacts")
    _, body, _ = server.request("POST", "/api/runs", {"config": config})
    run = body["run"]
    log_dir = Path(run["log_path"])
    log_dir.mkdir(parents=True)
    (log_dir / "train.log").write_text("hello")
    (log_dir / "page.html").write_text("<script>alert(1)</script>")
    base = f"/api/runs/{run['run_id']}/artifact?path="
    status, text, headers = server.request("GET", base + str(log_dir / "train.log"))
    assert status == 200 and text == b"hello" and headers["content-type"].startswith("text/plain")
    status, _, headers = server.request("GET", base + "train.log")
    assert status == 200
    status, _, headers = server.request("GET", base + "page.html")
    assert headers["content-type"] == "application/octet-stream"  # never rendered as a page
    assert "attachment" in headers["content-disposition"]
    (log_dir / "leak.log").symlink_to("/etc/passwd")  # a name inside that leads out
    for bad in ("/etc/passwd", "../../../../etc/passwd", str(server.settings.db_path), "leak.log"):
        assert server.request("GET", base + bad)[0] == 403
    assert server.request("GET", base + "missing.png")[0] == 404


def test_files_browse_info_and_thumbnail(server: LiveServer) -> None:
    root = server.settings.data_root
    (root / "vols").mkdir(exist_ok=True)
    np.save(root / "vols" / "cube.npy", np.arange(4 * 20 * 30, dtype=np.uint8).reshape(4, 20, 30))
    (root / "vols" / "notes.txt").write_text("x")
    (root / "vols" / "sub").mkdir(exist_ok=True)
    status, body, _ = server.request("GET", "/api/files?path=vols")
    assert status == 200 and body["path"] == "vols" and body["parent"] == ""
    entries = {e["name"]: e for e in body["entries"]}
    assert body["entries"][0]["kind"] == "dir"
    assert entries["cube.npy"]["volume"] is True and entries["notes.txt"]["volume"] is False
    assert entries["cube.npy"]["path"] == "vols/cube.npy"
    status, info, _ = server.request("GET", "/api/files/info?path=vols/cube.npy")
    assert info == {
        "path": "vols/cube.npy",
        "shape": [4, 20, 30],
        "dtype": "uint8",
        "format": "npy",
        "size_bytes": (root / "vols" / "cube.npy").stat().st_size,
    }
    status, png, headers = server.request("GET", "/api/files/thumbnail?path=vols/cube.npy&z=1")
    assert status == 200 and headers["content-type"] == "image/png" and png[:4] == b"\x89PNG"
    status, body, _ = server.request("GET", "/api/files/info?path=vols/notes.txt")
    assert status == 422 and body["error"]["code"] == "invalid_volume"
    assert server.request("GET", "/api/files/info?path=vols/none.npy")[0] == 404
    assert server.request("GET", "/api/files?path=vols/cube.npy")[0] == 404


def test_api_errors_are_json(server: LiveServer) -> None:
    status, body, _ = server.request("GET", "/api/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = server.request("DELETE", "/api/runs")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_the_browser_app_is_served_with_client_routes(server: LiveServer) -> None:
    status, page, _ = server.request("GET", "/")
    assert status == 200 and b"<title>app</title>" in page
    status, page, _ = server.request("GET", "/runs/abc")  # a client-side route
    assert status == 200 and b"<title>app</title>" in page
    status, script, _ = server.request("GET", "/assets/app.js")
    assert status == 200 and script == b"console.log(1)"
    assert server.request("GET", "/assets/missing.js")[0] == 404


def test_relative_config_paths_are_read_against_the_data_root(server: LiveServer) -> None:
    root = server.settings.data_root.resolve()
    config = yaml.safe_load(tiny_yaml(root, "relative"))
    config["DATASET"]["INPUT_PATH"] = "tiny"  # as the file browser shows it
    config["DATASET"]["OUTPUT_PATH"] = "out/relative-run"
    text = yaml.safe_dump(config)
    status, checked, _ = server.request("POST", "/api/config/validate", {"config": text})
    assert status == 200 and checked["ok"], checked["problems"]
    status, body, _ = server.request("POST", "/api/runs", {"config": text})
    assert status == 201, body
    assert body["run"]["output_path"] == str(root / "out" / "relative-run")
    _, shown, _ = server.request("GET", f"/api/runs/{body['run']['run_id']}")
    values = yaml.safe_load(shown["created"]["config"])
    assert values["DATASET"]["INPUT_PATH"] == str(root / "tiny")
