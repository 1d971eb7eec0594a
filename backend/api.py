"""The REST API under /api (docs/protocol.md is the contract; this is its implementation).

Handlers are small: read and check the request, call the service, the command runner,
the store or `files`, and answer JSON. Every refusal is an `ApiError`, turned into the
protocol's error shape by `api_error`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import yaml
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

import backend
from backend import export, files, outputs, sweepapi, wire
from backend.commands import check_id
from backend.errors import ApiError, bad_request, not_found, unknown_run
from backend.experiments import manage
from backend.fsm import to_mermaid
from backend.projections import RunSummary
from backend.readmodels import zoom
from backend.runs import UnknownRun
from backend.runspec import InvalidRequest, check_fields, config_source
from backend.security import MalformedPath, PathError, confine
from backend.wire import JSONResponse

if TYPE_CHECKING:
    from backend.server import Context

MAX_PAGE = 10_000
DEFAULT_PAGE = 1_000
MAX_SEQ = 2**62  # beyond any store's reach, and within SQLite's 64-bit integers
PARSE_IN_THREAD_BYTES = 256 * 1024


def context(conn: HTTPConnection) -> Context:
    ctx: Context = conn.state.ctx
    return ctx


# --- request helpers ---------------------------------------------------------------------


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The JSON object body (an empty body is `{}`); 413 over `limit`, 400 if malformed.

    Parsed strictly (`wire.loads`): NaN, Infinity and deep nesting are 400 naming where.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    if not body.strip():
        return {}
    try:
        # A big body takes a while to parse: off the event loop, which serves everyone.
        big = len(body) > PARSE_IN_THREAD_BYTES
        value = await files.in_thread(wire.loads, body) if big else wire.loads(body)
    except wire.WireError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the body must be a JSON object, not {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else "a number"


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the request body is over {limit:,} bytes", {"limit": limit})


def known_fields(body: dict[str, Any], fields: tuple[str, ...], what: str) -> None:
    """400 for a field the request does not define, naming the nearest one that it does
    (`runspec.check_fields`, as a create request is checked)."""
    try:
        check_fields(body, fields, what)
    except InvalidRequest as exc:
        raise bad_request(str(exc), **exc.details) from None


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"'{name}' must be an integer, not '{raw}'") from None
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}")
    return value


def flag_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "")
    if raw.lower() not in ("", "0", "1", "false", "true"):
        raise bad_request(f"'{name}' must be 1 or 0 (true or false), not '{raw}'")
    return raw.lower() in ("1", "true")


def run_of(request: Request) -> RunSummary:
    try:
        return context(request).service.get(request.path_params["run_id"])
    except UnknownRun as exc:
        raise unknown_run(exc) from None


# --- system ------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    ctx = context(request)
    return JSONResponse(
        {
            "status": "ok",
            "version": backend.__version__,
            "last_seq": ctx.store.last_seq,
            "runs": len(ctx.service.runs),
            "training": ctx.supervisor.training(),
            "gpus": ctx.gpus,
            "data_root": str(ctx.settings.data_root.resolve()),
            "max_concurrent": ctx.supervisor.max_concurrent,
            "demo": ctx.demo_state,
            "python": platform.python_version(),
        }
    )


async def config_defaults(request: Request) -> Response:
    from backend.config import defaults

    return JSONResponse({"values": defaults()})


async def config_schema(request: Request) -> Response:
    from backend.config import config_json_schema

    return JSONResponse(config_json_schema())


async def config_validate(request: Request) -> Response:
    body = await read_json(request, context(request).settings.max_json_bytes)
    config, base, overrides = _config_source(body)
    root = context(request).settings.data_root.resolve()
    answer = await files.in_thread(_validate, config, base, overrides, root)
    return JSONResponse(answer)


def _config_source(body: dict[str, Any]) -> tuple[str, str | None, list[str]]:
    """What a create request would take, checked by the same code (`runspec.config_source`)."""
    known_fields(body, ("config", "base", "overrides"), "a validate request")
    try:
        return config_source(body)
    except InvalidRequest as exc:
        raise bad_request(str(exc), **exc.details) from None


def _validate(config: str, base: str | None, overrides: list[str], root: Path) -> dict[str, Any]:
    """Every problem; relative paths are read against the data root, as runs will be."""
    from backend.config import load_config, validate

    loaded = load_config(text=config, base_text=base, overrides=overrides)
    problems = validate(loaded, base_dir=root)
    return {
        "ok": not any(p.is_error for p in problems),
        "problems": [p.to_json() for p in problems],
        "values": loaded.values,
        "yaml": loaded.to_yaml(),
    }


async def presets(request: Request) -> Response:
    settings = context(request).settings
    found = await files.in_thread(read_presets, settings.presets, settings.max_yaml_bytes)
    return JSONResponse({"presets": found})


def read_presets(folders: tuple[Path, ...], limit: int) -> list[dict[str, str]]:
    """YAML files of the preset folders, by name; a later folder's file wins a name clash."""
    found: dict[str, dict[str, str]] = {}
    for folder in folders:
        with contextlib.suppress(OSError):  # an unreadable preset folder is no preset
            found.update(_presets_in(folder, limit))
    return [found[name] for name in sorted(found)]


