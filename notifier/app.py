"""``create_app(settings)``: the aiohttp application, its resources and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from notifier import __version__
from notifier.api import (
    api_keys,
    contacts,
    duty,
    health,
    history,
    lessons,
    members,
    notices,
    policies,
    providers,
    recall,
    receipts,
    remind,
    rollcall,
    summaries,
    timeline,
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

MAX_BODY_BYTES = 16 * 1024 * 1024  # a 10,000-member batch fits comfortably

RESOURCE_MODULES = (
    health,
    api_keys,
    units,
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


def create_app(settings: Settings, channels: ChannelRegistry | None = None) -> web.Application:
    """The API. ``channels`` defaults to the registry the settings configure (tests pass their own)."""
    app = web.Application(middlewares=[problem_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[CHANNELS] = channels if channels is not None else build_registry(settings)
    app[health.OPENAPI] = build_openapi()
    app.cleanup_ctx.append(_resources)
    for module in RESOURCE_MODULES:
        module.routes.install(app)
    return app
