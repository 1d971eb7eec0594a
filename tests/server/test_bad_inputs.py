"""The bad-input catalogue (issue 8 §3): what a careless or hostile client, written from
docs/protocol.md alone, might send, one row per request.

Every row is sent to a real uvicorn server and asserts the documented refusal (status,
error code, a message that says what to do: never 500), that nothing was written (the
store's last seq and every file and folder around the data root unchanged) and that the
server still answers. Rows naming `<idle>`, `<training>`, `<tiny>`... are filled in from
the scene the module fixture builds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import websockets
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.wire import MAX_DEPTH
from tests.server.live import TOKEN, LiveServer, http, make_settings, tiny_yaml
from tests.server.test_security import multipart

LONG = "n" * 300  # one name over NAME_MAX (255 bytes): ENAMETOOLONG if it reached the OS
DEEP_ARRAY = "[" * 30_000 + "]" * 30_000
DEEP_OBJECT = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Scene:
    """What the rows refer to: runs, config texts, folders."""

    server: LiveServer
    tmp: Path
    idle: str
    training: str
    texts: dict[str, str]

    def fill(self, text: str) -> str:
        for name, value in (("<idle>", self.idle), ("<training>", self.training)):
            text = text.replace(name, value)
        return text.replace("<long>", LONG)

    def fill_body(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.texts.get(value, value)
        if isinstance(value, dict):
            return {k: self.fill_body(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill_body(v) for v in value]
        return value

    def snapshot(self) -> tuple[int, list[tuple[str, int]]]:
        """The store's position and every file (name, size) under the scene's folder."""
        files = [
            (str(p.relative_to(self.tmp)), p.lstat().st_size if not p.is_dir() else -1)
            for p in sorted(self.tmp.rglob("*"))
            if not p.name.startswith("events.db")
        ]
        return self.server.ctx.store.last_seq, files


def _config(data_root: Path, name: str, **changes: Any) -> str:
    tree = yaml.safe_load(tiny_yaml(data_root, name))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        tree[section][key] = value
    return yaml.safe_dump(tree, sort_keys=False)


def _crafted_volumes(folder: Path) -> None:
    """Files that claim to be volumes and are not quite: what an upload could bring."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000, 100000), }"
    header = header.ljust(117) + "\n"
    lying = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    (folder / "lying.npy").write_bytes(lying + b"\x00" * 64)  # 8 PB promised, 64 B given
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (folder / "empty.npy").write_bytes(b"")
    np.save(folder / "line.npy", np.zeros(7, dtype=np.uint8))
    np.save(folder / "no_slices.npy", np.zeros((0, 5, 5), dtype=np.uint8))
    np.save(folder / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.log").write_text("secret")
    settings = make_settings(tmp, max_json_bytes=64 * 1024, max_upload_bytes=4096)
    root = settings.data_root
    (root / "vols").mkdir(parents=True)
    np.save(root / "vols" / "cube.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    (root / "vols" / "notes.txt").write_text("not a volume")
    (root / "vols" / "fake.h5").write_text("not HDF5")
    _crafted_volumes(root / "vols")
    with h5py.File(root / "vols" / "v.h5", "w") as h5:
        h5["main"] = np.zeros((2, 8, 8), dtype=np.uint8)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    server = LiveServer(settings).start()
    try:
        texts = {
            "<tiny>": _config(root, "tiny"),
            "<free>": _config(root, "free"),  # an output folder no run owns
            "<tiny:inf-lr>": _config(root, "inf", SOLVER__BASE_LR=float("inf")),
            "<tiny:huge-lr>": _config(root, "huge", SOLVER__BASE_LR=1e300).replace(
                "1.0e+300", "1e400"
            ),
            "<tiny:nan-mean>": _config(root, "nan", DATASET__MEAN=float("nan")),
            "<tiny:outside>": _config(root, "outside", DATASET__INPUT_PATH=str(outside)),
        }
        assert "1e400" in texts["<tiny:huge-lr>"]
        status, body, _ = server.request("POST", "/api/runs", {"config": texts["<tiny>"]})
        assert status == 201, body
        idle = body["run"]["run_id"]
        log_dir = Path(body["run"]["log_path"])
        log_dir.mkdir(parents=True)
        (log_dir / "train.log").write_text("hello")
        (log_dir / "leak.log").symlink_to(outside / "secret.log")  # leads out of the run
        yield Scene(server, tmp, idle, server.synthetic_run("training"), texts)
    finally:
        server.stop()


def assert_still_up(scene: Scene) -> None:
    assert scene.server.request("GET", "/api/health")[0] == 200


# --- REST -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One request and its documented refusal."""

    id: str
    method: str
    path: str
    status: int
    code: str | None
    says: tuple[str, ...] = ()  # fragments the message must contain (any case)
    body: Any = None  # JSON, placeholders filled
    raw: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    token: str | None = TOKEN
    problem: str | None = None  # a config key the answer must name as an error


def _upload(name: str, content: bytes = b"abc", field_name: str = "file") -> dict[str, Any]:
    raw, headers = multipart(name, content, field_name)
    return {"raw": raw, "headers": headers}


def _two_files() -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.npy"\r\n'
        "\r\nabc\r\n"
    )
    raw = (part + part + f"--{boundary}--\r\n").encode()
    return {"raw": raw, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def _truncated() -> dict[str, Any]:
    raw, headers = multipart("cut.npy", b"abc")
    return {"raw": raw[: raw.rindex(b"\r\n--")], "headers": headers}


# The six routes that take a path from the client, each with a name over 255 bytes at the
# top and one folder down (ENAMETOOLONG was a 500 on all twelve).
_LONG_NAMES = [
    Bad(f"{route.split('?')[0]}:{where}", method, route.replace("<p>", path), 400, "bad_path",
        ("255",), body=({"path": path} if method == "POST" and "check" in route else None),
        **(_upload("x.npy") if "upload" in route else {}))
    for method, route in [
        ("GET", "/api/files?path=<p>"),
        ("GET", "/api/files/info?path=<p>"),
        ("GET", "/api/files/thumbnail?path=<p>"),
        ("POST", "/api/paths/check"),
        ("POST", "/api/files/upload?dir=<p>"),
        ("GET", "/api/runs/<idle>/artifact?path=<p>"),
    ]
    for where, path in [("top", LONG), ("nested", f"vols/{LONG}/x.npy")]
]  # fmt: skip

_DEEP = [
    Bad(f"deep array {path}", "POST", path, 400, "bad_request", ("nested deeper",),
        raw=DEEP_ARRAY.encode(), headers=JSON)
    for path in ("/api/runs", "/api/config/validate", "/api/paths/check", "/api/runs/<idle>/start")
] + [
    Bad("deep object", "POST", "/api/runs", 400, "bad_request", ("nested deeper", "a.a.a"),
        raw=DEEP_OBJECT.encode(), headers=JSON),
]  # fmt: skip

_NON_FINITE = [
    Bad("NaN literal", "POST", "/api/config/validate", 400, "bad_request", ("NaN", "column 12"),
        raw=b'{"config": NaN}', headers=JSON),
    Bad("Infinity literal", "POST", "/api/runs", 400, "bad_request", ("Infinity", "finite"),
        raw=b'{"config": "x", "seed": Infinity}', headers=JSON),
    Bad("-Infinity literal", "POST", "/api/paths/check", 400, "bad_request", ("Infinity",),
        raw=b'{"path": -Infinity}', headers=JSON),
    Bad("overflowing number", "POST", "/api/runs", 400, "bad_request", ("too large",),
        raw=b'{"config": "x", "seed": 1e400}', headers=JSON),
    Bad("NaN in a command body", "POST", "/api/runs/<idle>/start", 400, "bad_request", ("NaN",),
        raw=b'{"id": NaN}', headers=JSON),
    # The config's own non-finite values: validate answers 200 with the problem...
    Bad("validate BASE_LR .inf", "POST", "/api/config/validate", 200, None,
        body={"config": "<tiny:inf-lr>"}, problem="SOLVER.BASE_LR"),
    Bad("validate BASE_LR 1e400", "POST", "/api/config/validate", 200, None,
        body={"config": "<tiny:huge-lr>"}, problem="SOLVER.BASE_LR"),
    Bad("validate MEAN .nan", "POST", "/api/config/validate", 200, None,
        body={"config": "<tiny:nan-mean>"}, problem="DATASET.MEAN"),
    Bad("validate override inf", "POST", "/api/config/validate", 200, None,
        body={"config": "<tiny>", "overrides": ["SOLVER.BASE_LR", "inf"]},
        problem="SOLVER.BASE_LR"),
    # ... and create refuses them, storing nothing.
    Bad("create BASE_LR .inf", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "<tiny:inf-lr>"}, problem="SOLVER.BASE_LR"),
    Bad("create BASE_LR 1e400", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "<tiny:huge-lr>"}, problem="SOLVER.BASE_LR"),
    Bad("create MEAN .nan", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "<tiny:nan-mean>"}, problem="DATASET.MEAN"),
    Bad("create override inf", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "<free>", "overrides": ["SOLVER.BASE_LR", "inf"]},
        problem="SOLVER.BASE_LR"),
    Bad("create override nan", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "<free>", "overrides": ["SOLVER.BASE_LR", ".nan"]},
        problem="SOLVER.BASE_LR"),
]  # fmt: skip

