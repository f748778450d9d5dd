"""The scripted environment of the secretary's views: the worker's pieces and the API over one
channel registry (in-app, and an SMS stand-in that answers each member as scripted)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.channels.base import Outcome, Outgoing, Result
from notifier.channels.inapp import InAppChannel
from notifier.channels.registry import ChannelRegistry
from notifier.db.pool import create_pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.queue import create_queue
from tests.workers.test_delivery_layer import ScriptedChannel


@dataclass
class PerMember(ScriptedChannel):
    """Answers each member as scripted (default: sent), with an error text for failures."""

    answers: dict[str, tuple[Outcome, str | None]] = field(default_factory=dict)

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        self.sent.extend(batch)
        out = []
        for item in batch:
            outcome, error = self.answers.get(item.member_id, (Outcome.SENT, None))
            out.append(Result(item.delivery_id, outcome, error=error, provider_ref=f"ref-{item.delivery_id}"))
        return out


Views = tuple[WorkerDeps, PerMember, TestClient[Any, Any]]


@pytest.fixture
def view_settings() -> dict[str, Any]:
    """Settings for ``views`` (a test changes them with ``@pytest.mark.parametrize``)."""
    return {}


@pytest.fixture
async def views(
    settings: Settings, db: asyncpg.Connection, view_settings: dict[str, Any]
) -> AsyncIterator[Views]:
    """The worker's pieces and the API over one registry: in-app and a per-member scripted SMS."""
    tuned = settings.model_copy(
        update={"delivery_idle_wait_seconds": 0.0, "delivery_batch_size": 500, **view_settings}
    )
    channel = PerMember()
    registry = ChannelRegistry()
    registry.register(InAppChannel())
    registry.register(channel)
    pool = await create_pool(tuned)
    queue = await create_queue(tuned)
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'Unit')")
    try:
        async with TestClient(TestServer(create_app(tuned, registry), host="127.0.0.1")) as client:
            yield WorkerDeps(tuned, pool, queue, registry), channel, client
    finally:
        await queue.aclose()
        await pool.close()