def _presets_in(folder: Path, limit: int) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.y*ml")):
            if not path.is_file() or path.stat().st_size > limit:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            first = text.lstrip().splitlines()[0] if text.strip() else ""
            title = first.lstrip("#").strip() if first.startswith("#") else path.stem
            found[path.stem] = {"name": path.stem, "title": title, "yaml": text}
    return found


# --- runs --------------------------------------------------------------------------------


async def list_runs(request: Request) -> Response:
    """The runs, newest first; archived and deleted ones only on demand (`?archived=1`,
    `?deleted=1`)."""
    archived, deleted = flag_param(request, "archived"), flag_param(request, "deleted")
    runs = [
        s
        for s in context(request).service.runs.values()
        if (archived or not s.archived) and (deleted or not s.deleted)
    ]
    ordered = sorted(runs, key=lambda s: (s.created_at or 0.0, s.run.run_id), reverse=True)
    return JSONResponse({"runs": [s.to_json() for s in ordered]})


MAX_PARAM_KEYS = 32


async def run_params(request: Request) -> Response:
    """Every run's resolved config values at the asked dotted keys (`?keys=A.B,C.D`): the
    runs table's hyperparameter columns. A key a run's config lacks answers null."""
    wanted = [k for k in request.query_params.get("keys", "").split(",") if k]
    if len(wanted) > MAX_PARAM_KEYS:
        raise bad_request(f"at most {MAX_PARAM_KEYS} keys at once; ask for fewer columns")
    ctx = context(request)
    answer: dict[str, dict[str, Any]] = {}
    for run_id in list(ctx.service.runs):
        [created] = await ctx.store.read_run(run_id, 0, limit=1)
        values = _config_values(str(created.data.get("config", "")))
        answer[run_id] = {key: _dotted(values, key) for key in wanted}
    return JSONResponse({"params": answer})