_BODIES = [
    Bad("not JSON", "POST", "/api/runs", 400, "bad_request", ("not valid JSON",),
        raw=b"{config: 1}", headers=JSON),
    Bad("not UTF-8", "POST", "/api/runs", 400, "bad_request", ("UTF-8",),
        raw=b'{"config": "\xff"}', headers=JSON),
    Bad("lone surrogate", "POST", "/api/paths/check", 400, "bad_request", ("surrogate",),
        raw=b'{"path": "\\ud800"}', headers=JSON),
    Bad("trailing garbage", "POST", "/api/runs", 400, "bad_request", ("not valid JSON",),
        raw=b'{"config": "x"} {}', headers=JSON),
    Bad("array body", "POST", "/api/runs", 400, "bad_request", ("JSON object", "array"),
        raw=b"[]", headers=JSON),
    Bad("string body", "POST", "/api/config/validate", 400, "bad_request", ("JSON object",),
        raw=b'"config"', headers=JSON),
    Bad("number body", "POST", "/api/paths/check", 400, "bad_request", ("JSON object",),
        raw=b"5", headers=JSON),
    Bad("null body", "POST", "/api/runs/<idle>/start", 400, "bad_request", ("JSON object",),
        raw=b"null", headers=JSON),
    Bad("empty create", "POST", "/api/runs", 400, "bad_request", ("config",), raw=b""),
    Bad("empty validate", "POST", "/api/config/validate", 400, "bad_request", ("config",),
        raw=b""),
    Bad("empty path check", "POST", "/api/paths/check", 400, "bad_request", ("path",), raw=b""),
    Bad("body over the limit", "POST", "/api/config/validate", 413, "too_large", ("bytes",),
        body={"config": "x" * 70_000}),
    Bad("upload over the limit", "POST", "/api/files/upload?dir=vols", 413, "too_large",
        ("limit",), **_upload("big.npy", b"x" * 5000)),
]  # fmt: skip

_BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

