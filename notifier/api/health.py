"""Liveness, readiness and the OpenAPI document (no authentication)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from notifier.api.keys import DEPS
from notifier.api.problems import Problem
from notifier.api.routing import Call, Router, json_response

routes = Router()
OPENAPI = web.AppKey("openapi", dict[str, Any])
READY_RETRY_AFTER_SECONDS = 5


@routes.route("GET", "/healthz", summary="The process is up", tag="health", auth=False, db=False)
async def healthz(request: web.Request, call: Call) -> web.Response:
    return json_response({"status": "ok"})


@routes.route(
    "GET",
    "/readyz",
    summary="PostgreSQL and Redis are reachable",
    tag="health",
    auth=False,
    responses={503: "PostgreSQL or Redis is unreachable"},
)
async def readyz(request: web.Request, call: Call) -> web.Response:
    deps = request.app[DEPS]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await deps.pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = type(exc).__name__
    try:
        async with asyncio.timeout(2):
            await deps.queue.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = type(exc).__name__
    if any(v != "ok" for v in checks.values()):
        bad = ", ".join(k for k, v in checks.items() if v != "ok")
        raise Problem(
            503,
            "Service Unavailable",
            f"not ready: {bad} unreachable",
            type_="not-ready",
            headers={"Retry-After": str(READY_RETRY_AFTER_SECONDS)},
        )
    return json_response({"status": "ready", "checks": checks})


@routes.route(
    "GET", "/openapi.json", summary="This API's OpenAPI 3.1 document", tag="health", auth=False, db=False
)
async def openapi(request: web.Request, call: Call) -> web.Response:
    return json_response(request.app[OPENAPI])
