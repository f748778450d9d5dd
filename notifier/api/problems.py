"""RFC 9457 problem details: every error leaves the API as ``application/problem+json``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from notifier.db.pool import unavailable

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
PROBLEM_BASE = "https://notifier.dev/problems/"
UNAVAILABLE_RETRY_AFTER_SECONDS = 5  # a database restart takes seconds; ask callers to come back


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.errors = errors
        self.headers = headers or {}

    def body(self, instance: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": PROBLEM_BASE + self.type if self.type else "about:blank",
            "title": self.title,
            "status": self.status,
            "instance": instance,
        }
        if self.detail:
            data["detail"] = self.detail
        if self.errors:
            data["errors"] = self.errors
        return data


def not_found(what: str = "resource") -> Problem:
    return Problem(404, "Not Found", f"{what} not found", type_="not-found")


def forbidden(detail: str) -> Problem:
    return Problem(403, "Forbidden", detail, type_="forbidden")


def database_unavailable() -> Problem:
    return Problem(
        503,
        "Service Unavailable",
        "the database is unreachable; retry shortly",
        type_="unavailable",
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
    )


def invalid(field: str, message: str) -> Problem:
    return invalid_many([(field, message)])


def invalid_many(errors: list[tuple[str, str]]) -> Problem:
    detail = "; ".join(f"{f}: {m}" for f, m in errors[:5])
    return Problem(
        422,
        "Unprocessable Content",
        detail,
        type_="validation",
        errors=[{"field": f, "message": m} for f, m in errors],
    )


def field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


_ABSENT = object()


def caller_loc(
    loc: tuple[int | str, ...], data: Any, *, missing: bool = False
) -> tuple[tuple[int | str, ...], bool]:
    """``loc`` as the caller wrote it, and whether it ended on one of pydantic's own labels.

    Pydantic puts the name of a union member or validator into the location (``escalation.
    function-after[_ordered(), PolicyRules].steps[0]``, ``escalation.constrained-str``): walking the
    caller's input along ``loc`` tells a key the caller sent from such a label, which is dropped. A
    key absent from the input is kept only where it can be the caller's: a missing field at the end.
    """
    kept: list[int | str] = []
    node = data
    labelled_end = False
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            kept.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            kept.append(part)
            node = node[part]
        elif last and missing and isinstance(node, dict) and isinstance(part, str):
            kept.append(part)
        elif node is _ABSENT:
            kept.append(part)
        else:
            labelled_end = last
    return tuple(kept), labelled_end


_MESSAGES = {"extra_forbidden": "unknown field"}


def from_validation_error(exc: ValidationError, prefix: str = "", data: Any = _ABSENT) -> Problem:
    """422 naming each bad field as the caller wrote it (``escalation.steps[0].remind``).

    ``data`` is the input that was validated; without it the location is rendered as pydantic
    gives it. Where a union failed in several members, an error at the union itself (a type
    mismatch of a member the caller evidently did not mean) gives way to the other members' errors."""
    rendered: list[tuple[str, str, bool]] = []  # field, message, a type mismatch of a union member
    for err in exc.errors(include_url=False):
        loc, labelled = caller_loc(tuple(err["loc"]), data, missing=err["type"] == "missing")
        msg = _MESSAGES.get(err["type"], err["msg"])
        mismatch = labelled and err["type"].endswith("_type")
        rendered.append((field_path(loc, prefix), msg, mismatch))
    meant = [f for f, _, mismatch in rendered if not mismatch]
    errors: list[tuple[str, str]] = []
    for f, msg, mismatch in rendered:
        if mismatch and any(g == f or g.startswith((f + ".", f + "[")) for g in meant):
            continue
        if (f, msg) not in errors:
            errors.append((f, msg))
    return invalid_many(errors)


def response(problem: Problem, instance: str) -> web.Response:
    resp = web.Response(
        status=problem.status,
        body=json.dumps(problem.body(instance), ensure_ascii=False).encode(),
        content_type=PROBLEM_TYPE,
        headers={k: v for k, v in problem.headers.items() if k.lower() != "connection"},
    )
    if problem.headers.get("Connection") == "close":
        resp.force_close()  # e.g. a body that did not arrive in time: do not wait for the rest of it
    return resp


_HTTP_TITLES = {404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large"}


def _safe_path(request: web.Request) -> str:
    """The request path for logs, with read-link tokens (they work like passwords) removed."""
    path = request.path
    return "/r/<token>" if path.startswith("/r/") else path


def problem_answer(request: web.Request, exc: Exception) -> web.Response:
    """The problem+json answer to ``exc`` raised while serving ``request`` (an ``HTTPException``
    below 400 is not an error: the caller re-raises it)."""
    if isinstance(exc, Problem):
        return response(exc, request.path)
    if isinstance(exc, web.HTTPException):
        title = _HTTP_TITLES.get(exc.status, exc.reason)
        detail = "request body too large" if exc.status == 413 else None
        return response(
            Problem(
                exc.status,
                title,
                detail,
                headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
            ),
            request.path,
        )
    if isinstance(exc, OverflowError | asyncpg.DataError):
        # A value the database cannot hold (a year 9999 datetime, an out-of-range number): the
        # request was wrong, not the server. The value itself is not logged.
        log.info(
            "rejected out-of-range input on %s %s: %s",
            request.method,
            _safe_path(request),
            type(exc).__name__,
        )
        return response(
            Problem(
                422,
                "Unprocessable Content",
                "a value is out of the range this service can store",
                type_="out-of-range",
            ),
            request.path,
        )
    if unavailable(exc):
        # The database is down or restarting: the request was fine and will work again shortly
        # (a repeat is safe: writes are idempotent or keyed by Idempotency-Key).
        log.warning(
            "database unavailable on %s %s: %s", request.method, _safe_path(request), type(exc).__name__
        )
        return response(database_unavailable(), request.path)
    log.exception("unhandled error on %s %s", request.method, _safe_path(request))
    return response(Problem(500, "Internal Server Error", "an unexpected error occurred"), request.path)


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as problem+json (``problem_answer``); the API's own middleware
    (api/middleware.py) does the same inline."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_answer(request, exc)
    except Exception as exc:
        return problem_answer(request, exc)
