"""API-wide HTTP concerns: the request id, request metrics, CORS and security headers, in one
middleware (``api_middleware``, which also answers errors as problem+json and authenticates).

- ``X-Request-ID``: the caller's, when it is a safe token (printable, no spaces, at most 128
  characters: notifier/logs.py), else a new one; set for the request's task (every log record of
  the request carries it), echoed on the response, and carried into the jobs it enqueues.
- Metrics: one histogram sample per request, by method, route template and status; and one
  access log line (``notifier.access``; ``log_requests``) with the template, never the path.
- CORS: closed unless ``cors_origins`` names the caller's exact origin; a preflight (OPTIONS with
  ``Access-Control-Request-Method``) from an allowed origin is answered here, before
  authentication (browsers send no credentials on a preflight); from any other origin, 403.
- Security headers on every response: ``nosniff``, ``Referrer-Policy: no-referrer``,
  ``X-Frame-Options: DENY`` and a CSP -- the handler's own if it set one (console pages set a
  strict policy of their own), else ``default-src 'none'; frame-ancestors 'none'``; HSTS when the
  public URL is https.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from notifier import metrics
from notifier.api.auth import authenticate, is_public
from notifier.api.keys import SETTINGS
from notifier.api.problems import Problem, problem_answer, response
from notifier.api.ratelimit import RATE_STATE
from notifier.logs import REQUEST_ID, accept_request_id

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000"
# What a browser may send and read cross-origin.
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
CORS_EXPOSE_HEADERS = (
    "X-Request-ID, Location, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
)
CORS_MAX_AGE_SECONDS = 600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access = logging.getLogger("notifier.access")


def _route(request: web.Request) -> str:
    """The path template (``/v1/notices/{notice_id}``): bounded, and free of ids."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


# Histogram children by (method, route, status), looked up once each: ``labels()`` per request
# takes a lock and builds its key every time.
_OBSERVERS: dict[tuple[str, str, int], Any] = {}


def _observe(method: str, route: str, status: int, took: float) -> None:
    child = _OBSERVERS.get((method, route, status))
    if child is None:
        child = _OBSERVERS[(method, route, status)] = metrics.HTTP_REQUESTS.labels(method, route, str(status))
    child.observe(took)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API's one middleware (one layer per request, not one per concern), outermost to inner:
    the request id for the whole request, its metric and access line, and CORS preflights; every
    error as problem+json (api/problems.py); the caller (api/auth.py), unless the path is public."""
    request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID_KEY] = request_id
    token = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            resp: web.StreamResponse = _preflight(request)
        else:
            try:
                if not is_public(request.path):
                    await authenticate(request)
                resp = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                resp = problem_answer(request, exc)
            except Exception as exc:
                resp = problem_answer(request, exc)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        took = time.perf_counter() - started
        route = _route(request)
        _observe(request.method, route, status, took)
        if request.app[SETTINGS].log_requests:
            # The route template, never the path: paths hold ids and signed read-link tokens.
            access.info(
                "%s %s %d %.1fms",
                request.method,
                route,
                status,
                took * 1000,
                extra={
                    "http": {
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "ms": round(took * 1000, 1),
                    }
                },
            )
        REQUEST_ID.reset(token)


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is not None and origin in request.app[SETTINGS].cors_origins:
        return origin
    return None


def _preflight(request: web.Request) -> web.StreamResponse:
    origin = _allowed_origin(request)
    if origin is None:
        return response(
            Problem(403, "Forbidden", "cross-origin requests from this origin are not allowed", type_="cors"),
            request.path,
        )
    error = request.match_info.http_exception
    if isinstance(error, web.HTTPMethodNotAllowed):
        methods = sorted(error.allowed_methods)
    elif error is not None:
        return response(Problem(404, "Not Found", "no such resource", type_="not-found"), request.path)
    else:
        methods = [request.match_info.route.method]
    wanted = request.headers["Access-Control-Request-Method"]
    if wanted not in methods:
        return response(
            Problem(403, "Forbidden", f"{wanted} is not a method of this resource", type_="cors"),
            request.path,
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": str(CORS_MAX_AGE_SECONDS),
        },
    )


async def add_headers(request: web.Request, resp: web.StreamResponse) -> None:
    """``on_response_prepare``: runs for every response, errors and streams included; the key's
    rate bucket (api/ratelimit.py) on every answer to a key."""
    headers = resp.headers
    rate = request.get(RATE_STATE)
    if rate is not None:
        headers.update(rate.headers())
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    headers.setdefault("Content-Security-Policy", DEFAULT_CSP)
    settings = request.app[SETTINGS]
    if settings.public_url.startswith("https://"):
        headers.setdefault("Strict-Transport-Security", HSTS)
    if settings.cors_origins:
        # The answer depends on Origin: caches must keep one per origin.
        headers.add("Vary", "Origin")
        origin = _allowed_origin(request)
        if origin is not None:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
