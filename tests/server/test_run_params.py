"""GET /api/runs/params: the runs table's hyperparameter columns, from each run's config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server.live import LiveServer, make_settings, tiny_yaml


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path_factory.mktemp("params"))).start()
    yield live
    live.stop()


def test_values_of_every_run_at_the_asked_keys(server: LiveServer) -> None:
    ids = []
    for name, lr in (("low", 0.001), ("high", 0.05)):
        config = tiny_yaml(server.settings.data_root, name, BASE_LR=lr)
        status, body, _ = server.request("POST", "/api/runs", {"config": config, "name": name})
        assert status == 201, body
        ids.append((body["run"]["run_id"], lr))
    keys = "SOLVER.BASE_LR,MODEL.FILTERS,NO.SUCH_KEY"
    status, body, _ = server.request("GET", f"/api/runs/params?keys={keys}")
    assert status == 200
    for run_id, lr in ids:
        assert body["params"][run_id] == {
            "SOLVER.BASE_LR": lr,
            "MODEL.FILTERS": "[4, 8]",
            "NO.SUCH_KEY": None,
        }


def test_too_many_keys_is_a_clear_400(server: LiveServer) -> None:
    keys = ",".join(f"A.K{i}" for i in range(40))
    status, body, _ = server.request("GET", f"/api/runs/params?keys={keys}")
    assert status == 400 and "at most 32 keys" in body["error"]["message"]