_CREATE_FIELDS = [
    Bad("unknown field", "POST", "/api/runs", 400, "bad_request", ("overide", "overrides"),
        body={"config": "<free>", "overide": ["SOLVER.BASE_LR", "0.1"]}),
    Bad("unknown field, no near name", "POST", "/api/runs", 400, "bad_request", ("colour",),
        body={"config": "<free>", "colour": "red"}),
    Bad("config missing", "POST", "/api/runs", 400, "bad_request", ("config",),
        body={"name": "x"}),
    Bad("config a number", "POST", "/api/runs", 400, "bad_request", ("config",),
        body={"config": 5}),
    Bad("config a list", "POST", "/api/runs", 400, "bad_request", ("config",),
        body={"config": ["SOLVER:"]}),
    Bad("name a number", "POST", "/api/runs", 400, "bad_request", ("name",),
        body={"config": "<free>", "name": 5}),
    Bad("base a number", "POST", "/api/runs", 400, "bad_request", ("base",),
        body={"config": "<free>", "base": 5}),
    Bad("overrides a string", "POST", "/api/runs", 400, "bad_request", ("overrides",),
        body={"config": "<free>", "overrides": "SOLVER.BASE_LR 0.1"}),
    Bad("overrides of bools", "POST", "/api/runs", 400, "bad_request", ("overrides",),
        body={"config": "<free>", "overrides": ["MODEL.ISOTROPY", True]}),
    Bad("overrides of objects", "POST", "/api/runs", 400, "bad_request", ("overrides",),
        body={"config": "<free>", "overrides": [{"SOLVER.BASE_LR": "0.1"}]}),
    Bad("log_path a number", "POST", "/api/runs", 400, "bad_request", ("log_path",),
        body={"config": "<free>", "log_path": 5}),
    Bad("seed a string", "POST", "/api/runs", 400, "bad_request", ("seed",),
        body={"config": "<free>", "seed": "7"}),
    Bad("seed negative", "POST", "/api/runs", 400, "bad_request", ("seed",),
        body={"config": "<free>", "seed": -1}),
    Bad("seed too big", "POST", "/api/runs", 400, "bad_request", ("seed",),
        body={"config": "<free>", "seed": 2**33}),
    Bad("seed a bool", "POST", "/api/runs", 400, "bad_request", ("seed",),
        body={"config": "<free>", "seed": True}),
    Bad("seed a float", "POST", "/api/runs", 400, "bad_request", ("seed",),
        body={"config": "<free>", "seed": 1.5}),
    Bad("id a number", "POST", "/api/runs", 400, "bad_request", ("id",),
        body={"config": "<free>", "id": 5}),
    Bad("id empty", "POST", "/api/runs", 400, "bad_request", ("id",),
        body={"config": "<free>", "id": ""}),
    Bad("id too long", "POST", "/api/runs", 400, "bad_request", ("128",),
        body={"config": "<free>", "id": "x" * 129}),
    Bad("config not YAML", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "SOLVER: [unclosed"}),
    Bad("config a YAML list", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "- 1\n- 2\n"}),
    Bad("config with a Python tag", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "SOLVER: !!python/object/apply:os.system ['true']\n"}),
    Bad("config with a NUL", "POST", "/api/runs", 422, "invalid_config", ("character",),
        body={"config": "SOLVER:\n  BASE_LR: 0.1\x00\n"}),
    Bad("config nested 10000 deep", "POST", "/api/runs", 422, "invalid_config",
        ("nested too deeply",), body={"config": "[" * 10_000}),
    Bad("config of aliases of aliases", "POST", "/api/runs", 422, "invalid_config",
        ("aliases",), body={"config": _BILLION_LAUGHS}),
    Bad("output folder of another run", "POST", "/api/runs", 409, "output_in_use",
        ("reuse_output",), body={"config": "<tiny>"}),
    Bad("unknown config key", "POST", "/api/runs", 422, "invalid_config",
        body={"config": "<free>", "overrides": ["SOLVER.BASE_LRR", "0.1"]},
        problem="SOLVER.BASE_LRR"),
]  # fmt: skip

_OTHER_FIELDS = [
    Bad("validate a config with a NUL", "POST", "/api/config/validate", 200, None,
        body={"config": "SOLVER:\n  BASE_LR: 0.1\x00\n"}, problem=""),
    Bad("validate base a number", "POST", "/api/config/validate", 400, "bad_request", ("base",),
        body={"config": "x: 1", "base": 5}),
    Bad("validate overrides of bools", "POST", "/api/config/validate", 400, "bad_request",
        ("overrides",), body={"config": "x: 1", "overrides": ["MODEL.ISOTROPY", False]}),
    Bad("validate overrides of lists", "POST", "/api/config/validate", 400, "bad_request",
        ("overrides",), body={"config": "x: 1", "overrides": [["SOLVER.BASE_LR"], ["1"]]}),
    Bad("validate unknown field", "POST", "/api/config/validate", 400, "bad_request",
        ("overide", "overrides"), body={"config": "x: 1", "overide": ["SOLVER.BASE_LR", "1"]}),
    Bad("path check unknown field", "POST", "/api/paths/check", 400, "bad_request",
        ("pth", "'path'"), body={"pth": "out"}),
    Bad("command unknown field", "POST", "/api/runs/<idle>/start", 400, "bad_request",
        ("force",), body={"force": True}),
    Bad("command id misspelt", "POST", "/api/runs/<idle>/start", 400, "bad_request",
        ("'ids'", "did you mean 'id'"), body={"ids": "abc"}),
    Bad("validate overrides an object", "POST", "/api/config/validate", 400, "bad_request",
        ("overrides",), body={"config": "x: 1", "overrides": {"SOLVER.BASE_LR": 1}}),
    Bad("preview count 0", "POST", "/api/augment/preview", 400, "bad_request", ("count",),
        body={"config": "<tiny>", "count": 0}),
    Bad("preview count 9", "POST", "/api/augment/preview", 400, "bad_request", ("count",),
        body={"config": "<tiny>", "count": 9}),
    Bad("preview count a bool", "POST", "/api/augment/preview", 400, "bad_request", ("count",),
        body={"config": "<tiny>", "count": True}),
    Bad("preview seed a string", "POST", "/api/augment/preview", 400, "bad_request", ("seed",),
        body={"config": "<tiny>", "seed": "1"}),
    Bad("preview unknown field", "POST", "/api/augment/preview", 400, "bad_request",
        ("did you mean 'count'",), body={"config": "<tiny>", "counts": 2}),
    Bad("preview without config", "POST", "/api/augment/preview", 400, "bad_request",
        ("config",), body={}),
    Bad("preview of a config that is not YAML", "POST", "/api/augment/preview", 422,
        "invalid_config", body={"config": "SOLVER: [unclosed"}),
    Bad("preview of data outside", "POST", "/api/augment/preview", 403, "outside_data_root",
        body={"config": "<tiny:outside>"}),
    Bad("preview NaN", "POST", "/api/augment/preview", 400, "bad_request", ("NaN",),
        raw=b'{"config": "x", "seed": NaN}', headers=JSON),
    Bad("path check without path", "POST", "/api/paths/check", 400, "bad_request", ("path",),
        body={}),
    Bad("path check path a number", "POST", "/api/paths/check", 400, "bad_request", ("path",),
        body={"path": 5}),
    Bad("path check empty path", "POST", "/api/paths/check", 400, "bad_request", ("path",),
        body={"path": ""}),
    Bad("command id a number", "POST", "/api/runs/<idle>/start", 400, "bad_request", ("id",),
        body={"id": 5}),
    Bad("command id too long", "POST", "/api/runs/<idle>/start", 400, "bad_request", ("128",),
        body={"id": "x" * 129}),
    Bad("command on an unknown run", "POST", "/api/runs/nope/start", 404, "not_found",
        ("/api/runs",), body={}),
    Bad("stop an idle run", "POST", "/api/runs/<idle>/stop", 409, "illegal_command",
        ("start",), body={}),
    Bad("resume an idle run", "POST", "/api/runs/<idle>/resume", 409, "illegal_command",
        ("start",), body={}),
    Bad("start a training run", "POST", "/api/runs/<training>/start", 409, "illegal_command",
        ("stop",), body={}),
]  # fmt: skip

