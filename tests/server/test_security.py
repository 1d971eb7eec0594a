"""The token, the cookie, the Origin check, path confinement and upload limits."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.files import os_error
from backend.security import MalformedPath, PathError, confine, sanitize_filename
from tests.server.live import TOKEN, LiveServer, make_settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("security")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.npy").write_bytes(b"secret")
    root = tmp / "data"
    (root / "volumes").mkdir(parents=True)
    (root / "volumes" / "a.npy").write_bytes(b"x" * 10)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "volumes" / "evil.npy").symlink_to(outside / "secret.npy")
    settings = make_settings(tmp, max_upload_bytes=4096, max_yaml_bytes=256, max_json_bytes=2048)
    live = LiveServer(settings).start()
    yield live
    live.stop()


def multipart(name: str, content: bytes, field: str = "file") -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


# --- the token ----------------------------------------------------------------------------


def test_missing_and_wrong_token_are_401(server: LiveServer) -> None:
    for token in (None, "wrong-token", TOKEN + "x", ""):
        status, body, _ = server.request("GET", "/api/runs", token=token)
        assert status == 401
        assert body["error"]["code"] == "unauthorized"
    assert server.request("GET", "/api/runs")[0] == 200


def test_query_token_sets_a_strict_httponly_cookie(server: LiveServer) -> None:
    status, _, headers = server.request("GET", f"/?token={TOKEN}&x=1", token=None)
    assert status == 303
    assert headers["location"] == "/?x=1"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"trainboard_token={TOKEN}")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    cookie_header = {"cookie": f"trainboard_token={TOKEN}"}
    assert server.request("GET", "/api/runs", token=None, headers=cookie_header)[0] == 200
    bad_cookie = {"cookie": "trainboard_token=nope"}
    assert server.request("GET", "/api/runs", token=None, headers=bad_cookie)[0] == 401


def test_query_token_on_the_api_answers_directly(server: LiveServer) -> None:
    status, body, headers = server.request("GET", f"/api/health?token={TOKEN}", token=None)
    assert status == 200 and body["status"] == "ok"
    assert "trainboard_token" in headers["set-cookie"]


def test_security_headers(server: LiveServer) -> None:
    _, _, headers = server.request("GET", "/api/health")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def test_websocket_needs_the_token(server: LiveServer) -> None:
    async def connect(headers: dict[str, str], url: str) -> int:
        """101 for a working socket, else the close code it got at once."""
        async with websockets.connect(url, additional_headers=headers) as ws:
            try:
                hello = json.loads(await ws.recv())
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code
            assert hello["type"] == "hello"
            return 101

    async def main() -> None:
        assert await connect({}, server.ws_url) == 4401  # a browser can read a close code
        assert await connect({"Authorization": "Bearer nope"}, server.ws_url) == 4401
        assert await connect({}, f"{server.ws_url}?token={TOKEN}") == 101
        assert await connect({"Cookie": f"trainboard_token={TOKEN}"}, server.ws_url) == 101

    asyncio.run(main())


def test_foreign_origin_is_refused(server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def connect(origin: str) -> int:
        try:
            async with websockets.connect(
                server.ws_url, additional_headers={**auth, "Origin": origin}
            ) as ws:
                await ws.recv()
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def main() -> None:
        assert await connect("http://evil.example") == 403
        assert await connect(f"http://localhost:{server.port}") == 403  # another host name
        assert await connect(f"http://127.0.0.1:{server.port}") == 101

    asyncio.run(main())
    # A cross-site form post is refused even with a valid cookie.
    status, _, _ = server.request(
        "POST",
        "/api/runs",
        {"config": ""},
        token=None,
        headers={"origin": "http://evil.example", "cookie": f"trainboard_token={TOKEN}"},
    )
    assert status == 403


# --- paths --------------------------------------------------------------------------------


def test_confine_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "link").symlink_to(tmp_path / "out")
    assert confine(root, "a") == (root / "a").resolve()
    assert confine(root, "") == root.resolve()
    assert confine(root, str(root / "a")) == (root / "a").resolve()
    for bad in ("../out", "a/../../out", "/etc/passwd", "link", "link/x", "a/\x00", "..\\out"):
        with pytest.raises(PathError):
            confine(root, bad)


def test_malformed_paths_are_refused_before_the_filesystem_sees_them(tmp_path: Path) -> None:
    for bad, says in [
        ("a/\x00b", "NUL byte"),
        ("n" * 256, "256 bytes long"),
        ("x/" + "é" * 128 + "/y", "256 bytes long"),  # bytes, not characters
        ("a/" * 2100, "longer than 4096 bytes"),
    ]:
        with pytest.raises(MalformedPath, match=says):
            confine(tmp_path, bad)
    assert confine(tmp_path, "n" * 255) == tmp_path.resolve() / ("n" * 255)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errno.ENOENT, 404, "not_found"),
        (errno.ENOTDIR, 404, "not_found"),
        (errno.EACCES, 403, "permission_denied"),
        (errno.EPERM, 403, "permission_denied"),
        (errno.EROFS, 403, "permission_denied"),
        (errno.ENOSPC, 507, "no_space"),
        (errno.ENAMETOOLONG, 400, "bad_path"),
        (errno.ELOOP, 400, "bad_path"),
        (errno.EIO, 400, "bad_path"),
    ],
)
def test_filesystem_refusals_are_answers(error: int, status: int, code: str) -> None:
    answer = os_error(OSError(error, os.strerror(error)), "vols/x.npy")
    assert (answer.status, answer.code) == (status, code)
    assert "x.npy" in answer.message


def test_sanitize_filename() -> None:
    assert sanitize_filename("../../etc/passwd") == "passwd"
    assert sanitize_filename("..\\..\\boot.ini") == "boot.ini"
    assert sanitize_filename(".bashrc") == "bashrc"
    assert sanitize_filename("my volume (1).h5") == "my_volume_1_.h5"
    assert sanitize_filename("") == "upload"
    assert sanitize_filename("....") == "upload"
    assert len(sanitize_filename("a" * 500 + ".tif")) <= 200
    assert sanitize_filename("a" * 500 + ".tif").endswith(".tif")


@pytest.mark.parametrize(
    "path",
    ["..", "../outside", "volumes/../../outside", "/etc", "escape", "escape/secret.npy", "%2e%2e"],
)
def test_browse_is_confined(server: LiveServer, path: str) -> None:
    status, body, _ = server.request("GET", f"/api/files?path={path}")
    assert status in (403, 404), body
    if status == 403:
        assert body["error"]["code"] == "outside_data_root"


def test_browse_lists_the_root_without_escaping_links(server: LiveServer) -> None:
    status, body, _ = server.request("GET", "/api/files?path=volumes")
    assert status == 200
    names = {e["name"] for e in body["entries"]}
    assert names == {"a.npy"}  # evil.npy points outside: not listed
    status, body, _ = server.request("GET", "/api/files")
    assert "escape" not in {e["name"] for e in body["entries"]}


@pytest.mark.parametrize("route", ["/api/files/info", "/api/files/thumbnail"])
def test_volume_reads_are_confined(server: LiveServer, route: str) -> None:
    for path in ("volumes/evil.npy", "escape/secret.npy", "../outside/secret.npy", "/etc/passwd"):
        status, body, _ = server.request("GET", f"{route}?path={path}")
        assert status == 403, (path, body)


def test_path_check_is_confined(server: LiveServer) -> None:
    status, body, _ = server.request("POST", "/api/paths/check", {"path": "new/output"})
    assert status == 200 and body["creatable"] and not body["exists"]
    status, _, _ = server.request("POST", "/api/paths/check", {"path": "/tmp"})
    assert status == 403


# --- uploads ------------------------------------------------------------------------------


def test_upload_sanitises_and_never_overwrites(server: LiveServer) -> None:
    body, headers = multipart("../../../evil name.npy", b"abc")
    status, answer, _ = server.request(
        "POST", "/api/files/upload?dir=volumes", raw=body, headers=headers
    )
    assert status == 201, answer
    assert answer["path"] == "volumes/evil_name.npy"
    status, again, _ = server.request(
        "POST", "/api/files/upload?dir=volumes", raw=body, headers=headers
    )
    assert again["path"] == "volumes/evil_name-1.npy"
    root = server.settings.data_root
    assert (root / "volumes" / "evil_name.npy").read_bytes() == b"abc"
    assert not any(p.name.startswith(".upload-") for p in (root / "volumes").iterdir())


@pytest.mark.parametrize("folder", ["..", "escape", "/tmp", "volumes/../.."])
def test_upload_target_is_confined(server: LiveServer, folder: str) -> None:
    body, headers = multipart("x.npy", b"abc")
    status, _, _ = server.request(
        "POST", f"/api/files/upload?dir={folder}", raw=body, headers=headers
    )
    assert status == 403
    assert not (server.settings.data_root.parent / "outside" / "x.npy").exists()


def test_oversized_uploads_are_413_and_leave_nothing(server: LiveServer) -> None:
    folder = server.settings.data_root / "volumes"
    before = set(os.listdir(folder))
    body, headers = multipart("big.npy", b"x" * 5000)  # volume limit 4096
    status, answer, _ = server.request("POST", "/api/files/upload", raw=body, headers=headers)
    assert status == 413 and answer["error"]["code"] == "too_large"
    body, headers = multipart("big.yaml", b"x" * 300)  # YAML limit 256
    status, _, _ = server.request(
        "POST", "/api/files/upload?dir=volumes", raw=body, headers=headers
    )
    assert status == 413
    assert set(os.listdir(folder)) == before


def test_upload_refuses_other_types_and_bad_bodies(server: LiveServer) -> None:
    body, headers = multipart("run.sh", b"rm -rf /")
    status, answer, _ = server.request("POST", "/api/files/upload", raw=body, headers=headers)
    assert status == 415 and answer["error"]["code"] == "unsupported_type"
    status, _, _ = server.request(
        "POST", "/api/files/upload", raw=b"junk", headers={"content-type": "text/plain"}
    )
    assert status == 400
    body, headers = multipart("a.npy", b"abc", field="other")
    status, _, _ = server.request("POST", "/api/files/upload", raw=body, headers=headers)
    assert status == 400


def test_json_bodies_are_limited(server: LiveServer) -> None:
    huge = {"config": "x" * (server.settings.max_json_bytes + 10)}
    status, body, _ = server.request("POST", "/api/config/validate", huge)
    assert status == 413 and body["error"]["code"] == "too_large"
