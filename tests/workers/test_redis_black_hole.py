"""A Redis that stops answering (hung, or a network path that drops its packets) without closing
the connection: no read timeout is configured (workers/queue.py says why), so only the answer
deadline of the queue client keeps a wake-up or the worker's poll loop from waiting forever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from notifier.settings import Settings
from notifier.workers import queue
from notifier.workers.queue import enqueue_fanout, queue_client
from notifier.workers.settings import create_worker, stop_worker
from tests.faultproxy import FaultProxy


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[FaultProxy]:
    p = await FaultProxy.for_url(settings.redis_url).start()
    yield p
    await p.stop()


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # raising=False: on code without the deadline the test runs (and shows the hang) anyway
    monkeypatch.setattr(queue, "READ_DEADLINE_SECONDS", 0.5, raising=False)


def _through(settings: Settings, proxy: FaultProxy, name: str) -> Settings:
    return settings.model_copy(
        update={"redis_url": proxy.url_for(settings.redis_url), "queue_name": f"notifier:{name}"}
    )


async def test_a_wake_up_into_a_black_holed_redis_gives_up_and_the_next_reconnects(
    settings: Settings, proxy: FaultProxy
) -> None:
    own = _through(settings, proxy, "blackhole-api")
    q = queue_client(own)
    try:
        assert await q.ping()  # a pooled connection, open through the proxy
        proxy.freeze()
        async with asyncio.timeout(10):  # without a deadline: waits for ever
            assert not await enqueue_fanout(q, str(uuid.uuid4()))
        notice_id = str(uuid.uuid4())
        assert await enqueue_fanout(q, notice_id)  # a new connection: the wake-up is queued
        assert await q.zscore(own.queue_name, f"fanout:{notice_id}:new") is not None
    finally:
        await q.delete(own.queue_name)
        await q.aclose()


async def test_a_worker_whose_redis_connections_black_hole_polls_on(
    settings: Settings, proxy: FaultProxy, migrated: None
) -> None:
    own = _through(settings, proxy, "blackhole-worker")
    worker = create_worker(own)
    task = asyncio.ensure_future(worker.async_run())
    direct = Redis.from_url(settings.redis_url)
    try:

        async def ran_jobs(at_least: int) -> None:
            while worker.jobs_complete < at_least:
                assert not task.done()
                await asyncio.sleep(0.05)

        async with asyncio.timeout(20):
            await ran_jobs(2)  # the cron jobs run: the worker is up
        proxy.freeze()
        seen = worker.jobs_complete
        async with asyncio.timeout(20):  # without a deadline: the poll loop hangs for ever
            await ran_jobs(seen + 3)
        assert worker.redis_down_since is None
    finally:
        async with asyncio.timeout(30):
            await stop_worker(worker, task)
        await direct.delete(own.queue_name)
        await direct.aclose()
