"""The Starlette application: `create_app(settings)` wires the store, the run service, the
supervisor and the hub together for one server's lifetime.

Start-up (the lifespan): open the event store, rebuild every run from it, attach the
hub, reconcile runs a dead server left in Training, then serve. Shut-down: stop the
trainer children gracefully, then close the store. The app never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from mimetypes import guess_type
from os import PathLike
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

from backend import api
from backend.commands import Commands
from backend.errors import ApiError
from backend.execution.reconcile import auto_resume, reconcile
from backend.execution.supervisor import Supervisor
from backend.experiments.sweep_service import SweepService
from backend.hub import Hub
from backend.runs import RunService
from backend.security import TokenMiddleware
from backend.settings import Settings
from backend.store import EventStore
from backend.ws import websocket_endpoint

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What request handlers share, reachable as `request.state.ctx`."""

    settings: Settings
    store: EventStore
    service: RunService
    supervisor: Supervisor
    hub: Hub
    commands: Commands
    sweeps: SweepService
    gpus: list[dict[str, Any]] = field(default_factory=list)
    demo_state: str = "none"  # none | preparing | ready | failed: ...


def create_app(settings: Settings) -> Starlette:
    """A Trainboard server app; serve it with uvicorn (see `backend.serve`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        first_run = _is_empty(settings.data_root)
        settings.data_root.mkdir(parents=True, exist_ok=True)
        store = await EventStore.open(settings.db_path, synchronous=settings.synchronous)
        try:
            ctx = await _start(settings, store)
            demo = None
            if settings.demo_on_first_run and first_run:
                demo = asyncio.create_task(_make_demo(ctx))
            try:
                yield {"ctx": ctx}
            finally:
                if demo is not None:
                    demo.cancel()
                await ctx.sweeps.close()  # first: trials stopped by the shutdown stay owed
                await ctx.supervisor.shutdown()
                ctx.hub.close()
                await ctx.service.snapshots.close()  # the next start folds no tail
        finally:
            await store.close()

    routes: list[BaseRoute] = [
        # JSON answers (a run's summary carries its config) are gzipped; images are not.
        Mount("/api", app=GZipMiddleware(Router(routes=api.routes), minimum_size=1024)),
        WebSocketRoute("/ws", websocket_endpoint),
        _frontend(settings.frontend_dir),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TokenMiddleware, settings.token, settings.allowed_origins)],
        exception_handlers={
            ApiError: api.api_error,
            HTTPException: api.http_error,
            500: _internal_error,
        },
        lifespan=lifespan,
    )


async def _start(settings: Settings, store: EventStore) -> Context:
    service = RunService(store)
    restored = await service.load()
    service.snapshots.start(save_now=not restored.from_snapshot)
    supervisor = Supervisor(
        service,
        max_concurrent=settings.max_concurrent,
        stop_grace_s=settings.stop_grace_s,
        kill_grace_s=settings.kill_grace_s,
        job_options=settings.job_options,
        executor=settings.executor,
    )
    hub = Hub(store, tick_s=settings.ws_coalesce_s)
    hub.attach(service)  # before reconciling, so what it records is published too
    reconciled = await reconcile(service, supervisor, kill_grace_s=supervisor.kill_grace_s)
    if reconciled:
        log.warning("reconciled %d run(s) left training: %s", len(reconciled), reconciled)
    commands = Commands(service, supervisor, base_dir=settings.data_root.resolve())
    if settings.auto_resume:
        await auto_resume(commands)
    sweeps = SweepService(commands)
    hub.follow(sweeps.listen)  # sweep streams are published like runs'
    await sweeps.load()  # after reconcile: it resumes or settles the trials left behind
    service.snapshots.extras["sweeps"] = sweeps.snapshot_state
    await supervisor.start_queued()  # the queue, rebuilt from events, goes on
    return Context(
        settings=settings,
        store=store,
        service=service,
        supervisor=supervisor,
        hub=hub,
        commands=commands,
        sweeps=sweeps,
        gpus=detect_gpus(),
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    message = "the server failed; see its log"
    return JSONResponse({"error": {"code": "internal", "message": message, "details": {}}}, 500)


# --- the browser app ---------------------------------------------------------------------


# Encodings the build writes next to each asset (frontend/compress.js), best first.
_ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
# Vite names every asset by its content hash: a name never changes meaning.
_IMMUTABLE = "public, max-age=31536000, immutable"
# The page itself names the current assets, so it is revalidated on every load.
_REVALIDATE = "no-cache"


class AppFiles(StaticFiles):
    """The built app; unknown page paths get index.html so client-side routes load.

    Assets are sent precompressed (brotli or gzip, as the request accepts, with `Vary`),
    hashed names cached as immutable, and the HTML revalidated each time so a new build is
    picked up at once.
    """

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or "." in path.rsplit("/", 1)[-1]:
                raise
            return await super().get_response("index.html", scope)

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        original = Path(full_path)
        request_headers = Headers(scope=scope)
        headers = {"cache-control": _cache_control(original), "vary": "Accept-Encoding"}
        media_type = guess_type(original.name)[0]  # the original's type, not the .br's
        served, stat_used = original, stat_result
        accepted = _accepted_encodings(request_headers.get("accept-encoding", ""))
        for encoding, suffix in _ENCODINGS:
            variant = original.with_name(original.name + suffix)
            if encoding in accepted and variant.is_file():
                served, stat_used = variant, variant.stat()
                headers["content-encoding"] = encoding
                break
        response = FileResponse(
            served,
            status_code=status_code,
            stat_result=stat_used,
            headers=headers,
            media_type=media_type,
        )
        if self.is_not_modified(response.headers, request_headers):
            return NotModifiedResponse(response.headers)
        return response


def _cache_control(path: Path) -> str:
    return _IMMUTABLE if path.parent.name == "assets" else _REVALIDATE


def _accepted_encodings(header: str) -> set[str]:
    """The codings an Accept-Encoding header allows (`q=0` refuses one)."""
    accepted = set()
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        q = params.strip()
        if q.startswith("q=") and _quality(q[2:]) <= 0:
            continue
        if name:
            accepted.add(name.strip().lower())
    return accepted


def _quality(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


_NO_APP = """<!doctype html><meta charset="utf-8"><title>Trainboard</title>
<p>Trainboard's API is running, but the browser app is not built (no frontend/dist).
Build it with <code>make frontend-build</code>, or use the API and the CLI.</p>"""


def _frontend(folder: Path | None) -> BaseRoute:
    if folder is not None and (folder / "index.html").is_file():
        return Mount("/", app=AppFiles(directory=folder, html=True))
    return Route("/", lambda request: HTMLResponse(_NO_APP))


# --- machine facts -----------------------------------------------------------------------


def detect_gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs as the driver lists them, without CUDA or torch (cheap: /proc only)."""
    gpus = []
    root = Path("/proc/driver/nvidia/gpus")
    try:
        folders = sorted(root.iterdir()) if root.is_dir() else []
    except OSError:
        return []
    for index, folder in enumerate(folders):
        name = "NVIDIA GPU"
        with contextlib.suppress(OSError):
            for line in (folder / "information").read_text().splitlines():
                if line.startswith("Model:"):
                    name = line.split(":", 1)[1].strip()
        gpus.append({"index": index, "name": name, "bus_id": folder.name})
    return gpus


