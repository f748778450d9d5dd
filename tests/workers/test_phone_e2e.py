"""Phone channels end to end on the real engine: SMS under the account rate limit, voice
"press 1 to confirm", signed read links, and contact hygiene. Fake providers on 127.0.0.1
record every message; the engine clock is moved forward instead of sleeping."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.links import make_token
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from tests.conftest import advance_clock, auth, make_settings
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import worker_deps

PHONE_BROWSER = "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126 Mobile"


@pytest.fixture
async def deps(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> AsyncIterator[WorkerDeps]:
    settings = make_settings(server_urls, **twilio_fake.settings_overrides(), delivery_idle_wait_seconds=0.0)
    async with worker_deps(settings) as d:
        yield d


async def org(db: asyncpg.Connection, n: int, channel: str) -> None:
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'Unit')")
    await db.execute(
        "INSERT INTO members (id, name) "
        "SELECT 'm' || lpad(i::text, 5, '0'), 'M' FROM generate_series(0, $1 - 1) i",
        n,
    )
    await db.execute("INSERT INTO member_units SELECT id, 'u' FROM members")
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) "
        "SELECT id, $1, to_jsonb('+1415555' || lpad(substr(id, 3), 4, '0')) FROM members",
        channel,
    )


async def notice(deps: WorkerDeps, db: asyncpg.Connection, channels: list[str], title: str = "Muster") -> str:
    nid = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels) "
            "VALUES ('ding', $1, 'Report to the east gate.', '{\"units\": [\"u\"]}', $2) RETURNING id",
            title,
            channels,
        )
    )
    await fanout_notice(deps, nid)
    return nid


async def test_1000_sms_through_a_100_per_second_account_limit(
    deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    assert deps.channels.get("sms").capabilities.rate_per_second == 100.0
    await org(db, 1000, "sms")
    nid = await notice(deps, db, ["sms"])
    jumped, started = 0.0, time.monotonic()
    for _ in range(60):
        await deliver_notice_channel(deps, nid, "sms")
        if len(twilio_fake.sms) >= 1000:
            break
        await advance_clock(db, 1.0)
        jumped += 1.0
    engine_seconds = jumped + (time.monotonic() - started)
    assert engine_seconds >= 9.0
    per_number = Counter(m.to for m in twilio_fake.sms)
    assert len(per_number) == 1000 and set(per_number.values()) == {1}  # none dropped, none twice
    assert twilio_fake.rejected == 0
    states = await db.fetch("SELECT state, count(*) FROM deliveries WHERE notice_id = $1 GROUP BY state", nid)
    assert [tuple(r) for r in states] == [("sent", 1000)]
    # Each text carries its own signed read link.
    assert all("/r/" in m.params["Body"] for m in twilio_fake.sms[:5])


async def test_voice_press_1_records_the_read_once(
    deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    await org(db, 2, "voice")
    nid = await notice(deps, db, ["voice"])
    await deliver_notice_channel(deps, nid, "voice")
    assert len(twilio_fake.calls) == 2
    call = {
        r["member_id"]: r["provider_ref"]
        for r in await db.fetch("SELECT member_id, provider_ref FROM deliveries")
    }
    public = deps.settings.effective_public_url
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:

        async def post(path: str, params: dict[str, str], forge: bool = False) -> int:
            headers, body = twilio_fake.signed_callback(public + path, params)
            if forge:
                headers["X-Twilio-Signature"] = "AAAA" + headers["X-Twilio-Signature"][4:]
            resp = await client.post(path, data=body, headers=headers)
            await resp.read()
            return resp.status

        gather = "/v1/providers/voice/callbacks?event=gather"
        pressed = {"CallSid": call["m00000"], "AccountSid": twilio_fake.account_sid, "Digits": "1"}
        assert await post(gather, pressed, forge=True) == 403
        assert await db.fetchval("SELECT count(*) FROM recipients WHERE read_at IS NOT NULL") == 0
        assert await post(gather, pressed) == 200
        assert await post(gather, pressed) == 200  # Twilio may post twice: still one read
        other = {"CallSid": call["m00001"], "AccountSid": twilio_fake.account_sid, "Digits": "7"}
        assert await post(gather, other) == 200  # not a confirmation
        resp = await client.get(f"/v1/notices/{nid}", headers=auth())
        counts = (await resp.json())["counts"]
    reads = await db.fetch("SELECT member_id, read_via FROM recipients WHERE read_at IS NOT NULL")
    assert [tuple(r) for r in reads] == [("m00000", "voice")]
    assert counts["read"] == 1 and counts["unread"] == 1


async def test_signed_read_link(deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio) -> None:
    await org(db, 2, "sms")
    await db.execute("INSERT INTO members (id, name) VALUES ('outsider', 'O')")
    nid = await notice(deps, db, ["sms"], title="Lesson <1>")
    await deliver_notice_channel(deps, nid, "sms")
    body = next(m.params["Body"] for m in twilio_fake.sms if m.to.endswith("0000"))
    link = next(word for word in body.split() if "/r/" in word)
    path = urlsplit(link).path
    secret = deps.settings.link_secret.get_secret_value().encode()
    token = path.rsplit("/", 1)[1]
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:

        async def open_(p: str, agent: str = PHONE_BROWSER) -> tuple[int, str]:
            resp = await client.get(p, headers={"User-Agent": agent})
            return resp.status, await resp.text()

        async def reads() -> int:
            return int(await db.fetchval("SELECT count(*) FROM recipients WHERE read_at IS NOT NULL"))

        tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        assert (await open_(f"/r/{tampered}"))[0] == 403
        expired = make_token(secret, nid, "m00000", int(time.time()) - 1)
        assert (await open_(f"/r/{expired}"))[0] == 410
        outsider = make_token(secret, nid, "outsider", int(time.time()) + 600)
        assert (await open_(f"/r/{outsider}"))[0] == 404
        forged = make_token(b"not-our-secret", nid, "m00001", int(time.time()) + 600)
        assert (await open_(f"/r/{forged}"))[0] == 403
        assert await reads() == 0
        # A chat app's link preview shows the page but is not the member reading it.
        assert (await open_(path, agent="WhatsApp/2.23.20.0 A"))[0] == 200
        assert await reads() == 0
        status, page = await open_(path)
        assert status == 200 and "Lesson &lt;1&gt;" in page and "Report to the east gate." in page
        assert (await open_(path))[0] == 200  # opening it again changes nothing
    rows = await db.fetch("SELECT member_id, read_via FROM recipients WHERE read_at IS NOT NULL")
    assert [tuple(r) for r in rows] == [("m00000", "link")]
    assert await db.fetchval("SELECT sum(read) FROM notice_counts WHERE notice_id = $1", nid) == 1


async def test_a_gone_contact_is_disabled_and_the_members_other_contact_is_used(
    client: TestClient[Any, Any],
    worker: None,
    receiver: WebhookReceiver,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    resp = await client.put("/v1/units/u", json={"name": "U"}, headers=auth())
    assert resp.status == 201
    resp = await client.put("/v1/members/m1", json={"name": "M", "units": ["u"]}, headers=auth())
    assert resp.status == 201
    for path in ("old", "new"):
        resp = await client.post(
            "/v1/members/m1/contacts",
            json={"channel": "webhook", "target": f"{receiver.url}/{path}"},
            headers=auth(),
        )
        assert resp.status == 201
    receiver.responses["m1"] = [410]  # the newest contact ("new") answers 410 Gone

    async def send() -> str:
        resp = await client.post(
            "/v1/notices",
            json={
                "kind": "notice",
                "title": "t",
                "body": "b",
                "audience": {"members": ["m1"]},
                "channels": ["webhook"],
            },
            headers=auth(),
        )
        nid: str = (await resp.json())["id"]
        for _ in range(400):
            if await db.fetchval(
                "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state IN ('delivered', 'failed')",
                nid,
            ):
                return nid
            await db.execute("SELECT pg_sleep(0.025)")
        raise AssertionError("delivery did not settle")

    first = await send()
    assert await db.fetchval("SELECT state FROM deliveries WHERE notice_id = $1", first) == "failed"
    disabled = await db.fetch(
        "SELECT target->>'url' AS url, disabled_reason FROM contacts WHERE disabled_at IS NOT NULL"
    )
    assert [r["url"] for r in disabled] == [f"{receiver.url}/new"]
    second = await send()
    assert await db.fetchval("SELECT state FROM deliveries WHERE notice_id = $1", second) == "delivered"
    assert [m.path for m in receiver.messages] == ["/hook/old"]
    listed = await (await client.get("/v1/members/m1/contacts", headers=auth())).json()
    state = {c["target"]["url"].rsplit("/", 1)[1]: c["disabled_reason"] for c in listed["items"]}
    assert state == {"new": "HTTP 410: endpoint gone", "old": None}
