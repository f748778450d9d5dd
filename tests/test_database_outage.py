"""PostgreSQL goes away for a few seconds (issue 7, defect 12).

The worker and the API reach PostgreSQL through a fault proxy the test cuts: open connections are
reset, new ones refused, as when the server crashes and restarts. A batch whose messages have left
keeps its results and writes them back once the database returns -- a blip costs time, never a
second webhook -- and the API answers 503 problem+json with Retry-After meanwhile, not 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.settings import Settings
from tests.conftest import auth, running_worker, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.faultproxy import FaultProxy
from tests.helpers import build_org, post

OUTAGE_SECONDS = 3.0
MEMBERS = 100


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[FaultProxy]:
    p = await FaultProxy.for_url(settings.database_url).start()
    yield p
    await p.stop()


async def test_a_database_blip_during_write_back_sends_nothing_twice(
    client: TestClient[Any, Any],
    receiver: WebhookReceiver,
    db: asyncpg.Connection,
    settings: Settings,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await build_org(client, groups=5, members=MEMBERS)
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{receiver.url}"}}',
    )
    outage: list[asyncio.Task[None]] = []

    async def restore_later() -> None:
        await asyncio.sleep(OUTAGE_SECONDS)
        await proxy.restore()

    async def crash_mid_batch(payload: dict[str, Any]) -> None:
        # While this request is unanswered its batch cannot have written back: the write-back
        # (and those of the batches beside it) meets a database that is gone.
        if sum(receiver.requests.values()) == 30 and not outage:
            await proxy.cut()
            outage.append(asyncio.create_task(restore_later()))

    receiver.on_request = crash_mid_batch
    receiver.delay = 0.05
    tuned = settings.model_copy(
        update={
            "database_url": proxy.url_for(settings.database_url),
            "delivery_batch_size": 20,
            "delivery_lease_seconds": 12.0,  # longer than the outage: the results must survive it
        }
    )
    async with running_worker(tuned):
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

        async def finished() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state = 'delivered'", notice["id"]
            )
            return bool(n == MEMBERS)

        await wait_until(finished, within=60)
        await asyncio.gather(*outage)
    assert proxy.cuts == 1
    # The outage really hit write-backs, and they were kept and retried rather than dropped.
    assert any("write-back for webhook failed" in r.getMessage() for r in caplog.records)
    assert receiver.requests == {f"m{i:05d}": 1 for i in range(MEMBERS)}
    stuck = await db.fetchval("SELECT count(*) FROM deliveries WHERE state IN ('queued', 'sending')")
    assert stuck == 0
    # (A claim whose reply the cut swallowed holds its rows, unsent, until its lease runs out: they
    # go later, with attempt 2, but still once.)


async def test_the_api_answers_503_with_retry_after_while_the_database_is_away(
    settings: Settings, db: asyncpg.Connection, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    tuned = settings.model_copy(update={"database_url": proxy.url_for(settings.database_url)})
    async with TestClient(TestServer(create_app(tuned), host="127.0.0.1")) as api:
        resp = await api.put("/v1/units/u", json={"name": "U", "parent_id": None}, headers=auth())
        assert resp.status in (200, 201), await resp.text()
        await proxy.cut()
        notice = {
            "kind": "ding",
            "title": "t",
            "body": "b",
            "audience": {"units": ["u"]},
            "channels": ["inapp"],
        }
        with caplog.at_level(logging.WARNING):
            answers = [
                await api.get("/v1/units/u", headers=auth()),
                await api.get("/v1/escalation-policies", headers=auth()),
                await api.post("/v1/notices", json=notice, headers=auth()),
            ]
        for resp in answers:
            assert resp.status == 503, (resp.url, resp.status, await resp.text())
            assert resp.content_type == "application/problem+json"
            assert int(resp.headers["Retry-After"]) > 0
            body = await resp.json()
            assert body["status"] == 503 and body["type"].endswith("/unavailable")
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)  # expected, not a crash
        assert await db.fetchval("SELECT count(*) FROM notices") == 0
        await proxy.restore()

        async def back() -> bool:
            return (await api.get("/v1/units/u", headers=auth())).status == 200

        await wait_until(back, within=15)


async def test_a_connection_lost_inside_a_transaction_is_503_not_500(
    settings: Settings, db: asyncpg.Connection, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """When the connection dies in the middle of a transaction's statement, asyncpg raises the
    loss (ConnectionDoesNotExistError) and then, leaving the ``async with conn.transaction()``
    block, an InterfaceError ("the underlying connection is closed") in its place: that is the
    database being away too, not a bug."""
    tuned = settings.model_copy(update={"database_url": proxy.url_for(settings.database_url)})
    async with TestClient(TestServer(create_app(tuned), host="127.0.0.1")) as api:
        resp = await api.put("/v1/units/u", json={"name": "U", "parent_id": None}, headers=auth())
        assert resp.status == 201, await resp.text()
        statuses = []
        for _ in range(3):  # each time the cut lands while a statement of the transaction waits
            proxy.latency = 0.4
            answer = asyncio.ensure_future(
                api.put("/v1/units/v", json={"name": "V", "parent_id": "u"}, headers=auth())
            )
            await asyncio.sleep(0.6)
            await proxy.cut()
            resp = await answer
            statuses.append((resp.status, resp.headers.get("Retry-After")))
            proxy.latency = 0.0
            await proxy.restore()
        assert all(s == 503 and (r or "").isdigit() for s, r in statuses), statuses
        assert not any("unhandled error" in r.getMessage() for r in caplog.records)
        resp = await api.put("/v1/units/v", json={"name": "V", "parent_id": "u"}, headers=auth())
        assert resp.status in (200, 201)