def _is_empty(folder: Path) -> bool:
    try:
        return not any(folder.iterdir())
    except FileNotFoundError:
        return True
    except OSError:
        return False


_DEMO_TITLES = {
    "demo_2d": "Demo: 2D U-Net on the synthetic mitochondria dataset",
    "demo_3d": "Demo: 3D U-Net on the synthetic mitochondria dataset",
}


async def _make_demo(ctx: Context) -> None:
    """Write the demo dataset and its presets, off the event loop (it takes seconds)."""
    ctx.demo_state = "preparing"
    try:
        await asyncio.to_thread(write_demo, ctx.settings.data_root)
    except Exception as exc:
        log.exception("could not write the demo dataset")
        ctx.demo_state = f"failed: {exc}"
        return
    ctx.demo_state = "ready"


def write_demo(data_root: Path) -> None:
    from backend.demo import make_demo_dataset

    dataset = make_demo_dataset(data_root / "demo")
    presets = data_root / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    for config in (dataset.config_2d, dataset.config_3d):
        partial = presets / f".{config.name}.partial"
        with config.open(encoding="utf-8") as source, partial.open("w", encoding="utf-8") as out:
            out.write(f"# {_DEMO_TITLES.get(config.stem, config.stem)}\n")
            shutil.copyfileobj(source, out)
        partial.replace(presets / config.name)
