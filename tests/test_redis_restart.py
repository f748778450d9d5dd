"""Redis SIGKILLed in the middle of a fan-out under ``notifier dev`` (the ``make run`` process):
the process keeps running, the API keeps accepting notices (202) while ``/readyz`` says Redis is
down, and once Redis is back -- empty, on the same port -- every member of both notices gets
exactly one webhook."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.embedded import EmbeddedRedis, free_port
from notifier.settings import Settings
from tests.conftest import ADMIN_TOKEN, WEBHOOK_SECRET, auth, make_settings, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org

MEMBERS = 2000
DING = {"kind": "ding", "title": "t", "body": "b", "audience": {"units": ["c"]}, "channels": ["webhook"]}


def start_dev(
    settings: Settings, redis_url: str, port: int, data_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_REDIS_URL": redis_url,
        "NOTIFIER_DATA_DIR": str(data_dir),
        "NOTIFIER_HOST": "127.0.0.1",
        "NOTIFIER_PORT": str(port),
        "NOTIFIER_ADMIN_TOKEN": ADMIN_TOKEN,
        "NOTIFIER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NOTIFIER_QUEUE_NAME": "notifier:redis-restart",
        "NOTIFIER_RECONCILE_INTERVAL_SECONDS": "1",
        "NOTIFIER_RECONCILE_STALL_SECONDS": "1",
        "NOTIFIER_DELIVERY_LEASE_SECONDS": "30",
        # Small pieces, so the kill lands with most of the work still to do.
        "NOTIFIER_FANOUT_CHUNK_SIZE": "200",
        "NOTIFIER_DELIVERY_BATCH_SIZE": "50",
        "NOTIFIER_DELIVERY_PARALLEL_JOBS": "2",
    }
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "notifier", "dev"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def _pending(db: asyncpg.Connection, notice_ids: list[str]) -> list[Any]:
    return [
        tuple(r)
        for r in await db.fetch(
            """SELECT n.id::text, n.state,
                      count(d.id) AS rows,
                      count(d.id) FILTER (WHERE d.state IN ('queued', 'sending')) AS pending
               FROM notices n LEFT JOIN deliveries d ON d.notice_id = n.id
               WHERE n.id = ANY($1::uuid[]) GROUP BY n.id, n.state ORDER BY n.id""",
            notice_ids,
        )
    ]


async def test_redis_restart_under_dev_loses_and_duplicates_nothing(
    client: TestClient[Any, Any],
    receiver: WebhookReceiver,
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await build_org(client, groups=10, members=MEMBERS)
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{receiver.url}"}}',
    )
    receiver.delay = 0.01
    redis = EmbeddedRedis(tmp_path / "redis", free_port())
    redis.start()
    port = free_port()
    log = tmp_path / "dev.log"
    dev = start_dev(settings, redis.url, port, tmp_path / "data", log)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=auth()) as http:

            async def serving() -> bool:
                assert dev.poll() is None, log.read_text()
                try:
                    async with http.get("/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(serving, within=30, every=0.1)
            async with http.post("/v1/notices", json=DING) as resp:
                assert resp.status == 202, await resp.text()
                first = (await resp.json())["id"]

            async def under_way() -> bool:
                return len(receiver.messages) >= 100

            await wait_until(under_way, within=30)
            pid = redis.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            redis.stop()
            sent_at_kill = len(receiver.messages)
            assert sent_at_kill < MEMBERS  # the kill landed mid fan-out

            # The outage: the row is the truth, so the API still takes notices.
            async with http.post("/v1/notices", json={**DING, "title": "during"}) as resp:
                assert resp.status == 202, await resp.text()
                second = (await resp.json())["id"]
            async with http.get("/readyz") as resp:
                assert resp.status == 503
                assert resp.content_type == "application/problem+json"
                assert "redis" in (await resp.json())["detail"]
            await asyncio.sleep(1.5)  # several poll and reconcile cycles without Redis
            assert dev.poll() is None, log.read_text()

            redis.start()  # empty, same port
            await wait_until(serving, within=30, every=0.1)

            async def finished() -> bool:
                assert dev.poll() is None, log.read_text()
                rows = await _pending(db, [first, second])
                return all(
                    state == "active" and n == MEMBERS and pending == 0 for _, state, n, pending in rows
                )

            await wait_until(finished, within=90, every=0.2)
            assert dev.poll() is None, log.read_text()
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(30)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait()
        redis.stop()
    assert dev.returncode == 0, log.read_text()[-4000:]

    per_member = Counter((m.body["notice_id"], m.body["member_id"]) for m in receiver.messages)
    members = {f"m{i:05d}" for i in range(MEMBERS)}
    for notice_id in (first, second):
        got = {member: n for (nid, member), n in per_member.items() if nid == notice_id}
        assert set(got) == members, (notice_id, len(got))
        assert set(got.values()) == {1}, (notice_id, Counter(got.values()))
    assert (
        await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE notice_id = ANY($1::uuid[]) AND state <> 'delivered'",
            [first, second],
        )
        == 0
    )


async def test_api_starts_and_accepts_notices_while_redis_is_down(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    await build_org(client, groups=2, members=10)
    nobody = make_settings((settings.database_url, f"redis://127.0.0.1:{free_port()}/0"))
    async with TestClient(TestServer(create_app(nobody), host="127.0.0.1")) as down:
        resp = await down.post("/v1/notices", json=DING, headers=auth())
        assert resp.status == 202, await resp.text()
        notice_id = (await resp.json())["id"]
        ready = await down.get("/readyz")
        assert ready.status == 503
        assert ready.headers["Retry-After"].isdigit()
        assert "redis" in (await ready.json())["detail"]
    # The row is the truth: the reconciler will find it.
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", notice_id) == "queued"
