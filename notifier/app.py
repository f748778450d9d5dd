"""``create_app(settings)``: the aiohttp application, its resources and routes."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from aiohttp import web

from notifier import __version__, console
from notifier.api import (
    api_keys,
    attendance,
    audit,
    budgets,
    checkin_photos,
    checkins,
    console_links,
    contacts,
    duty,
    exams,
    health,
    history,
    imports,
    lessons,
    meetings,
    members,
    metrics,
    notices,
    points,
    policies,
    providers,
    quizzes,
    rankings,
    recall,
    receipts,
    records,
    remind,
    rollcall,
    stream,
    summaries,
    supervision,
    timeline,
    unit_contacts,
    unit_counts,
    unit_reports,
    units,
    webpush,
)
from notifier.api.auth import KEY_LOOKUPS, KeyLookups
from notifier.api.keys import DEPS, SETTINGS, AppDeps
from notifier.api.middleware import add_headers, api_middleware
from notifier.api.receipts_group import RECEIPTS_GROUP, ReceiptGroup
from notifier.api.routing import Operation, openapi_document
from notifier.api.watch import WatchHub
from notifier.channels.registry import ChannelRegistry, build_registry
from notifier.db.pool import API_SESSION, create_pool
from notifier.db.visibility import STATUS_SESSION
from notifier.metrics import POOLS
from notifier.settings import Settings
from notifier.workers.priority import backend_priority_init
from notifier.workers.queue import create_queue

LINGER_SECONDS = 2.0
# Connections of the API's pool for bulk work (AppDeps.bulk_pool): a batch call holds one.
BULK_POOL_MAX = 2
# Connections of the API's pool for status polls (AppDeps.status_pool): a poll holds one ~0.2 ms.
STATUS_POOL_MAX = 4

RESOURCE_MODULES = (
    health,
    metrics,
    api_keys,
    audit,
    console_links,
    units,
    budgets,
    unit_contacts,
    imports,
    duty,
    members,
    history,
    contacts,
    policies,
    notices,
    stream,
    unit_counts,
    unit_reports,
    lessons,
    quizzes,
    rankings,
    exams,
    meetings,
    checkins,
    checkin_photos,
    recall,
    rollcall,
    remind,
    timeline,
    receipts,
    points,
    providers,
    summaries,
    webpush,
    records,
    attendance,
    supervision,
)


# Installed first: the router tries the resources under one path prefix (``/v1/notices``: a
# dozen of them) in the order they were added, a regular expression and a coroutine each, so the
# busiest route (a single read receipt) is found by its first try. The document keeps the order
# above; no other route matches these modules' paths (tests/api/test_routing_order.py).
HOT_MODULES = (receipts,)


def installation_order() -> tuple[ModuleType, ...]:
    return (*HOT_MODULES, *(m for m in RESOURCE_MODULES if m not in HOT_MODULES))


def all_operations() -> list[Operation]:
    return [op for module in RESOURCE_MODULES for op in module.routes.operations]


def build_openapi() -> dict[str, Any]:
    return openapi_document(all_operations(), __version__)


@functools.cache
def _served_openapi() -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves, built once per process: it is a function of the
    routes alone, and building it (pydantic's JSON schemas) costs ~0.1 s of CPU -- paid by every
    app a process creates (the test suite creates one per test). Served as is, never changed."""
    return build_openapi()


CHANNELS = web.AppKey("channels", ChannelRegistry)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Each closed when a later one fails to open, as when the app stops (last opened, first closed).
    async with contextlib.AsyncExitStack() as opened:
        pool = await create_pool(settings, server_settings=API_SESSION)
        opened.push_async_callback(pool.close)
        POOLS.track(pool, "api")
        bulk_pool = await create_pool(
            settings,
            min_size=0,
            max_size=BULK_POOL_MAX,
            server_settings=API_SESSION,
            on_connect=backend_priority_init(settings.database_url, settings.worker_nice),
        )
        opened.push_async_callback(bulk_pool.close)
        POOLS.track(bulk_pool, "api_bulk")
        status_pool = await create_pool(
            settings, min_size=1, max_size=STATUS_POOL_MAX, server_settings=STATUS_SESSION
        )
        opened.push_async_callback(status_pool.close)
        POOLS.track(status_pool, "api_status")
        queue = await create_queue(settings)
        opened.push_async_callback(queue.aclose)
        channels = app[CHANNELS]
        opened.push_async_callback(channels.close)
        app[DEPS] = AppDeps(settings, pool, queue, channels, bulk_pool=bulk_pool, status_pool=status_pool)
        yield


async def _watchers(app: web.Application) -> AsyncIterator[None]:
    """The live streams' watcher hub (api/watch.py), polling with the app's pool."""
    hub = app[stream.WATCHERS]
    await hub.start(app[DEPS].pool)
    try:
        yield
    finally:
        await hub.stop()


async def _group_commits(app: web.Application) -> AsyncIterator[None]:
    """The group commits of key lookups (api/auth.py) and single read receipts
    (api/receipts_group.py); their flushes end before the pool closes."""
    settings, pool = app[SETTINGS], app[DEPS].pool
    limits = {role: (lim.per_second, lim.burst) for role, lim in settings.rate_limits.by_role().items()}
    app[KEY_LOOKUPS] = lookups = KeyLookups(pool, limits, flushes=settings.group_commit_flushes)
    app[RECEIPTS_GROUP] = receipts_group = ReceiptGroup(
        pool, app[stream.WATCHERS].changed, flushes=settings.group_commit_flushes
    )
    try:
        yield
    finally:
        await receipts_group.close()
        await lookups.close()


async def _end_streams(app: web.Application) -> None:
    # on_shutdown runs before the server waits for its handlers: open streams end now.
    app[stream.WATCHERS].close_streams()


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
        middlewares=[api_middleware],
        client_max_size=settings.http_max_body_bytes,
    )
    app[SETTINGS] = settings
    app[CHANNELS] = channels if channels is not None else build_registry(settings)
    app[health.OPENAPI] = _served_openapi()
    app[stream.WATCHERS] = WatchHub(settings)
    app.on_response_prepare.append(add_headers)
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(_watchers)
    app.cleanup_ctx.append(_group_commits)
    app.on_shutdown.append(_end_streams)
    for module in installation_order():
        module.routes.install(app)
    console.setup(app)  # the web console and the member pages (notifier/console/)
    return app
