"""The worker through Redis outages, in process: a worker that starts while Redis is down waits
for it (and then finds the work PostgreSQL holds), and stopping a worker whose Redis is gone still
releases its pools."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from notifier.embedded import EmbeddedRedis, free_port
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.settings import create_worker, run_supervised, stop_worker
from tests.conftest import make_settings, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org, post

MEMBERS = 200


async def _org_with_webhooks(client: TestClient[Any, Any], db: asyncpg.Connection, url: str) -> None:
    await build_org(client, groups=4, members=MEMBERS)
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{url}"}}',
    )


def _kill(redis: EmbeddedRedis) -> None:
    assert redis.pid is not None
    os.kill(redis.pid, signal.SIGKILL)
    redis.stop()


async def test_worker_started_while_redis_is_down_waits_for_it(
    client: TestClient[Any, Any],
    receiver: WebhookReceiver,
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await _org_with_webhooks(client, db, receiver.url)
    redis = EmbeddedRedis(tmp_path / "redis", free_port())  # not started yet
    own = make_settings((settings.database_url, redis.url), queue_name="notifier:outage")
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    supervised = asyncio.ensure_future(run_supervised(own, stop))
    try:
        # Accepted while this worker's Redis is down: the wake-up goes nowhere this worker reads.
        notice = await post(
            client,
            "/v1/notices",
            {
                "kind": "ding",
                "title": "t",
                "body": "b",
                "audience": {"units": ["c"]},
                "channels": ["webhook"],
            },
            status=202,
        )
        await asyncio.sleep(1.5)  # at least one failed start and its backoff
        assert not supervised.done()
        redis.start()

        async def all_sent() -> bool:
            assert not supervised.done()
            return len(receiver.per_member()) == MEMBERS

        await wait_until(all_sent, within=60)
        _kill(redis)
        await asyncio.sleep(0.5)
        assert not supervised.done()
    finally:
        stop.set_result(None)
        async with asyncio.timeout(30):
            await supervised  # returns cleanly although Redis is gone
        redis.stop()
    assert set(Counter(m.body["notice_id"] for m in receiver.messages)) == {notice["id"]}
    assert set(receiver.per_member().values()) == {1}


async def test_stopping_a_worker_whose_redis_is_gone_releases_its_pools(
    db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    redis = EmbeddedRedis(tmp_path / "redis", free_port())
    redis.start()
    try:
        worker = create_worker(make_settings((settings.database_url, redis.url)))
        task = asyncio.ensure_future(worker.async_run())

        async def started() -> bool:
            assert not task.done()
            return "deps" in worker.ctx

        await wait_until(started, within=30)
        deps: WorkerDeps = worker.ctx["deps"]
        _kill(redis)
        await asyncio.sleep(0.5)  # polls fail meanwhile; the loop must not end
        assert not task.done()

        async def idle() -> bool:
            return worker.job_counter == 0

        await wait_until(idle, within=10)
        # Redis failing while a job starts must give its job slot back (arq's would leak it,
        # and after max_jobs such failures the worker would take no job ever again).
        with pytest.raises(RedisConnectionError):
            await worker.start_jobs([b"deliver:x"])
        assert worker.job_counter == 0
        assert not task.done()
        async with asyncio.timeout(30):
            await stop_worker(worker, task)
        assert deps.pool.is_closing()
    finally:
        redis.stop()
