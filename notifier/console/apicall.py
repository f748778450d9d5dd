"""Calling the API's own handlers from a page, as the session's principal.

A page that shows or changes what the API shows or changes calls the same handler with the
same validated models: one visibility rule, one creation path, one audit entry -- a secretary's
session sees exactly what a secretary key of its unit sees. Problems (404, 409, 422) propagate
as they would to an API caller; the page decides how to show them.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from multidict import CIMultiDict
from pydantic import BaseModel

from notifier.api.keys import PRINCIPAL
from notifier.api.principal import Principal
from notifier.api.routing import Call, Handler

UNREAD: web.RequestKey[web.Request] = web.RequestKey("console_unread_request", web.Request)


def as_principal(
    request: web.Request,
    p: Principal,
    headers: dict[str, str] | None = None,
    match: dict[str, str] | None = None,
) -> web.Request:
    """The request as the API handler sees it: the principal, extra headers and path parameters."""
    merged = CIMultiDict(request.headers)
    for name, value in (headers or {}).items():
        merged[name] = value
    # A request whose body was read cannot be cloned: the page wrapper keeps an unread copy.
    unread: web.Request = request.get(UNREAD, request)
    sub = unread.clone(headers=merged)
    sub[PRINCIPAL] = p
    if match is not None:
        info = UrlMappingMatchInfo(match, request.match_info.route)
        info.add_app(request.app)
        sub._match_info = info
    return sub


async def call(
    request: web.Request,
    p: Principal,
    handler: Handler,
    *,
    query: BaseModel | None = None,
    body: BaseModel | None = None,
    headers: dict[str, str] | None = None,
    match: dict[str, str] | None = None,
) -> Any:
    """The JSON the handler answers (its status is a success: problems are raised)."""
    response = await handler(as_principal(request, p, headers, match), Call(body, query))
    assert isinstance(response, web.Response) and response.body is not None
    raw = response.body
    assert isinstance(raw, bytes)
    return json.loads(raw)
