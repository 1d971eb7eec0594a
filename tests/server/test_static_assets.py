"""The browser app's files (backend/server.py `AppFiles`): the precompressed variant the
request accepts, immutable caching of hashed asset names, the page always revalidated."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from backend.server import AppFiles

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = b"console.log('trainboard');\n" * 50


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    assets = tmp_path / "assets"
    assets.mkdir()
    (tmp_path / "index.html").write_bytes(b"<title>app</title>")
    (assets / "index-abc123.js").write_bytes(SCRIPT)
    (assets / "index-abc123.js.gz").write_bytes(gzip.compress(SCRIPT, mtime=0))
    (assets / "index-abc123.js.br").write_bytes(b"brotli bytes")  # served as they are
    (assets / "plain-def456.css").write_bytes(b"body{}")  # no compressed variant
    app = Starlette(routes=[Mount("/", app=AppFiles(directory=tmp_path, html=True))])
    return TestClient(app)


# Accept-Encoding -> Content-Encoding served (None: the plain file).
NEGOTIATION = [
    ("br, gzip", "br"),
    ("gzip, deflate, br, zstd", "br"),
    ("gzip", "gzip"),
    ("br;q=0, gzip", "gzip"),
    ("identity", None),
    ("", None),
]


@pytest.mark.parametrize(("accept", "expected"), NEGOTIATION)
def test_the_accepted_encoding_is_sent(
    client: TestClient, accept: str, expected: str | None
) -> None:
    response = client.get("/assets/index-abc123.js", headers={"accept-encoding": accept})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == expected
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["vary"] == "Accept-Encoding"
    if expected is None:
        assert response.content == SCRIPT
    elif expected == "gzip":
        assert response.content == SCRIPT  # httpx decodes it
        assert int(response.headers["content-length"]) < len(SCRIPT)


def test_hashed_assets_are_immutable_and_the_page_revalidates(client: TestClient) -> None:
    asset = client.get("/assets/plain-def456.css", headers={"accept-encoding": "br"})
    assert asset.headers.get("content-encoding") is None  # no variant: the file itself
    assert "immutable" in asset.headers["cache-control"]
    for path in ("/", "/index.html", "/runs/abc"):  # client-side routes get the page too
        page = client.get(path)
        assert page.status_code == 200 and page.content == b"<title>app</title>"
        assert page.headers["cache-control"] == "no-cache"
        again = client.get(path, headers={"if-none-match": page.headers["etag"]})
        assert again.status_code == 304


def test_the_committed_build_carries_both_encodings_of_every_text_asset() -> None:
    dist = ROOT / "frontend" / "dist"
    texts = [p for p in dist.rglob("*") if p.suffix in (".js", ".css", ".html")]
    assert texts, "frontend/dist is empty: run `npm run build` in frontend/"
    for path in texts:
        assert gzip.decompress(path.with_name(path.name + ".gz").read_bytes()) == path.read_bytes()
        brotli = path.with_name(path.name + ".br")
        assert 0 < brotli.stat().st_size < path.stat().st_size
