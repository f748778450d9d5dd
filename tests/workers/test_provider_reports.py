"""Provider reports are never lost (issue 7, defect 10).

A send whose answer was lost is ``unknown`` and has no provider id; the report that settles it is
matched by our own delivery id where the provider echoes it (Aliyun's ``out_id``, the callback URL
we gave Twilio). A report parked while the write-back that recorded its provider id was committing
is applied by the reconciler, and parked reports that never match are purged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.channels.aliyun import report_url
from notifier.channels.registry import build_registry
from notifier.db.pool import create_pool
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.queue import create_queue
from notifier.workers.reconcile import reconcile_once
from tests.conftest import advance_clock, make_settings
from tests.fakes.aliyun import Accepted, FakeAliyun
from tests.fakes.twilio import FakeTwilio
from tests.workers.test_delivery_layer import ScriptedChannel
from tests.workers.test_phone_e2e import notice, org


@pytest.fixture
async def phone_deps(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio, aliyun_fake: FakeAliyun
) -> AsyncIterator[tuple[WorkerDeps, WorkerDeps]]:
    """Deps for an Aliyun engine and for a Twilio one (SMS and voice each)."""
    made = []
    for fake in (aliyun_fake, twilio_fake):
        settings = make_settings(server_urls, **fake.settings_overrides(), delivery_idle_wait_seconds=0.0)
        made.append(
            WorkerDeps(
                settings, await create_pool(settings), await create_queue(settings), build_registry(settings)
            )
        )
    yield made[0], made[1]
    for deps in made:
        await deps.channels.close()
        await deps.queue.aclose()
        await deps.pool.close()


async def rows(db: asyncpg.Connection, nid: str) -> dict[str, tuple[str, str | None]]:
    found = await db.fetch("SELECT member_id, state, provider_ref FROM deliveries WHERE notice_id = $1", nid)
    return {r["member_id"]: (r["state"], r["provider_ref"]) for r in found}


async def test_aliyun_out_id_settles_a_send_whose_answer_was_lost(
    phone_deps: tuple[WorkerDeps, WorkerDeps], db: asyncpg.Connection, aliyun_fake: FakeAliyun
) -> None:
    deps, _ = phone_deps
    await org(db, 3, "sms")
    # (The fake reads 14155550000 as a mainland number, as Aliyun would.)
    aliyun_fake.responses["+8614155550000"] = ["drop"]  # the request arrived; its answer never did
    nid = await notice(deps, db, ["sms"])
    await deliver_notice_channel(deps, nid, "sms")
    before = await rows(db, nid)
    assert before["m00000"] == ("unknown", None)
    assert before["m00001"][0] == "sent" and before["m00002"][0] == "sent"
    [lost] = aliyun_fake.dropped
    settings = deps.settings
    url = urlsplit(report_url(settings.effective_public_url, settings.link_secret.get_secret_value(), "sms"))
    path = f"{url.path}?{url.query}"
    sent = next(m for m in aliyun_fake.messages if m.phone == "+8614155550001")
    async with TestClient(TestServer(create_app(settings, deps.channels), host="127.0.0.1")) as client:
        # Whoever holds the report URL cannot settle a delivery by guessing its (sequential) id:
        # an out_id without our MAC is not ours.
        assert str(lost["OutId"]).count(".") == 1
        bare = {**lost, "OutId": str(lost["OutId"]).split(".")[0]}
        forged = aliyun_fake.sms_report(Accepted("SendSms", "+8614155550000", bare, "666^0"), success=False)
        assert (await client.post(path, data=forged)).status == 200
        assert (await rows(db, nid))["m00000"] == ("unknown", None)
        # The provider delivered the message we never heard back about: its report carries our out_id.
        report = aliyun_fake.sms_report(Accepted("SendSms", "+8614155550000", lost, "900001^0"))
        assert (await client.post(path, data=report)).status == 200
        # A report naming one of our ids but another message than the one we recorded is not ours.
        foreign = aliyun_fake.sms_report(Accepted("SendSms", sent.phone, sent.params, "777^0"), success=False)
        assert (await client.post(path, data=foreign)).status == 200
    after = await rows(db, nid)
    assert after["m00000"] == ("delivered", None)
    assert after["m00001"] == before["m00001"]  # untouched by the foreign report (which is parked)
    assert await db.fetchval("SELECT count(*) FROM provider_events WHERE provider_ref = '777^0'") == 1
    counts = await db.fetchrow(
        "SELECT sum(delivered) AS d, sum(sent) AS s FROM notice_counts WHERE notice_id = $1", nid
    )
    assert counts is not None and (counts["d"], counts["s"]) == (1, 2)


async def test_twilio_callback_url_settles_a_send_whose_answer_was_lost(
    phone_deps: tuple[WorkerDeps, WorkerDeps], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    _, deps = phone_deps
    await org(db, 2, "sms")
    twilio_fake.responses["+14155550000"] = ["drop"]
    nid = await notice(deps, db, ["sms"])
    await deliver_notice_channel(deps, nid, "sms")
    assert (await rows(db, nid))["m00000"] == ("unknown", None)
    [lost] = twilio_fake.dropped
    callback = lost["StatusCallback"]  # the URL Twilio will call, and sign, for this message
    assert callback.startswith(deps.settings.effective_public_url) and "delivery=" in callback
    url = urlsplit(callback)
    params = {
        "MessageSid": "SM" + "f" * 32,
        "MessageStatus": "delivered",
        "AccountSid": twilio_fake.account_sid,
    }
    headers, body = twilio_fake.signed_callback(callback, params)
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:
        resp = await client.post(f"{url.path}?{url.query}", data=body, headers=headers)
        assert resp.status == 200
        # The delivery id is signed with the URL: moving it to another delivery breaks the signature.
        other = await db.fetchval("SELECT id FROM deliveries WHERE member_id = 'm00001'")
        forged = f"{url.path}?delivery={other}"
        resp = await client.post(forged, data=body, headers=headers)
        assert resp.status == 403
    assert (await rows(db, nid))["m00000"][0] == "delivered"
    assert (await rows(db, nid))["m00001"][0] == "sent"


async def test_the_reconciler_applies_a_report_parked_while_its_write_back_committed(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    from tests.workers.test_delivery_layer import make_members, make_notice

    deps, _ = env
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["scripted"])
    await deliver_notice_channel(deps, nid, "scripted")
    ref = await db.fetchval("SELECT provider_ref FROM deliveries WHERE member_id = 'm00000'")
    # The callback ran while the write-back recording ``ref`` was uncommitted: it found nothing
    # and parked; the write-back had already looked for parked reports.
    await db.execute(
        "INSERT INTO provider_events (channel, provider_ref, state, read) "
        "VALUES ('scripted', $1, 'delivered', true)",
        ref,
    )
    result = await reconcile_once(deps)
    assert (await rows(db, nid))["m00000"] == ("delivered", ref)
    assert result["parked_reports"] == 1
    read = await db.fetchval("SELECT read_via FROM recipients WHERE member_id = 'm00000'")
    assert read == "scripted"
    assert await db.fetchval("SELECT count(*) FROM provider_events WHERE applied_at IS NULL") == 0
    assert (await reconcile_once(deps))["parked_reports"] == 0  # applied once


async def test_parked_reports_that_never_match_are_purged(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, _ = env
    await db.execute(
        "INSERT INTO provider_events (channel, provider_ref, state) VALUES ('scripted', 'old', 'sent')"
    )
    await advance_clock(db, deps.settings.provider_event_ttl_seconds + 60)
    await db.execute(
        "INSERT INTO provider_events (channel, provider_ref, state) VALUES ('scripted', 'new', 'sent')"
    )
    await reconcile_once(deps)
    left = await db.fetch("SELECT provider_ref FROM provider_events")
    assert [r["provider_ref"] for r in left] == ["new"]
