"""Who may talk to the server: the access token, the cookie, the Origin check, headers.

One pure ASGI middleware guards every HTTP request and WebSocket handshake:

- The token comes from `Authorization: Bearer`, the `trainboard_token` cookie, or a
  `?token=` query parameter (the URL the server prints). Compared in constant time.
  Without it: HTTP 401, or for a WebSocket, close code 4401 right after the handshake.
- A page load with a valid `?token=` gets the cookie and a redirect to the same URL
  without the token, so the secret leaves the address bar and the browser history.
- Requests that can change something (WebSocket handshakes, non-GET methods) carrying an
  `Origin` that is not the server's own are refused: a foreign page must not drive it.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from http.cookies import SimpleCookie
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "trainboard_token"
CLOSE_UNAUTHORIZED = 4401
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sent with every HTTP response: no framing, no MIME sniffing, no token in Referer.
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class PathError(ValueError):
    """A path the client may not use: outside the data root, `..`, or malformed."""


class MalformedPath(PathError):
    """A path no filesystem could take: a NUL byte, a name over 255 bytes, over 4096 bytes."""


NAME_MAX = 255  # bytes in one path component (Linux, macOS, Windows alike)
PATH_MAX = 4096


def token_matches(given: str | None, token: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def request_token(scope: Scope) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came in the query string."""
    headers = Headers(scope=scope)
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    if query.get("token"):
        return query["token"], True
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is no token, not a crash
        return None, False
    morsel = cookie.get(COOKIE)
    return (morsel.value if morsel else None), False


def same_origin(scope: Scope, allowed: Iterable[str] = ()) -> bool:
    """True when the request has no Origin (headless clients) or the server's own."""
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()
    host = headers.get("host", "").lower()
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return origin == f"{scheme}://{host}" or origin in {a.rstrip("/").lower() for a in allowed}


class TokenMiddleware:
    """Refuses requests without the token (401) or from a foreign origin (403)."""

    def __init__(self, app: ASGIApp, token: str, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token
        self.allowed_origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        changes = scope["type"] == "websocket" or scope["method"] not in _SAFE_METHODS
        if changes and not same_origin(scope, self.allowed_origins):
            await _deny(scope, send, 403, "forbidden", "requests from another site are refused")
            return
        given, in_query = request_token(scope)
        if not token_matches(given, self.token):
            if scope["type"] == "websocket":
                # Browsers cannot read a refused handshake's status; a close code they can.
                await _close_socket(receive, send, CLOSE_UNAUTHORIZED, "unauthorized: bad token")
            else:
                await _deny(scope, send, 401, "unauthorized", _UNAUTHORIZED)
            return
        if in_query and scope["type"] == "http":
            if _is_page_load(scope):
                await _redirect_without_token(scope, send, self.token)
                return
            send = _with_cookie(scope, send, self.token)
        await self.app(scope, receive, _with_headers(send) if scope["type"] == "http" else send)


_UNAUTHORIZED = (
    "a valid access token is required: open the URL `trainboard serve` printed "
    "(it ends in ?token=...), or send 'Authorization: Bearer <token>'"
)


def _is_page_load(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "GET" and not path.startswith(("/api/", "/ws"))


def _cookie_header(scope: Scope, token: str) -> tuple[bytes, bytes]:
    secure = "; Secure" if scope.get("scheme") == "https" else ""
    value = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
    return b"set-cookie", value.encode("latin-1")


def _with_cookie(scope: Scope, send: Send, token: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            message["headers"] = [*message["headers"], _cookie_header(scope, token)]
        await send(message)

    return wrapped


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in present]
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return wrapped


async def _redirect_without_token(scope: Scope, send: Send, token: str) -> None:
    query = [(k, v) for k, v in parse_qsl(scope["query_string"].decode("latin-1")) if k != "token"]
    location = (
        scope.get("root_path", "") + scope["path"] + (f"?{urlencode(query)}" if query else "")
    )
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"cache-control", b"no-store"),
                (b"content-length", b"0"),
                _cookie_header(scope, token),
                *_SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _close_socket(receive: Receive, send: Send, code: int, reason: str) -> None:
    """Accept a WebSocket only to close it at once with `code`: nothing else is sent."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason})


async def _deny(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """An HTTP error answer; for a WebSocket, the denial response before any accept."""
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *_SECURITY_HEADERS,
    ]
    prefix = "websocket." if scope["type"] == "websocket" else ""
    if prefix and "websocket.http.response" not in scope.get("extensions", {}):
        # A server without the denial-response extension can only refuse (HTTP 403).
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": f"{prefix}http.response.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": body})


# --- paths --------------------------------------------------------------------------------


def confine(root: Path, path: str | Path) -> Path:
    """`path` (relative to `root`, or absolute) resolved, if it stays inside `root`.

    Refuses malformed paths (`MalformedPath`) and `..` outright, then resolves symlinks
    and checks the result is still under the resolved root, so neither `../../etc` nor a
    symlink pointing out of the root gets through. The path need not exist.
    """
    text = str(path)
    check_well_formed(text)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise PathError("'..' is not allowed in paths")
    base = root.resolve()
    candidate = Path(text)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise PathError(f"'{text}' is outside the data root")
    return resolved


def check_well_formed(text: str) -> None:
    """Refuse, before the filesystem sees it, a path it would fail on with an OSError."""
    if "\x00" in text:
        raise MalformedPath("the path contains a NUL byte: remove it")
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        raise MalformedPath("the path is not valid text: send it as UTF-8") from None
    if len(encoded) > PATH_MAX:
        raise MalformedPath(f"the path is longer than {PATH_MAX} bytes: shorten it")
    longest = max(encoded.replace(b"\\", b"/").split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        shown = longest[:40].decode(errors="replace")
        raise MalformedPath(
            f"the name '{shown}...' is {len(longest)} bytes long; a file or folder name may "
            f"have at most {NAME_MAX}: shorten it"
        )


def relative_to_root(root: Path, path: Path) -> str:
    """How the API names a confined path: relative, with forward slashes ('' is the root)."""
    rel = path.relative_to(root.resolve()).as_posix()
    return "" if rel == "." else rel


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_filename(name: str, default: str = "upload") -> str:
    """A safe file name from a client's: no directories, no leading dots, plain characters."""
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).lstrip(".-_")
    if len(name) > 200:
        stem, dot, suffix = name.rpartition(".")
        name = (
            stem[: 200 - len(suffix) - 1] + dot + suffix if dot and len(suffix) < 16 else name[:200]
        )
    return name or default