_QUERIES = [
    Bad(f"{route} {query}", "GET", f"{route}?{query}", 400, "bad_request", (name,))
    for route in ("/api/events", "/api/runs/<training>/events")
    for query, name in [
        ("after=-1", "after"), ("after=abc", "after"), ("after=1.5", "after"),
        ("after=99999999999999999999", "after"), ("limit=0", "limit"), ("limit=abc", "limit"),
        ("limit=10001", "limit"), ("limit=-5", "limit"),
    ]
] + [
    Bad("events of an unknown run", "GET", "/api/runs/nope/events", 404, "not_found"),
    Bad("export format xml", "GET", "/api/runs/<idle>/export?format=xml", 400, "bad_request",
        ("jsonl", "csv")),
    Bad("export of an unknown run", "GET", "/api/runs/nope/export", 404, "not_found"),
    Bad("thumbnail size abc", "GET", "/api/files/thumbnail?path=vols/cube.npy&size=abc", 400,
        "bad_request", ("size",)),
    Bad("thumbnail size 5", "GET", "/api/files/thumbnail?path=vols/cube.npy&size=5", 400,
        "bad_request", ("size",)),
    Bad("thumbnail z abc", "GET", "/api/files/thumbnail?path=vols/cube.npy&z=abc", 400,
        "bad_request", ("z",)),
    Bad("thumbnail z out of range", "GET", "/api/files/thumbnail?path=vols/cube.npy&z=99", 422,
        "invalid_volume", ("99",)),
    Bad("thumbnail without path", "GET", "/api/files/thumbnail", 400, "bad_request", ("path",)),
    Bad("info without path", "GET", "/api/files/info", 400, "bad_request", ("path",)),
    Bad("artifact without path", "GET", "/api/runs/<idle>/artifact", 400, "bad_request",
        ("path",)),
    Bad("diagram of an unknown run", "GET", "/api/runs/nope/diagram", 404, "not_found"),
    Bad("unknown run", "GET", "/api/runs/nope", 404, "not_found", ("/api/runs",)),
]  # fmt: skip

_PATHS = [
    *_LONG_NAMES,
    Bad("path over 4096 bytes", "GET", "/api/files?path=" + "a/" * 2100, 400, "bad_path",
        ("4096",)),
    Bad("NUL in a path", "GET", "/api/files/info?path=vols/a%00.npy", 400, "bad_path", ("NUL",)),
    Bad("NUL in a checked path", "POST", "/api/paths/check", 400, "bad_path", ("NUL",),
        body={"path": "out/\u0000x"}),
    Bad("dotdot", "GET", "/api/files?path=..", 403, "outside_data_root", ("data root",)),
    Bad("dotdot backslash", "GET", "/api/files?path=vols\\..\\..", 403, "outside_data_root"),
    Bad("absolute outside", "GET", "/api/files/info?path=/etc/passwd", 403, "outside_data_root"),
    Bad("symlink out", "GET", "/api/files?path=escape", 403, "outside_data_root"),
    Bad("through a symlink out", "GET", "/api/files/info?path=escape/secret.log", 403,
        "outside_data_root"),
    Bad("check outside", "POST", "/api/paths/check", 403, "outside_data_root", body={"path": "/"}),
    Bad("browse a file", "GET", "/api/files?path=vols/cube.npy", 404, "not_found", ("folder",)),
    Bad("browse a missing folder", "GET", "/api/files?path=nothere", 404, "not_found"),
    Bad("invalid percent-encoding", "GET", "/api/files?path=%ff", 404, "not_found"),
    Bad("info of a missing file", "GET", "/api/files/info?path=vols/none.npy", 404, "not_found"),
    Bad("info of a non-volume", "GET", "/api/files/info?path=vols/notes.txt", 422,
        "invalid_volume"),
    Bad("info of a folder", "GET", "/api/files/info?path=vols", 422, "invalid_volume"),
    Bad("missing HDF5 dataset", "GET", "/api/files/info?path=vols/v.h5:nothere", 422,
        "invalid_volume", ("nothere",)),
    Bad("not HDF5 inside", "GET", "/api/files/info?path=vols/fake.h5", 422, "invalid_volume"),
    *[
        Bad(f"{route} of {name}", "GET", f"/api/files/{route}?path=vols/{name}", 422,
            "invalid_volume", ("vols/" + name,))
        for name in ("lying.npy", "truncated.png", "empty.npy", "line.npy", "pickled.npy")
        for route in ("info", "thumbnail")
    ],
    Bad("thumbnail of no slices", "GET", "/api/files/thumbnail?path=vols/no_slices.npy", 422,
        "invalid_volume"),
    Bad("artifact symlink out", "GET", "/api/runs/<idle>/artifact?path=leak.log", 403,
        "forbidden", ("inside the run",)),
    Bad("artifact dotdot", "GET", "/api/runs/<idle>/artifact?path=../../../outside/secret.log",
        403, "forbidden"),
    Bad("artifact absolute outside", "GET", "/api/runs/<idle>/artifact?path=/etc/passwd", 403,
        "forbidden"),
    Bad("artifact NUL", "GET", "/api/runs/<idle>/artifact?path=a%00.log", 400, "bad_path"),
    Bad("artifact missing", "GET", "/api/runs/<idle>/artifact?path=none.png", 404, "not_found"),
    Bad("artifact of an unknown run", "GET", "/api/runs/nope/artifact?path=x", 404, "not_found"),
]  # fmt: skip

