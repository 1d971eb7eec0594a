"""The sweep interfaces on a real uvicorn server: REST /api/sweeps (a catalogue of bad
inputs, each a clear 400/404/409/422 that writes nothing), a sweep run to its end over
REST with its trial table and importances, and the WebSocket sweep commands and sweep
subscription. Trials run the synthetic trainer (a real spawned child, no torch)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets

from tests.server.live import TOKEN, LiveServer, make_settings, tiny_yaml


@dataclass
class Scene:
    server: LiveServer
    config: str


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    tmp = tmp_path_factory.mktemp("sweeps-api")
    options = {"flush_interval": 0.05, "synthetic": {"rate": 20, "seconds": 0.5}}
    server = LiveServer(make_settings(tmp, job_options=options)).start()
    try:
        yield Scene(server, tiny_yaml(server.settings.data_root, "sweep"))
    finally:
        server.stop()


def body(scene: Scene, **fields: Any) -> dict[str, Any]:
    return {
        "config": scene.config,
        "space": {"SOLVER.BASE_LR": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
        "objective": "min_val_loss",
        "trials": 2,
        "sampler": "random",
        **fields,
    }


LR = {"type": "float", "low": 1e-4, "high": 0.1}
BAD = [
    # (id, changes to a good body, status, a phrase of the message)
    ("budget-0", {"trials": 0}, 400, "'trials' must be an integer from 1"),
    ("budget-missing", {"trials": None}, 400, "'trials' is required"),
    ("parallel-0", {"parallel": 0}, 400, "'parallel' must be an integer"),
    ("unknown-field", {"budget": 3}, 400, "unknown field(s) 'budget'"),
    ("no-space", {"space": {}}, 400, "'space' must map config keys"),
    ("bad-key", {"space": {"lr": LR}}, 400, "a config key like SOLVER.BASE_LR"),
    ("unknown-key", {"space": {"SOLVER.BASE_LRR": LR}}, 422, "did you mean SOLVER.BASE_LR"),
    ("low-above-high", {"space": {"SOLVER.BASE_LR": {**LR, "low": 1, "high": 0.1}}}, 400, "below"),
    ("log-of-0", {"space": {"SOLVER.BASE_LR": {**LR, "low": 0, "log": True}}}, 400, "'low' > 0"),
    ("unknown-type", {"space": {"SOLVER.BASE_LR": {"type": "normal"}}}, 400, "'type' must be"),
    (
        "wrong-value-type",
        {"space": {"SOLVER.SAMPLES_PER_BATCH": {"type": "choice", "choices": ["a", "b"]}}},
        422,
        "expected an integer",
    ),
    ("empty-choices", {"space": {"SOLVER.NAME": {"type": "choice", "choices": []}}}, 400, "1 to"),
    ("grid-of-floats", {"sampler": "grid"}, 400, "grid sampler needs"),
    (
        "grid-too-small",
        {
            "sampler": "grid",
            "trials": 3,
            "space": {"SOLVER.NAME": {"type": "choice", "choices": ["SGD", "Adam"]}},
        },
        400,
        "the grid has 2 point(s)",
    ),
    ("unknown-objective", {"objective": "max_iou"}, 400, "'objective' must be one of"),
    ("unknown-pruner", {"pruner": "hyperband"}, 400, "'pruner' must be one of"),
    ("no-config", {"config": None}, 400, "'config'"),
]


@pytest.mark.parametrize(
    ("changes", "status", "phrase"), [r[1:] for r in BAD], ids=[r[0] for r in BAD]
)
def test_a_bad_sweep_is_refused_clearly(
    scene: Scene, changes: dict[str, Any], status: int, phrase: str
) -> None:
    before = scene.server.ctx.store.last_seq
    request = {k: v for k, v in {**body(scene), **changes}.items() if v is not None}
    got, answer, _ = scene.server.request("POST", "/api/sweeps", request)
    assert got == status, answer
    assert phrase in answer["error"]["message"]
    assert scene.server.ctx.store.last_seq == before  # nothing written


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/sweeps/sweep-000000000000", 404, "not_found"),
        ("POST", "/api/sweeps/sweep-000000000000/stop", 404, "not_found"),
        ("GET", "/api/sweeps/sweep-000000000000/importances", 404, "not_found"),
        ("DELETE", "/api/sweeps", 405, "method_not_allowed"),
    ],
)
def test_unknown_sweeps_and_methods(
    scene: Scene, method: str, path: str, status: int, code: str
) -> None:
    got, answer, _ = scene.server.request(method, path, {} if method == "POST" else None)
    assert (got, answer["error"]["code"]) == (status, code)


def wait_for(scene: Scene, sweep_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, answer, _ = scene.server.request("GET", f"/api/sweeps/{sweep_id}")
        assert status == 200
        if answer["sweep"]["state"] in states:
            return dict(answer["sweep"])
        time.sleep(0.2)
    raise TimeoutError(f"sweep {sweep_id} never reached {states}")


def test_a_sweep_over_rest_to_its_end(scene: Scene) -> None:
    status, created, _ = scene.server.request("POST", "/api/sweeps", {**body(scene), "id": "s1"})
    assert status == 201, created
    sweep_id = created["sweep"]["sweep_id"]
    assert created["event"]["type"] == "sweep_created"
    again = scene.server.request("POST", "/api/sweeps", {**body(scene), "id": "s1"})
    assert again[0] == 201 and again[1]["sweep"]["sweep_id"] == sweep_id  # the same sweep
    status, early, _ = scene.server.request("GET", f"/api/sweeps/{sweep_id}/importances")
    assert status == 400 and "at least 2 complete trials" in early["error"]["message"]
    # The synthetic trainer validates nothing: report each trial's validation as it runs.
    reported: set[str] = set()
    deadline = time.monotonic() + 120
    while wait_for(scene, sweep_id, ("Running", "Complete", "Stopped"))["state"] == "Running":
        assert time.monotonic() < deadline
        _, table, _ = scene.server.request("GET", f"/api/sweeps/{sweep_id}/trials")
        for row in table["trials"]:
            if row["run_state"] == "Training" and row["run_id"] not in reported:
                loss = row["params"]["SOLVER.BASE_LR"]
                scene.server.record(row["run_id"], [("validation", {"iteration": 1, "loss": loss})])
                reported.add(row["run_id"])
        time.sleep(0.05)
    summary = wait_for(scene, sweep_id, ("Complete",))
    assert (summary["asked"], summary["done"], summary["budget"]) == (2, 2, 2)
    _, table, _ = scene.server.request("GET", f"/api/sweeps/{sweep_id}/trials")
    rows = table["trials"]
    assert [r["number"] for r in rows] == [0, 1]
    told = [r for r in rows if r["state"] == "complete"]
    assert all(r["value"] == r["params"]["SOLVER.BASE_LR"] for r in told)
    if len(told) == 2:
        assert rows[1]["best_so_far"] == min(r["value"] for r in told)
        status, found, _ = scene.server.request("GET", f"/api/sweeps/{sweep_id}/importances")
        assert status == 200 and set(found["importances"]) == {"SOLVER.BASE_LR"}
    status, listed, _ = scene.server.request("GET", "/api/sweeps")
    assert sweep_id in [s["sweep_id"] for s in listed["sweeps"]]
    _, run, _ = scene.server.request("GET", f"/api/runs/{rows[0]['run_id']}")
    assert run["run"]["sweep"]["id"] == sweep_id
    status, refused, _ = scene.server.request("POST", f"/api/sweeps/{sweep_id}/stop", {})
    assert status == 409 and refused["error"]["code"] == "illegal_command"


@pytest.mark.anyio
async def test_websocket_sweep_commands_and_subscription(scene: Scene) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with websockets.connect(scene.server.ws_url, additional_headers=auth) as ws:
        await ws.recv()  # hello
        frame = {"type": "command", "id": "ws-sweep-1", "command": "sweep_create"}
        await ws.send(json.dumps({**frame, "data": body(scene, trials=1)}))
        result = await _frame(ws, "result")
        assert result["ok"], result
        sweep_id = result["sweep"]["sweep_id"]
        await ws.send(json.dumps({"type": "subscribe", "sweep_id": sweep_id, "after": 0}))
        await _frame(ws, "subscribed")
        stop = {"type": "command", "id": "ws-stop-1", "command": "sweep_stop", "sweep_id": sweep_id}
        await ws.send(json.dumps(stop))
        seen: list[str] = []
        while "sweep_stopped" not in seen and "sweep_completed" not in seen:
            got = await _frame(ws, "events", "result")
            if got["type"] == "events":
                assert {e["run_id"] for e in got["events"]} == {sweep_id}
                seen += [e["type"] for e in got["events"]]
        assert seen[0] == "sweep_created" and "sweep_stop_requested" in seen
        await ws.send(json.dumps({"type": "subscribe", "sweep_id": "sweep-nope", "after": 0}))
        error = await _frame(ws, "error")
        assert error["error"]["code"] == "not_found"


async def _frame(ws: Any, *types: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] in types:
            return frame


@pytest.mark.anyio
async def test_an_all_runs_subscription_carries_sweeps_when_asked(scene: Scene) -> None:
    """`sweeps: true` (the browser's runs and sweep pages): every run's and every sweep's
    events, in seq order, history then live; without it, runs only."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        websockets.connect(scene.server.ws_url, additional_headers=auth) as both,
        websockets.connect(scene.server.ws_url, additional_headers=auth) as runs,
    ):
        after = json.loads(await both.recv())["last_seq"]
        await runs.recv()
        await both.send(
            json.dumps({"type": "subscribe", "run_id": None, "after": after, "sweeps": True})
        )
        assert (await _frame(both, "subscribed")).get("sweeps") is True
        await runs.send(json.dumps({"type": "subscribe", "run_id": None, "after": after}))
        await _frame(runs, "subscribed")
        await _frame(both, "caught_up")
        await _frame(runs, "caught_up")
        status, made, _ = scene.server.request("POST", "/api/sweeps", body(scene, trials=1))
        assert status == 201, made
        sweep_id = made["sweep"]["sweep_id"]

        async def streams(ws: Any) -> tuple[list[int], set[str]]:
            seqs: list[int] = []
            ids: set[str] = set()
            while True:
                frame = await _frame(ws, "events")
                seqs += [e["seq"] for e in frame["events"]]
                ids |= {e["run_id"] for e in frame["events"]}
                if any(e["type"] == "sweep_completed" for e in frame["events"]):
                    return seqs, ids
                if ws is runs and any(e["type"] == "completed" for e in frame["events"]):
                    return seqs, ids

        seqs, ids = await streams(both)
        assert seqs == sorted(seqs) and len(ids) == 2 and sweep_id in ids
        _, ids = await streams(runs)
        assert sweep_id not in ids and len(ids) == 1
        for bad in ({"run_id": sweep_id, "sweeps": True}, {"run_id": None, "sweeps": 1}):
            await both.send(json.dumps({"type": "subscribe", "after": 0, **bad}))
            error = await _frame(both, "error")
            assert error["error"]["code"] == "bad_frame" and "'sweeps'" in error["error"]["message"]
