"""A real worker process SIGKILLed mid-notice, Redis wiped, a new worker started: every recipient
ends with exactly one delivery per channel and nothing is left pending."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notifier.settings import Settings
from tests.conftest import WEBHOOK_SECRET, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org, post

# Four fan-out chunks and twenty delivery batches: enough for the kill to land mid-notice.
MEMBERS = 400


def start_worker(settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_LINK_SECRET": "test-link-secret-0123456789",
        "NOTIFIER_PUBLIC_URL": "https://notifier.example.org",
        "NOTIFIER_REDIS_URL": settings.redis_url,
        "NOTIFIER_QUEUE_NAME": settings.queue_name,
        "NOTIFIER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NOTIFIER_ALLOW_PRIVATE_TARGETS": "true",
        "NOTIFIER_RECONCILE_INTERVAL_SECONDS": "1",
        "NOTIFIER_RECONCILE_STALL_SECONDS": "1",
        "NOTIFIER_DELIVERY_LEASE_SECONDS": "2",
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "worker", "--processes", "1"],  # one process: the one killed
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_sigkilled_worker_loses_and_duplicates_nothing(
    client: TestClient[Any, Any], receiver: WebhookReceiver, db: asyncpg.Connection, settings: Settings
) -> None:
    await build_org(client, groups=15, members=MEMBERS)
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{receiver.url}"}}',
    )
    receiver.delay = 0.01
    slow = {
        "NOTIFIER_FANOUT_CHUNK_SIZE": "100",
        "NOTIFIER_DELIVERY_BATCH_SIZE": "20",
        "NOTIFIER_DELIVERY_PARALLEL_JOBS": "2",
    }
    first = start_worker(settings, **slow)
    second: subprocess.Popen[bytes] | None = None
    try:
        notice = await post(
            client,
            "/v1/notices",
            {
                "kind": "ding",
                "title": "t",
                "body": "b",
                "audience": {"units": ["c"]},
                "channels": ["inapp", "webhook"],
            },
            status=202,
        )
        nid = notice["id"]
        # Kill as soon as real work is under way: some webhooks out, most not.
        for _ in range(3000):
            if len(receiver.messages) >= 50:
                break
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = await db.fetchrow(
            """SELECT count(*) FILTER (WHERE state IN ('queued', 'sending')) AS pending,
                      count(*) FILTER (WHERE state = 'sending') AS in_flight,
                      count(*) AS rows
               FROM deliveries WHERE notice_id = $1 AND channel = 'webhook'""",
            nid,
        )
        state_at_kill = await db.fetchval("SELECT state FROM notices WHERE id = $1", nid)
        assert at_kill is not None
        # The kill really landed mid-notice: fan-out unfinished or deliveries pending.
        assert state_at_kill != "active" or at_kill["pending"] > 0, (state_at_kill, dict(at_kill))
        received_at_kill = len(receiver.messages)
        assert received_at_kill < MEMBERS

        receiver.delay = 0  # the slow receiver only had to keep the first worker busy until the kill

        # Lose every queued job too.
        redis = Redis.from_url(settings.redis_url)
        await redis.flushdb()
        await redis.aclose()

        second = start_worker(settings)

        async def finished() -> bool:
            row = await db.fetchrow(
                """SELECT (SELECT state FROM notices WHERE id = $1) AS state,
                          count(*) FILTER (WHERE state IN ('queued', 'sending')) AS pending,
                          count(*) AS rows
                   FROM deliveries WHERE notice_id = $1""",
                nid,
            )
            assert row is not None
            return bool(row["state"] == "active" and row["pending"] == 0 and row["rows"] == 2 * MEMBERS)

        await wait_until(finished, within=60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)

    per_channel = await db.fetch(
        "SELECT channel, count(*) AS n, count(DISTINCT member_id) AS m, "
        "count(*) FILTER (WHERE state = 'delivered') AS delivered "
        "FROM deliveries WHERE notice_id = $1 GROUP BY channel ORDER BY channel",
        nid,
    )
    assert [tuple(r) for r in per_channel] == [
        ("inapp", MEMBERS, MEMBERS, MEMBERS),
        ("webhook", MEMBERS, MEMBERS, MEMBERS),
    ]
    recipients = await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", nid)
    assert recipients == MEMBERS
    counts = await db.fetchrow(
        "SELECT sum(recipients) AS r, sum(delivered) AS d, sum(queued) AS q "
        "FROM notice_counts WHERE notice_id = $1",
        nid,
    )
    assert counts is not None and (counts["r"], counts["d"], counts["q"]) == (MEMBERS, MEMBERS, 0)
    # Every member got the webhook. A request that was in flight when the worker died may arrive
    # twice (at-least-once, same webhook-id so receivers can dedupe) but never more than that.
    per_member = receiver.per_member()
    assert set(per_member) == {f"m{i:05d}" for i in range(MEMBERS)}
    assert len(receiver.distinct_ids()) == MEMBERS
    duplicates = sum(per_member.values()) - MEMBERS
    assert duplicates <= at_kill["in_flight"], (duplicates, at_kill["in_flight"])