_UPLOADS = [
    Bad("upload not multipart", "POST", "/api/files/upload", 400, "bad_request",
        ("multipart/form-data",), raw=b"abc", headers={"content-type": "text/plain"}),
    Bad("upload without boundary", "POST", "/api/files/upload", 400, "bad_request",
        ("multipart/form-data",), raw=b"abc", headers={"content-type": "multipart/form-data"}),
    Bad("upload in another field", "POST", "/api/files/upload", 400, "bad_request",
        ("'file'",), **_upload("a.npy", field_name="data")),
    Bad("upload two files", "POST", "/api/files/upload?dir=vols", 400, "bad_request", ("one file",),
        **_two_files()),
    Bad("upload cut short", "POST", "/api/files/upload?dir=vols", 400, "bad_request",
        **_truncated()),
    Bad("upload a script", "POST", "/api/files/upload", 415, "unsupported_type", (".npy",),
        **_upload("run.sh")),
    Bad("upload with an endless part header", "POST", "/api/files/upload?dir=vols", 400,
        "bad_request", ("header size",), **_upload("x" * 20_000 + ".npy")),
    Bad("upload named ..", "POST", "/api/files/upload", 415, "unsupported_type",
        **_upload("..")),
    Bad("upload named ../..", "POST", "/api/files/upload", 415, "unsupported_type",
        **_upload("../../")),
    Bad("upload with an empty name", "POST", "/api/files/upload", 415, "unsupported_type",
        **_upload("")),
    Bad("upload named .npy", "POST", "/api/files/upload", 415, "unsupported_type",
        **_upload(".npy")),
    Bad("upload NUL hides a script", "POST", "/api/files/upload", 415, "unsupported_type",
        **_upload("x.npy\u0000.sh")),
    Bad("upload into a file", "POST", "/api/files/upload?dir=vols/cube.npy", 404, "not_found",
        **_upload("a.npy")),
    Bad("upload into a missing folder", "POST", "/api/files/upload?dir=nothere", 404,
        "not_found", **_upload("a.npy")),
    Bad("upload outside", "POST", "/api/files/upload?dir=..", 403, "outside_data_root",
        **_upload("a.npy")),
    Bad("upload through a symlink out", "POST", "/api/files/upload?dir=escape", 403,
        "outside_data_root", **_upload("a.npy")),
    Bad("upload NUL dir", "POST", "/api/files/upload?dir=vols%00", 400, "bad_path",
        **_upload("a.npy")),
]  # fmt: skip

# Names that are accepted once made safe: (the client's name, the name stored).
_SANITISED = [
    ("../../../etc/x.npy", "x.npy"),
    ("..\\..\\x.npy", "x.npy"),
    ("a\u0000b.npy", "a_b.npy"),
    ("/abs/path/y.yaml", "y.yaml"),
    ("...hidden.npy", "hidden.npy"),
    ("n" * 300 + ".tif", "n" * 196 + ".tif"),
    ("é vol (1).h5", "vol_1_.h5"),
    ("%2e%2e%2fz.npy", "2e_2e_2fz.npy"),
]


@pytest.mark.parametrize(("name", "stored"), _SANITISED, ids=[n for n, _ in _SANITISED])
def test_upload_names_are_made_safe(scene: Scene, name: str, stored: str) -> None:
    folder = scene.server.settings.data_root / "vols"
    before = set(folder.iterdir())
    status, body, _ = scene.server.request(
        "POST", "/api/files/upload?dir=vols", **_upload(name, b"abc")
    )
    try:
        assert status == 201, body
        assert body["path"] == f"vols/{stored}"
        assert set(folder.iterdir()) - before == {folder / stored}
        assert (folder / stored).read_bytes() == b"abc"
    finally:
        (folder / stored).unlink(missing_ok=True)


_ROUTES_AND_AUTH = [
    Bad("unknown route", "GET", "/api/nothing", 404, "not_found", ("docs/protocol.md",)),
    Bad("the API root", "GET", "/api/", 404, "not_found", ("docs/protocol.md",)),
    Bad("POST a page", "POST", "/", 405, "method_not_allowed", ("use GET",), body={}),
    Bad("a missing page file", "GET", "/assets/missing.js", 404, "not_found", ("browser app",)),
    Bad("POST the WebSocket path", "POST", "/ws", 404, "not_found", body={}),
    Bad("unknown run route", "GET", "/api/runs/<idle>/nothing", 404, "not_found"),
    Bad("unknown command", "POST", "/api/runs/<idle>/explode", 404, "not_found", body={}),
    Bad("DELETE runs", "DELETE", "/api/runs", 405, "method_not_allowed", ("GET or POST",)),
    Bad("PUT a run", "PUT", "/api/runs/<idle>", 405, "method_not_allowed", body={}),
    Bad("GET a command", "GET", "/api/runs/<idle>/start", 405, "method_not_allowed", ("POST",)),
    Bad("GET validate", "GET", "/api/config/validate", 405, "method_not_allowed"),
    Bad("POST health", "POST", "/api/health", 405, "method_not_allowed", body={}),
    Bad("PATCH upload", "PATCH", "/api/files/upload", 405, "method_not_allowed", raw=b""),
    Bad("no token", "GET", "/api/runs", 401, "unauthorized", ("token",), token=None),
    Bad("wrong token", "GET", "/api/runs", 401, "unauthorized", ("token",), token="x" * 48),
    Bad("no token on a command", "POST", "/api/runs/<idle>/start", 401, "unauthorized",
        body={}, token=None),
    Bad("token in a malformed cookie", "GET", "/api/runs", 401, "unauthorized", token=None,
        headers={"cookie": 'trainboard_token="' + TOKEN}),
    Bad("token with the wrong scheme", "GET", "/api/runs", 401, "unauthorized", token=None,
        headers={"authorization": f"Basic {TOKEN}"}),
    Bad("foreign origin", "POST", "/api/runs/<idle>/start", 403, "forbidden", ("another site",),
        body={}, headers={"origin": "https://evil.example"}),
    Bad("foreign origin, no token", "POST", "/api/runs", 403, "forbidden", body={},
        headers={"origin": "http://127.0.0.1.evil.example"}, token=None),
    Bad("null origin", "POST", "/api/paths/check", 403, "forbidden", body={"path": "x"},
        headers={"origin": "null"}),
]  # fmt: skip