@functools.lru_cache(maxsize=512)
def _config_values(text: str) -> dict[str, Any]:
    """A run's stored (resolved) YAML as values; read-only, shared by the cache."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _dotted(values: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values if isinstance(values, str | int | float | bool) or values is None else str(values)


async def create_run(request: Request) -> Response:
    ctx = context(request)
    body = await read_json(request, ctx.settings.max_json_bytes)
    command_id = check_id(body.pop("id", None))
    outcome = await ctx.commands.run("create", None, body, command_id)
    return JSONResponse(outcome.body, outcome.status)


async def get_run(request: Request) -> Response:
    summary = run_of(request)
    [created] = await context(request).store.read_run(summary.run.run_id, 0, limit=1)
    return JSONResponse({"run": summary.to_json(), "created": dict(created.data)})


async def run_command(request: Request) -> Response:
    ctx = context(request)
    command = request.url.path.rsplit("/", 1)[-1]
    body = await read_json(request, ctx.settings.max_json_bytes)
    known_fields(body, ("id", *_COMMAND_FIELDS.get(command, ())), f"a {command} request")
    command_id = check_id(body.pop("id", None))
    outcome = await ctx.commands.run(command, request.path_params["run_id"], body, command_id)
    return JSONResponse(outcome.body, outcome.status)


# A command's fields besides "id".
_COMMAND_FIELDS: dict[str, tuple[str, ...]] = {"move": ("before", "position"), **manage.FIELDS}


async def queue(request: Request) -> Response:
    """The slots (devices, the run on each) and the queued runs, first to start first."""
    return JSONResponse(context(request).supervisor.queue_table())


async def run_events(request: Request) -> Response:
    """One keyset page of a run's events: after a seq, or after a version (replay's
    window around a position). Both read the (run_id, version) index: bounded."""
    summary = run_of(request)
    run_id, store = summary.run.run_id, context(request).store
    if "after" in request.query_params and "after_version" in request.query_params:
        raise bad_request("give 'after' (a seq) or 'after_version', not both")
    after = int_param(request, "after", 0, 0, MAX_SEQ)
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after_version = int_param(request, "after_version", -1, 0, MAX_SEQ)
    if after_version == -1:
        page = await store.read_run_after_seq(run_id, after, limit + 1)
    else:
        page = await store.read_run(run_id, after_version, limit + 1)
    return _page(page, after, limit)


async def all_events(request: Request) -> Response:
    after = int_param(request, "after", 0, 0, MAX_SEQ)
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    page = await context(request).store.read_all(after, limit + 1)
    return _page(page, after, limit)


def _page(page: list[Any], after: int, limit: int) -> Response:
    more = len(page) > limit
    page = page[:limit]
    next_after = page[-1].seq if page else after
    return JSONResponse(
        {"events": [e.to_json() for e in page], "next_after": next_after, "more": more}
    )


async def run_page(request: Request) -> Response:
    """What the run page draws, as of `page.seq`: subscribe `after` it for the rest."""
    summary = run_of(request)
    page = await context(request).service.page(summary.run.run_id)
    return JSONResponse({"run": summary.to_json(), "page": page.to_json()})


async def run_series(request: Request) -> Response:
    """One series of the run page between two x (iterations), at the finest level kept."""
    summary = run_of(request)
    page = await context(request).service.page(summary.run.run_id)
    name = request.query_params.get("name", "")
    if name not in page.series:
        raise bad_request(f"unknown series '{name}'; the series are: {', '.join(page.series)}")
    x_from = int_param(request, "from", 0, 0, MAX_SEQ)
    x_to = int_param(request, "to", MAX_SEQ, 0, MAX_SEQ)
    if x_from > x_to:
        raise bad_request(f"'from' ({x_from}) must not be after 'to' ({x_to})")
    points = int_param(request, "points", zoom.DEFAULT_POINTS, 16, zoom.MAX_POINTS)
    answer = await zoom.window(context(request).store, page, name, x_from, x_to, points)
    return JSONResponse(answer.to_json(name, page.seq))


async def export_run(request: Request) -> Response:
    summary = run_of(request)
    fmt = request.query_params.get("format", "jsonl")
    store, run_id = context(request).store, summary.run.run_id
    if fmt == "jsonl":
        body, media = export.jsonl(store, run_id), "application/x-ndjson"
    elif fmt == "csv":
        body, media = export.metrics_csv(store, run_id), "text/csv; charset=utf-8"
    elif fmt == "tensorboard":
        previews = export.run_file_reader((summary.log_path, summary.output_path))
        zipped = export.tensorboard_zip(store, run_id, previews)
        disposition = f'attachment; filename="run-{run_id}.tensorboard.zip"'
        headers = {"content-disposition": disposition}
        return StreamingResponse(zipped, media_type="application/zip", headers=headers)
    else:
        raise bad_request(f"unknown export format '{fmt}'; use jsonl, csv or tensorboard")
    disposition = f'attachment; filename="run-{run_id}.{fmt}"'
    return StreamingResponse(body, media_type=media, headers={"content-disposition": disposition})


# Artifacts are served as data, never as pages: no HTML or script from a run folder runs
# with this origin's rights.
_ARTIFACT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".log": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".jsonl": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".yaml": "text/plain; charset=utf-8",
    ".yml": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
}


async def artifact(request: Request) -> Response:
    summary = run_of(request)
    wanted = _required_path(request)
    with files.os_errors(wanted):
        path = _artifact_path(summary, wanted)
        is_file = path.is_file()
    if not is_file:
        raise not_found(f"the run has no file '{wanted}'", path=wanted)
    media = _ARTIFACT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    headers = {"content-security-policy": "default-src 'none'; sandbox"}
    if path.suffix.lower() not in _ARTIFACT_TYPES:
        headers["content-disposition"] = f'attachment; filename="{path.name}"'
    return FileResponse(path, media_type=media, headers=headers)


def _artifact_path(summary: RunSummary, wanted: str) -> Path:
    """`wanted` inside the run's log or output folder (absolute, or relative to either).

    An existing file wins; a name that exists but leads out of both folders (a symlink,
    an absolute path elsewhere) is 403, like one that names no place inside them.
    """
    inside: list[Path] = []
    leads_out = False
    for folder in (summary.log_path, summary.output_path):
        if not folder:
            continue
        try:
            inside.append(confine(Path(folder), wanted))
        except MalformedPath as exc:
            raise files.bad_path(str(exc)) from None
        except PathError:
            leads_out = leads_out or os.path.lexists(Path(folder) / wanted)
    found = next((path for path in inside if path.exists()), None)
    if found is not None:
        return found
    if leads_out or not inside:
        raise ApiError(403, "forbidden", "artifacts must be inside the run's output or log folder")
    return inside[0]


async def diagram(request: Request) -> Response:
    summary = run_of(request)
    return JSONResponse({"mermaid": to_mermaid(summary.state), "state": summary.state})


# --- files -------------------------------------------------------------------------------


async def browse(request: Request) -> Response:
    root = context(request).settings.data_root
    answer = await files.in_thread(files.list_dir, root, request.query_params.get("path", ""))
    return JSONResponse(answer)


async def file_info(request: Request) -> Response:
    root = context(request).settings.data_root
    answer = await files.in_thread(files.file_info, root, _required_path(request))
    return JSONResponse(answer)


async def file_thumbnail(request: Request) -> Response:
    root = context(request).settings.data_root
    z = request.query_params.get("z")
    z_value = int_param(request, "z", 0, -(2**31), 2**31) if z else None
    size = int_param(request, "size", 256, 16, 1024)
    png = await files.in_thread(files.thumbnail, root, _required_path(request), z_value, size)
    return Response(png, media_type="image/png", headers={"cache-control": "no-store"})


async def upload(request: Request) -> Response:
    settings = context(request).settings
    path = await files.save_upload(
        request,
        settings.data_root,
        request.query_params.get("dir", ""),
        settings.max_upload_bytes,
        settings.max_yaml_bytes,
    )
    return JSONResponse({"path": path}, 201)


async def check_path(request: Request) -> Response:
    ctx = context(request)
    path = await _path_body(request, "a path check")
    answer = await files.in_thread(files.check_path, ctx.settings.data_root, path)
    return JSONResponse(answer)


async def output_owner(request: Request) -> Response:
    """Whose output folder a path is, and a free one to propose (`backend.outputs`)."""
    ctx = context(request)
    path = await _path_body(request, "an output path check")
    runs = dict(ctx.service.runs)  # a snapshot the worker thread may read
    answer = await files.in_thread(_output_owner, ctx.settings.data_root, path, runs)
    return JSONResponse(answer)


def _output_owner(root: Path, text: str, runs: dict[str, RunSummary]) -> dict[str, Any]:
    with files.os_errors(text):
        return outputs.describe(str(files.resolve(root, text)), runs)


def _required_path(request: Request) -> str:
    path = request.query_params.get("path", "")
    if not path:
        raise bad_request("'path' is required")
    return path


async def _path_body(request: Request, what: str) -> str:
    """The non-empty `path` of a JSON body `{"path": ...}` that holds nothing else."""
    body = await read_json(request, context(request).settings.max_json_bytes)
    known_fields(body, ("path",), what)
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise bad_request("'path' (a string) is required")
    return path


# --- augmentation preview (backend/augment/preview.py; docs/data.md) --------------------

# One preview at a time: each is bounded (8 samples, bounded reads), and they queue.
_PREVIEW_LIMITER = anyio.CapacityLimiter(1)
MAX_PREVIEW_SEED = 2**31 - 1
# backend.augment.preview.MAX_SAMPLES, not imported here: that module pulls OpenCV into start-up.
MAX_PREVIEW_COUNT = 8


async def augment_preview(request: Request) -> Response:
    """A few augmented samples (middle slices, image and label) of the config's data."""
    ctx = context(request)
    body = await read_json(request, ctx.settings.max_json_bytes)
    known_fields(body, ("config", "base", "overrides", "count", "seed"), "a preview request")
    count, seed = body.pop("count", 4), body.pop("seed", 0)
    for name, value, low, high in (
        ("count", count, 1, MAX_PREVIEW_COUNT),
        ("seed", seed, 0, MAX_PREVIEW_SEED),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise bad_request(f"'{name}' must be an integer from {low} to {high}")
    config, base, overrides = _config_source(body)
    root = ctx.settings.data_root.resolve()
    answer = await anyio.to_thread.run_sync(
        _augment_preview, config, base, overrides, count, seed, root, limiter=_PREVIEW_LIMITER
    )
    return JSONResponse(answer)


def _augment_preview(
    config: str, base: str | None, overrides: list[str], count: int, seed: int, root: Path
) -> dict[str, Any]:
    import base64

    from backend.augment.preview import PreviewError, blocking_problems, preview
    from backend.config import load_config

    loaded = load_config(text=config, base_text=base, overrides=overrides)
    errors = blocking_problems(loaded)
    if errors:
        message = (
            f"the config has {len(errors)} error(s); first: {errors[0].key}: {errors[0].message}"
        )
        raise ApiError(422, "invalid_config", message, {"problems": [p.to_json() for p in errors]})
    try:
        samples = preview(loaded.values, root, count=count, seed=seed, confine_to=root)
    except PreviewError as exc:
        raise ApiError(
            403 if exc.code == "outside_data_root" else 422, exc.code, str(exc)
        ) from None

    def url(png: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    return {
        "samples": [
            {"image": url(s.image_png), "label": url(s.label_png), "applied": list(s.applied)}
            for s in samples
        ]
    }


# --- errors ------------------------------------------------------------------------------


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.to_json()}, exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405/413 in the protocol's error shape (under /api)."""
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    code = codes.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
    path = request.url.path
    where, in_api = f"{request.method} {path}", path.startswith("/api/")
    if exc.status_code == 404 and in_api:
        message = f"there is no {where}; the routes are listed in docs/protocol.md"
    elif exc.status_code == 404:
        message = f"the browser app has no file {path}"
    elif exc.status_code == 405:
        methods = _methods_of(path) if in_api else ["GET"]  # pages and the WebSocket
        message = f"{where} is not allowed; use {' or '.join(methods)}"
    else:
        message = str(exc.detail)
    error = {"code": code, "message": message, "details": {}}
    return JSONResponse({"error": error}, exc.status_code, headers=exc.headers)


def _methods_of(path: str) -> list[str]:
    """The methods the API answers on `path` (every route of that path, not just one)."""
    inner = path.removeprefix("/api")
    methods = {
        method
        for route in routes
        if route.path_regex.match(inner)
        for method in route.methods or ()
        if method != "HEAD"
    }
    return sorted(methods) or ["another method"]


routes = [
    Route("/health", health),
    Route("/config/defaults", config_defaults),
    Route("/config/schema", config_schema),
    Route("/config/validate", config_validate, methods=["POST"]),
    Route("/augment/preview", augment_preview, methods=["POST"]),
    Route("/presets", presets),
    Route("/runs", list_runs),
    Route("/runs", create_run, methods=["POST"]),
    Route("/runs/params", run_params),
    Route("/runs/{run_id}", get_run),
    Route("/runs/{run_id}/start", run_command, methods=["POST"]),
    Route("/runs/{run_id}/stop", run_command, methods=["POST"]),
    Route("/runs/{run_id}/resume", run_command, methods=["POST"]),
    Route("/runs/{run_id}/dequeue", run_command, methods=["POST"]),
    Route("/runs/{run_id}/move", run_command, methods=["POST"]),
    *(Route(f"/runs/{{run_id}}/{c}", run_command, methods=["POST"]) for c in manage.COMMANDS),
    Route("/queue", queue),
    Route("/runs/{run_id}/events", run_events),
    Route("/runs/{run_id}/page", run_page),
    Route("/runs/{run_id}/series", run_series),
    Route("/runs/{run_id}/export", export_run),
    Route("/runs/{run_id}/artifact", artifact),
    Route("/runs/{run_id}/diagram", diagram),
    Route("/events", all_events),
    Route("/files", browse),
    Route("/files/info", file_info),
    Route("/files/thumbnail", file_thumbnail),
    Route("/files/upload", upload, methods=["POST"]),
    Route("/paths/check", check_path, methods=["POST"]),
    Route("/paths/output", output_owner, methods=["POST"]),
]
routes += sweepapi.routes  # /api/sweeps: backend/sweepapi.py
