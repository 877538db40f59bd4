"""The dashboard's HTTP app (Starlette): the page, its JSON, the dry run, and the metrics endpoint.

Routes (all GET; read-only: nothing here changes the cluster):
- `/`: the page; `/static/...`: its script, style and the vendored chart library (package data).
- `/api/view`: every panel's data and the time series (polled by the page every `refresh_s`).
- `/api/dry-run?policy=P&max_moves=N`: what a rebalance would gain now (a dry run; applying stays
  with `switchyard placement rebalance --apply` and the admin token).
- `/metrics[?per_expert=true]`: Prometheus text format, computed from a fresh view at scrape time.
- `/healthz`: "ok" without auth, for probes.
With a token (the gateway's `--token`, or its `--admin-token`), everything but `/healthz` needs
`Authorization: Bearer TOKEN` (Prometheus' `authorization` setting) or the cookie that opening
`/?token=TOKEN` once sets (a browser cannot send a header when following a link): 401 otherwise.
Bad paths, methods and query values get a 4xx with a one-line JSON `error`, never a traceback.
"""

from __future__ import annotations

import hmac
import logging
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from switchyard.cluster.dashboard.metrics import CONTENT_TYPE, exposition
from switchyard.cluster.dashboard.sampler import Sampler
from switchyard.cluster.dashboard.source import SourceError
from switchyard.cluster.dashboard.view import page_data
from switchyard.placement.policies import policy_names

log = logging.getLogger(__name__)

COOKIE = "switchyard_token"
STATIC = resources.files("switchyard.cluster.dashboard") / "static"
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _query_int(request: Request, name: str, minimum: int) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise HTTPException(400, f"{name} must be at least {minimum}, got {value}")
    return value


def _query_bool(request: Request, name: str) -> bool:
    text = request.query_params.get(name, "false").lower()
    if text not in _TRUE + _FALSE:
        raise HTTPException(400, f"{name} must be true or false, got {text!r}")
    return text in _TRUE


def _check_params(request: Request, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise HTTPException(400, f"unknown query parameter(s) {', '.join(unknown)} (this path takes {known})")


def create_app(sampler: Sampler, tokens: tuple[str, ...] = ()) -> Starlette:
    """The app over `sampler` (which holds the source, the latest view and the history); `tokens`:
    the bearer tokens accepted (empty: no auth)."""

    def authorised(request: Request) -> bool:
        if not tokens:
            return True
        header = request.headers.get("authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else request.cookies.get(COOKIE)
        return given is not None and any(hmac.compare_digest(given, token) for token in tokens)

    async def index(request: Request) -> Response:
        _check_params(request, ("token",) if tokens else ())
        given = request.query_params.get("token")
        if given is not None and tokens:
            if not any(hmac.compare_digest(given, token) for token in tokens):
                return _error(401, "wrong token")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
            return response
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    async def static(request: Request) -> Response:
        _check_params(request, ())
        name = request.path_params["name"]
        path = STATIC / name
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        if ".." in name.split("/") or suffix not in _STATIC_TYPES or not path.is_file():
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(str(path), media_type=_STATIC_TYPES[suffix])

    async def api_view(request: Request) -> Response:
        _check_params(request, ())
        view = await sampler.latest()
        return JSONResponse({**page_data(view), "series": sampler.history.series(), "refresh_s": sampler.interval_s,
                             "policies": policy_names(), "stale": sampler.error})

    async def api_dry_run(request: Request) -> Response:
        _check_params(request, ("policy", "max_moves"))
        policy = request.query_params.get("policy") or "affinity"
        if policy not in policy_names():
            raise HTTPException(400, f"unknown policy {policy!r}; choose one of {', '.join(policy_names())}")
        return JSONResponse(await sampler.source.dry_run(policy, _query_int(request, "max_moves", 0)))

    async def metrics(request: Request) -> Response:
        _check_params(request, ("per_expert",))
        per_expert = _query_bool(request, "per_expert")
        try:
            view, error = await sampler.fresh(), None
        except SourceError as failure:
            view, error = None, str(failure)
        requests = sampler.requests() if view is None else view.requests
        return Response(exposition(requests, view, per_expert, error), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404 and error.detail == "Not Found":
            return _error(404, f"no such path {request.url.path!r}; try /, /api/view, /api/dry-run or /metrics")
        if error.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path} (the dashboard is read-only: GET)")
        return _error(error.status_code, str(error.detail))

    async def on_source_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, SourceError)
        return _error(error.status, str(error))

    async def on_unexpected(request: Request, error: Exception) -> Response:
        log.error("dashboard error on %s", request.url.path, exc_info=error)
        return _error(500, f"internal error on {request.url.path}; see the server log")

    async def auth(request: Request, call_next: Any) -> Response:
        if request.url.path == "/healthz" or authorised(request):
            return await call_next(request)
        if request.url.path == "/" and "token" in request.query_params:
            return await call_next(request)  # index checks the token and sets the cookie
        return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>', or open /?token=<token> "
                      "once in a browser")

    routes = [Route("/", index), Route("/static/{name:path}", static), Route("/api/view", api_view),
              Route("/api/dry-run", api_dry_run), Route("/metrics", metrics), Route("/healthz", healthz)]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=auth)], exception_handlers={
        HTTPException: on_http_error, SourceError: on_source_error, Exception: on_unexpected})
