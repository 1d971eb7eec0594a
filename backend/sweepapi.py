"""The sweep routes of the REST API under /api/sweeps (docs/protocol.md#sweeps).

List, create, one sweep's summary, stop, resume, its trial table and Optuna's parameter
importances. Handlers read and check the request, call `SweepService`, and answer in
the protocol's shapes; every refusal is the protocol's error object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.commands import check_id
from backend.errors import bad_request, not_found
from backend.experiments.study import InvalidSweep, LiveStudy
from backend.experiments.sweep_service import SweepService, UnknownSweep
from backend.experiments.sweeps import SweepSummary
from backend.wire import JSONResponse

if TYPE_CHECKING:
    from backend.server import Context


def _sweeps(request: Request) -> SweepService:
    ctx: Context = request.state.ctx
    return ctx.sweeps


def _sweep(request: Request) -> SweepSummary:
    try:
        return _sweeps(request).get(request.path_params["sweep_id"])
    except UnknownSweep as exc:
        raise not_found(str(exc), sweep_id=exc.sweep_id) from None


async def list_sweeps(request: Request) -> Response:
    sweeps = sorted(
        _sweeps(request).sweeps.values(),
        key=lambda s: (s.created_at or 0.0, s.sweep_id),
        reverse=True,
    )
    return JSONResponse({"sweeps": [s.to_json() for s in sweeps]})


async def create_sweep(request: Request) -> Response:
    from backend.api import read_json

    ctx: Context = request.state.ctx
    body = await read_json(request, ctx.settings.max_json_bytes)
    command_id = check_id(body.pop("id", None))
    outcome = await ctx.sweeps.run("create", None, body, command_id)
    return JSONResponse(outcome.body, outcome.status)


async def get_sweep(request: Request) -> Response:
    summary = _sweep(request)
    return JSONResponse({"sweep": summary.to_json(), "spec": _spec(summary)})


def _spec(summary: SweepSummary) -> dict[str, Any]:
    """The sweep's request as created (its config source, for "new run from the best")."""
    keys = ("config", "base", "overrides", "space", "objective", "trials", "parallel")
    return {k: summary.spec.get(k) for k in (*keys, "sampler", "pruner", "seed", "name")}


async def sweep_command(request: Request) -> Response:
    from backend.api import read_json

    ctx: Context = request.state.ctx
    command = request.url.path.rsplit("/", 1)[-1]
    body = await read_json(request, ctx.settings.max_json_bytes)
    unknown = sorted(set(body) - {"id"})
    if unknown:
        raise bad_request(f"a sweep {command} request takes only 'id', not {', '.join(unknown)}")
    command_id = check_id(body.get("id"))
    outcome = await ctx.sweeps.run(command, request.path_params["sweep_id"], {}, command_id)
    return JSONResponse(outcome.body, outcome.status)


async def sweep_trials(request: Request) -> Response:
    """The trial table: number, run id, params, state (the run's, while in flight),
    value, pruned, best so far."""
    summary = _sweep(request)
    runs = request.state.ctx.service.runs
    rows = summary.trial_table()
    for row in rows:
        run = runs.get(row["run_id"])
        row["run_state"] = None if run is None else run.state
        row["best_dice"] = None if run is None else run.best_dice
    return JSONResponse({"sweep": summary.to_json(), "trials": rows})


async def sweep_importances(request: Request) -> Response:
    """Optuna's parameter importances over the complete trials (400 with too few)."""
    summary = _sweep(request)
    study = _sweeps(request).studies.get(summary.sweep_id) or LiveStudy.rebuild(summary)
    try:
        importances = study.importances()
    except InvalidSweep as exc:
        raise bad_request(str(exc), **exc.details) from None
    return JSONResponse({"sweep_id": summary.sweep_id, "importances": importances})


routes = [
    Route("/sweeps", list_sweeps),
    Route("/sweeps", create_sweep, methods=["POST"]),
    Route("/sweeps/{sweep_id}", get_sweep),
    Route("/sweeps/{sweep_id}/stop", sweep_command, methods=["POST"]),
    Route("/sweeps/{sweep_id}/resume", sweep_command, methods=["POST"]),
    Route("/sweeps/{sweep_id}/trials", sweep_trials),
    Route("/sweeps/{sweep_id}/importances", sweep_importances),
]