# Managing runs (docs/experiments.md): each refused before anything is written.
_MANAGE = [
    Bad("rename without a name", "POST", "/api/runs/<idle>/rename", 400, "bad_request",
        ("'name'", "200"), body={}),
    Bad("rename to a number", "POST", "/api/runs/<idle>/rename", 400, "bad_request", ("name",),
        body={"name": 5}),
    Bad("rename to blanks", "POST", "/api/runs/<idle>/rename", 400, "bad_request",
        ("not blank",), body={"name": "   "}),
    Bad("rename over 200 chars", "POST", "/api/runs/<idle>/rename", 400, "bad_request",
        ("200", "201"), body={"name": "n" * 201}),
    Bad("rename to two lines", "POST", "/api/runs/<idle>/rename", 400, "bad_request",
        ("one line",), body={"name": "a\nb"}),
    Bad("rename field misspelt", "POST", "/api/runs/<idle>/rename", 400, "bad_request",
        ("did you mean 'name'",), body={"nam": "x"}),
    Bad("rename an unknown run", "POST", "/api/runs/nope/rename", 404, "not_found",
        ("/api/runs",), body={"name": "x"}),
    Bad("tag with nothing", "POST", "/api/runs/<idle>/tag", 400, "bad_request",
        ("'add'", "'tags'"), body={}),
    Bad("tag with a space", "POST", "/api/runs/<idle>/tag", 400, "bad_request",
        ("two words", "letters, digits"), body={"add": ["two words"]}),
    Bad("tag over 64 chars", "POST", "/api/runs/<idle>/tag", 400, "bad_request", ("64",),
        body={"add": ["t" * 65]}),
    Bad("tag empty", "POST", "/api/runs/<idle>/tag", 400, "bad_request", ("1 to 64",),
        body={"add": [""]}),
    Bad("tags a string", "POST", "/api/runs/<idle>/tag", 400, "bad_request", ("list",),
        body={"tags": "a,b"}),
    Bad("tags and add together", "POST", "/api/runs/<idle>/tag", 400, "bad_request",
        ("not both",), body={"tags": ["a"], "add": ["b"]}),
    Bad("tag remove numbers", "POST", "/api/runs/<idle>/tag", 400, "bad_request", ("'remove'",),
        body={"remove": [1]}),
    Bad("tags over 100", "POST", "/api/runs/<idle>/tag", 400, "bad_request", ("100", "101"),
        body={"tags": [f"t{i}" for i in range(101)]}),
    Bad("notes missing", "POST", "/api/runs/<idle>/notes", 400, "bad_request", ("'notes'",),
        body={}),
    Bad("notes a list", "POST", "/api/runs/<idle>/notes", 400, "bad_request", ("'notes'",),
        body={"notes": ["x"]}),
    Bad("notes over the body limit", "POST", "/api/runs/<idle>/notes", 413, "too_large",
        ("bytes",), body={"notes": "x" * 70_000}),
    Bad("archive with a field", "POST", "/api/runs/<idle>/archive", 400, "bad_request",
        ("really",), body={"really": True}),
    Bad("delete remove_files a string", "POST", "/api/runs/<idle>/delete", 400, "bad_request",
        ("true or false",), body={"remove_files": "yes"}),
    Bad("delete a training run", "POST", "/api/runs/<training>/delete", 409, "illegal_command",
        ("stop it first",), body={"remove_files": True}),
    Bad("list runs archived=maybe", "GET", "/api/runs?archived=maybe", 400, "bad_request",
        ("archived",)),
    Bad("list runs deleted=2", "GET", "/api/runs?deleted=2", 400, "bad_request", ("deleted",)),
]  # fmt: skip

REST_ROWS = (
    _NON_FINITE + _DEEP + _BODIES + _CREATE_FIELDS + _OTHER_FIELDS + _QUERIES + _PATHS + _UPLOADS
    + _ROUTES_AND_AUTH + _MANAGE
)  # fmt: skip


def test_row_ids_are_unique() -> None:
    ids = [row.id for row in REST_ROWS]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]


@pytest.mark.parametrize("row", REST_ROWS, ids=[row.id for row in REST_ROWS])
def test_bad_request(scene: Scene, row: Bad) -> None:
    before = scene.snapshot()
    status, body, _ = http(
        scene.server.url,
        row.method,
        scene.fill(row.path),
        scene.fill_body(row.body),
        raw=row.raw,
        headers=dict(row.headers),
        token=row.token,
    )
    assert status == row.status, body
    if row.code is None:
        problems = body["problems"]
        assert body["ok"] is False
    else:
        error = body["error"]
        assert error["code"] == row.code, error
        assert len(error["message"]) > 10 and "see its log" not in error["message"]
        for fragment in row.says:
            assert fragment.lower() in error["message"].lower(), error["message"]
        problems = error["details"].get("problems", [])
    if row.problem is not None:  # a key the problems name as an error ("" for the whole text)
        keys = {p["key"] for p in problems if p["level"] == "error"}
        assert row.problem in keys, problems
    assert scene.snapshot() == before, "a refused request wrote something"
    assert_still_up(scene)


def test_a_response_holding_infinity_is_still_json(scene: Scene) -> None:
    """Whatever validation says of it, a config value of .inf comes back as JSON (null)."""
    config = {"config": scene.texts["<tiny:inf-lr>"]}
    status, body, _ = scene.server.request("POST", "/api/config/validate", config)
    assert status == 200 and body["values"]["SOLVER"]["BASE_LR"] is None
    assert "BASE_LR: .inf" in body["yaml"]


def test_a_command_id_reused_for_another_command_is_409(scene: Scene) -> None:
    before = scene.snapshot()
    command_id = {"id": uuid.uuid4().hex}
    path = f"/api/runs/{scene.idle}"
    status, first, _ = scene.server.request("POST", path + "/stop", command_id)
    assert status == 409 and first["error"]["code"] == "illegal_command"
    assert scene.server.request("POST", path + "/stop", command_id)[1] == first  # remembered
    status, body, _ = scene.server.request("POST", path + "/resume", command_id)
    assert status == 409 and body["error"]["code"] == "id_reused"
    assert "fresh id" in body["error"]["message"]
    assert scene.snapshot() == before


