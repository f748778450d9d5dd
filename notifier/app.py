"""``create_app(settings)``: the aiohttp application, its resources and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from notifier import __version__
from notifier.api import (
    api_keys,
    audit,
    contacts,
    duty,
    health,
    history,
    imports,
    lessons,
    members,
    notices,
    policies,
    providers,
    ratelimit,
    recall,
    receipts,
    remind,
    rollcall,
    summaries,
    timeline,
    unit_contacts,
    unit_counts,
    unit_reports,
    units,
    webpush,
)
from notifier.api.auth import auth_middleware
from notifier.api.keys import DEPS, SETTINGS, AppDeps
from notifier.api.problems import problem_middleware
from notifier.api.routing import Operation, openapi_document
from notifier.channels.registry import ChannelRegistry, build_registry
from notifier.db.pool import create_pool
from notifier.settings import Settings
from notifier.workers.queue import create_queue

LINGER_SECONDS = 2.0

RESOURCE_MODULES = (
    health,
    api_keys,
    audit,
    units,
    unit_contacts,
    imports,
    duty,
    members,
    history,
    contacts,
    policies,
    notices,
    unit_counts,
    unit_reports,
    lessons,
    recall,
    rollcall,
    remind,
    timeline,
    receipts,
    providers,
    summaries,
    webpush,
)


def all_operations() -> list[Operation]:
    return [op for module in RESOURCE_MODULES for op in module.routes.operations]


def build_openapi() -> dict[str, Any]:
    return openapi_document(all_operations(), __version__)


CHANNELS = web.AppKey("channels", ChannelRegistry)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await create_pool(settings)
    queue = await create_queue(settings)
    channels = app[CHANNELS]
    app[DEPS] = AppDeps(settings, pool, queue, channels)
    try:
        yield
    finally:
        await channels.close()
        await queue.aclose()
        await pool.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """What the HTTP server (``web.AppRunner``) is given: bounds on how long and how large a request
    head may be. A slow client (one byte a second) is cut off when the keep-alive timer -- started
    when the connection opens and not extended by partial data -- finds no complete request head;
    an oversized request line or header is answered 400 by the parser. Bodies are bounded in the
    handlers (``routing.read_body``)."""
    return {
        "keepalive_timeout": settings.http_keepalive_seconds,
        "max_line_size": settings.http_max_line_size,
        "max_field_size": settings.http_max_field_size,
        "max_headers": settings.http_max_headers,
        # After answering a request whose body was not read (413, 408), the body is drained this long
        # (so the client sees the answer rather than a reset), then the connection is closed.
        "lingering_time": LINGER_SECONDS,
    }


def create_app(settings: Settings, channels: ChannelRegistry | None = None) -> web.Application:
    """The API. ``channels`` defaults to the registry the settings configure (tests pass their own)."""
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware], client_max_size=settings.http_max_body_bytes
    )
    app[SETTINGS] = settings
    app[CHANNELS] = channels if channels is not None else build_registry(settings)
    app[health.OPENAPI] = build_openapi()
    app.on_response_prepare.append(ratelimit.add_headers)
    app.cleanup_ctx.append(_resources)
    for module in RESOURCE_MODULES:
        module.routes.install(app)
    return app
