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


SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", AppDeps)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]