# --- random requests: whatever a client sends, never a 500 -----------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
_FIELDS = ["config", "base", "overrides", "name", "log_path", "seed", "id", "path", "reuse_output"]
_bodies = st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=6), _json, max_size=5)
# Commands that cannot start anything: an unknown run, a Training run, an Idle run's stop.
_POSTS = [
    "/api/runs",
    "/api/config/validate",
    "/api/paths/check",
    "/api/paths/output",
    "/api/augment/preview",
    "/api/runs/<idle>/stop",
    "/api/runs/<training>/start",
    "/api/runs/nope/resume",
]
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def assert_answered(scene: Scene, status: int, body: Any, before: Any) -> None:
    assert status < 500, body
    if status >= 400:
        assert set(body["error"]) == {"code", "message", "details"}, body
        assert scene.snapshot() == before, "a refused request wrote something"


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(_POSTS), body=_bodies | _json)
def test_no_json_body_is_a_500(scene: Scene, route: str, body: Any) -> None:
    before = scene.snapshot()
    raw = json.dumps(body).encode()
    status, answer, _ = scene.server.request("POST", scene.fill(route), raw=raw, headers=JSON)
    assert_answered(scene, status, answer, before)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from(
        [
            "/api/files?path=",
            "/api/files/info?path=",
            "/api/files/thumbnail?size=64&path=",
            "/api/files/thumbnail?path=vols/cube.npy&z=",
            "/api/runs/<idle>/artifact?path=",
            "/api/events?after=",
            "/api/runs/<training>/events?limit=",
            "/api/runs/<idle>/export?format=",
        ]
    ),
    value=_text,
)
def test_no_query_is_a_500(scene: Scene, route: str, value: str) -> None:
    before = scene.snapshot()
    path = scene.fill(route) + urllib.parse.quote(value, safe="")
    status, answer, _ = scene.server.request("GET", path)
    assert_answered(scene, status, answer, before)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(config=_text | st.sampled_from(["SOLVER:\n  BASE_LR: ", "MODEL: {", "- [", "&a *a"]))
def test_no_config_text_is_a_500(scene: Scene, config: str) -> None:
    before = scene.snapshot()
    status, answer, _ = scene.server.request("POST", "/api/config/validate", {"config": config})
    assert status == 200, answer
    status, answer, _ = scene.server.request("POST", "/api/runs", {"config": config})
    assert_answered(scene, status, answer, before)


# --- the HTTP transport ---------------------------------------------------------------------


def _raw_exchange(scene: Scene, pieces: list[bytes]) -> bytes:
    """Send `pieces` on one connection, then read the answer (b"" if the server cut it off)."""
    with socket.create_connection(("127.0.0.1", scene.server.port), timeout=30) as conn:
        try:
            for piece in pieces:
                conn.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer may still be there
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def test_an_endless_request_head_is_cut_off(scene: Scene) -> None:
    head = f"GET /api/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nX-Big: "
    pieces = [head.encode()] + [b"a" * 8192] * 12  # 96 KiB of one header, never ended
    answer = _raw_exchange(scene, pieces)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert_still_up(scene)


def test_a_malformed_content_length_is_400(scene: Scene) -> None:
    head = (
        f"POST /api/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: abc\r\nConnection: close\r\n\r\n{}"
    )
    before = scene.snapshot()
    assert _raw_exchange(scene, [head.encode()]).startswith(b"HTTP/1.1 400 ")
    assert scene.snapshot() == before
    assert_still_up(scene)


