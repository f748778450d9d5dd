"""Typed keys for the application and request state."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from arq.connections import ArqRedis

from notifier.api.principal import Principal
from notifier.channels.registry import ChannelRegistry
from notifier.db.pool import Pool
from notifier.settings import Settings


@dataclass(slots=True)
class AppDeps:
    settings: Settings
    pool: Pool
    queue: ArqRedis
    channels: ChannelRegistry
    # Bulk work of requests (a receipts batch of up to 10,000 reads): a small pool of its own whose
    # backends run at the workers' lower priority on a local server, so that status reads and
    # single receipts, on ``pool``, neither wait for a connection nor for the CPU behind it.
    bulk_pool: Pool
    # Status polls (GET /v1/notices/{id}): a small pool whose sessions plan the poll's statement
    # once (db/visibility.py STATUS_SESSION), not on every execution.
    status_pool: Pool


SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", AppDeps)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]