def test_a_chunked_body_over_the_limit_is_413(scene: Scene) -> None:
    head = (
        f"POST /api/config/validate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"1000\r\n" + b" " * 0x1000 + b"\r\n"
    # 17 chunks of 4 KiB: over the 64 KiB limit of this server, no Content-Length to trust.
    answer = _raw_exchange(scene, [head.encode()] + [chunk] * 17)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert_still_up(scene)


# --- WebSocket ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFrame:
    """A frame and the server's answer: an error frame, or a refused command's result."""

    id: str
    frame: str | bytes
    code: str
    says: tuple[str, ...] = ()
    kind: str = "error"


def _command(**fields: Any) -> str:
    return json.dumps({"type": "command", "id": uuid.uuid4().hex, **fields})


FRAMES = [
    BadFrame("ping ts NaN", '{"type":"ping","ts":NaN}', "bad_frame", ("NaN",)),
    BadFrame("ping ts Infinity", '{"type":"ping","ts":Infinity}', "bad_frame", ("Infinity",)),
    BadFrame("ping ts -Infinity", '{"type":"ping","ts":-Infinity}', "bad_frame", ("Infinity",)),
    BadFrame("ping ts 1e400", '{"type":"ping","ts":1e400}', "bad_frame", ("too large",)),
    BadFrame("nested 30000 deep", DEEP_ARRAY, "bad_frame", ("nested deeper",)),
    BadFrame("ping ts nested", '{"type":"ping","ts":' + DEEP_OBJECT + "}", "bad_frame",
             ("nested deeper",)),
    BadFrame("not JSON", "hello", "bad_frame", ("not valid JSON",)),
    BadFrame("empty text", "", "bad_frame", ("not valid JSON",)),
    BadFrame("binary", b"\x00\x01binary", "bad_frame", ("text",)),
    BadFrame("binary JSON", b'{"type":"ping"}', "bad_frame", ("text",)),
    BadFrame("an array", "[]", "bad_frame", ("object",)),
    BadFrame("a number", "5", "bad_frame", ("object",)),
    BadFrame("null", "null", "bad_frame", ("object",)),
    BadFrame("no type", "{}", "bad_frame", ("type",)),
    BadFrame("type a number", '{"type": 5}', "bad_frame", ("type",)),
    BadFrame("unknown type", '{"type": "subscribe_all"}', "unknown_type", ("subscribe",)),
    BadFrame("subscribe after a string", '{"type":"subscribe","after":"x"}', "bad_frame",
             ("after",)),
    BadFrame("subscribe after negative", '{"type":"subscribe","after":-1}', "bad_frame",
             ("after",)),
    BadFrame("subscribe after a bool", '{"type":"subscribe","after":true}', "bad_frame",
             ("after",)),
    BadFrame("subscribe after a float", '{"type":"subscribe","after":1.5}', "bad_frame",
             ("after",)),
    BadFrame("subscribe after beyond 64 bits", '{"type":"subscribe","after":9223372036854775808}',
             "bad_frame", ("after",)),
    BadFrame("subscribe after beyond any seq", '{"type":"subscribe","after":4611686018427387905}',
             "bad_frame", ("after",)),
    BadFrame("subscribe run_id a number", '{"type":"subscribe","run_id":5}', "bad_frame",
             ("run_id",)),
    BadFrame("subscribe to an unknown run", '{"type":"subscribe","run_id":"nope"}', "not_found",
             ("nope",)),
    BadFrame("command without id", '{"type":"command","command":"start","run_id":"<idle>"}',
             "bad_frame", ("id",)),
    BadFrame("command id empty", '{"type":"command","id":"","command":"start"}', "bad_frame",
             ("id",)),
    BadFrame("command id a number", '{"type":"command","id":5,"command":"start"}', "bad_frame",
             ("id",)),
    BadFrame("command id too long", _command(id="x" * 129, command="start"), "bad_frame",
             ("128",)),
    BadFrame("unknown command", _command(command="explode"), "bad_frame", ("create",)),
    BadFrame("command run_id a number", _command(command="start", run_id=5), "bad_frame",
             ("run_id",)),
    BadFrame("command data a list", _command(command="create", data=[]), "bad_frame",
             ("data",)),
    BadFrame("command NaN in data", '{"type":"command","id":"n","command":"create",'
             '"data":{"config":"x","seed":NaN}}', "bad_frame", ("NaN",)),
    BadFrame("start an unknown run", _command(command="start", run_id="nope"), "not_found",
             kind="result"),
    BadFrame("start without run_id", _command(command="start"), "bad_request", ("run_id",),
             kind="result"),
    BadFrame("stop an idle run", _command(command="stop", run_id="<idle>"), "illegal_command",
             kind="result"),
    BadFrame("create without config", _command(command="create", data={}), "bad_request",
             ("config",), kind="result"),
    BadFrame("create with an unknown field", _command(command="create",
             data={"config": "x: 1", "overide": []}), "bad_request", ("overide",),
             kind="result"),
    BadFrame("rename without a name", _command(command="rename", run_id="<idle>", data={}),
             "bad_request", ("'name'",), kind="result"),
    BadFrame("tag with a space", _command(command="tag", run_id="<idle>",
             data={"add": ["a b"]}), "bad_request", ("letters, digits",), kind="result"),
    BadFrame("delete with an unknown field", _command(command="delete", run_id="<idle>",
             data={"remove_file": True}), "bad_request", ("did you mean 'remove_files'",),
             kind="result"),
]  # fmt: skip

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _connect(scene: Scene, **kwargs: Any) -> Any:
    ws = await websockets.connect(scene.server.ws_url, additional_headers=AUTH, **kwargs)
    assert json.loads(await ws.recv())["type"] == "hello"
    return ws


async def _answer(ws: Any, wait_s: float = 20) -> dict[str, Any]:
    """The next frame that is not a heartbeat."""
    deadline = time.monotonic() + wait_s
    while True:
        frame: dict[str, Any] = json.loads(
            await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        )
        if frame["type"] != "ping":
            return frame


@pytest.mark.anyio
@pytest.mark.parametrize("row", FRAMES, ids=[row.id for row in FRAMES])
async def test_bad_frame(scene: Scene, row: BadFrame) -> None:
    before = await asyncio.to_thread(scene.snapshot)
    ws = await _connect(scene)
    try:
        frame = row.frame.replace("<idle>", scene.idle) if isinstance(row.frame, str) else row.frame
        await ws.send(frame)
        answer = await _answer(ws)
        assert answer["type"] == row.kind, answer
        if row.kind == "result":
            assert answer["ok"] is False
        error = answer["error"]
        assert error["code"] == row.code, error
        for fragment in row.says:
            assert fragment.lower() in error["message"].lower(), error["message"]
        # The socket is kept and still answers.
        await ws.send(json.dumps({"type": "ping", "ts": 7}))
        assert await _answer(ws) == {"type": "pong", "ts": 7}
    finally:
        await ws.close()
    assert await asyncio.to_thread(scene.snapshot) == before
    await asyncio.to_thread(assert_still_up, scene)


_frames = st.one_of(
    _text,
    _json.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["subscribe", "unsubscribe", "command", "ping", "pong", "x"])},
        optional={
            "run_id": _json,
            "after": _json,
            "id": _json | st.uuids().map(str),
            "command": st.sampled_from(["create", "start", "stop", "resume"]) | _json,
            "data": _json,
            "ts": _json,
        },
    ).map(json.dumps),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(_frames, min_size=1, max_size=4))
def test_no_frame_drops_the_socket_or_writes(scene: Scene, frames: list[str]) -> None:
    async def exchange() -> None:
        ws = await _connect(scene)
        try:
            for frame in frames:
                await ws.send(frame)
            await ws.send(json.dumps({"type": "ping", "ts": "end"}))
            while (answer := await _answer(ws)) != {"type": "pong", "ts": "end"}:
                if answer["type"] in ("error", "result") and "error" in answer:
                    assert answer["error"]["code"] != "internal", answer
        finally:
            await ws.close()

    before = scene.snapshot()
    asyncio.run(exchange())
    assert scene.snapshot() == before
    assert_still_up(scene)


@pytest.mark.anyio
async def test_an_oversized_frame_closes_1009_and_the_server_stays(scene: Scene) -> None:
    ws = await _connect(scene, max_size=None)
    await ws.send(json.dumps({"type": "ping", "ts": "x" * (70 * 1024)}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await _answer(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await asyncio.to_thread(assert_still_up, scene)


@pytest.mark.anyio
async def test_a_text_frame_that_is_not_utf8_closes_1007_and_the_server_stays(
    scene: Scene,
) -> None:
    ws = await _connect(scene)
    await ws.send(b"\xff\xfe", text=True)  # a text frame, not valid UTF-8
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await _answer(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    await asyncio.to_thread(assert_still_up, scene)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["no token", "wrong token", "wrong scheme"],
)
async def test_a_socket_without_the_token_is_closed_4401(
    scene: Scene, headers: dict[str, str]
) -> None:
    ws = await websockets.connect(scene.server.ws_url, additional_headers=headers)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.anyio
@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil"])
async def test_a_socket_from_a_foreign_origin_is_refused_403(scene: Scene, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(scene.server.ws_url, additional_headers=AUTH, origin=origin)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
