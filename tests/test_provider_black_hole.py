"""A push provider that accepts connections and never answers (issue 14): every send is bounded by
``provider_timeout_seconds``, the breaker opens after ``breaker_threshold`` such batches, the
rows that wait show ``circuit_open`` with the time they go, nothing stays ``sending`` past its
lease, and once the provider answers again everything goes by itself -- once per member.

The fake FCM sits behind a fault proxy in black-hole mode, so the requests never reach it: a
member's count at the fake is the number of pushes a phone really got."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.settings import Settings
from tests.conftest import advance_clock, auth, make_settings, running_worker, wait_until
from tests.fakes.fcm import FakeFcm
from tests.fakes.twilio import FakeTwilio
from tests.faultproxy import FaultProxy

MEMBERS = 12
COOL_DOWN = 60.0  # breaker_base_seconds: far longer than the test, so only the clock jump ends it
# The send bound: short enough to open the breaker quickly, long enough that a live fake answering
# on a loaded 2-core machine is never taken for a black hole (0.5 s re-opened it after recovery).
TIMEOUT = 2.0
# SMS batches go one after another and must open the breaker before the last is claimed: a bound
# between the two (0.5 s mistook a live fake for a black hole after recovery, once in CI).
SMS_TIMEOUT = 1.0


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    fake = await FakeFcm().start()
    yield fake
    await fake.stop()


async def _overdue_sending(db: asyncpg.Connection) -> int:
    n = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE state = 'sending' AND lease_until < notifier_now()"
    )
    return int(n)


async def test_a_black_holed_provider_opens_the_breaker_and_recovers_by_itself(
    settings: Settings, db: asyncpg.Connection, fcm: FakeFcm
) -> None:
    proxy = await FaultProxy("127.0.0.1", fcm.port).start()
    overrides = fcm.settings_overrides()
    via = f"http://127.0.0.1:{proxy.port}"
    overrides["fcm"] = overrides["fcm"].model_copy(update={"base_url": via})  # sends only
    tuned = settings.model_copy(
        update={
            **overrides,
            "provider_timeout_seconds": TIMEOUT,
            "breaker_threshold": 2,
            "breaker_base_seconds": COOL_DOWN,
            "delivery_batch_size": 3,
            "delivery_lease_seconds": 4.0,
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.2,
        }
    )
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'U')")
    tokens = {f"m{i:02d}": fcm.good_target() for i in range(MEMBERS)}
    await db.executemany("INSERT INTO members (id, name) VALUES ($1, $1)", [(m,) for m in tokens])
    await db.executemany("INSERT INTO member_units VALUES ($1, 'u')", [(m,) for m in tokens])
    await db.executemany(
        "INSERT INTO contacts (member_id, channel, target) VALUES ($1, 'fcm', to_jsonb($2::text))",
        list(tokens.items()),
    )
    ding = {"kind": "ding", "title": "t", "body": "b", "audience": {"units": ["u"]}, "channels": ["fcm"]}
    try:
        async with (
            TestClient(TestServer(create_app(tuned), host="127.0.0.1")) as api,
            running_worker(tuned),
        ):
            proxy.black_hole()
            started = asyncio.get_running_loop().time()
            resp = await api.post("/v1/notices", json=ding, headers=auth())
            assert resp.status == 202, await resp.text()
            nid = (await resp.json())["id"]

            async def all_held() -> bool:
                assert await _overdue_sending(db) == 0
                rows = await db.fetch(
                    "SELECT state, wait_reason FROM deliveries WHERE notice_id = $1 AND channel = 'fcm'", nid
                )
                return len(rows) == MEMBERS and all(
                    (r["state"], r["wait_reason"]) == ("queued", "circuit_open") for r in rows
                )

            await wait_until(all_held, within=30)
            # Two bounded batches (TIMEOUT each, plus backoff) opened it: not 2 x 10 s.
            assert asyncio.get_running_loop().time() - started < 15
            assert proxy.accepted >= 1 and fcm.messages == []
            opened = await db.fetchrow("SELECT open_until FROM circuit_breakers WHERE key = 'fcm'")
            assert opened is not None and opened["open_until"] is not None
            # The API shows why and when, for every member.
            resp = await api.get(f"/v1/notices/{nid}/recipients?limit=100", headers=auth())
            assert resp.status == 200, await resp.text()
            listed: list[Any] = (await resp.json())["items"]
            assert len(listed) == MEMBERS
            for item in listed:
                (d,) = item["deliveries"]
                assert d["state"] == "circuit_open" and d["next_attempt_at"] is not None, d
            await asyncio.sleep(1.5)  # ticks and reconciler passes while it is open: nothing leaves
            assert await _overdue_sending(db) == 0 and fcm.messages == []

            await proxy.restore()  # the provider answers again
            await advance_clock(db, COOL_DOWN + 1)

            async def all_sent() -> bool:
                assert await _overdue_sending(db) == 0
                n = await db.fetchval(
                    "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state = 'sent'", nid
                )
                return bool(n == MEMBERS)

            await wait_until(all_sent, within=30)
            await asyncio.sleep(1.0)
    finally:
        await proxy.stop()
    assert fcm.per_token() == {t: 1 for t in tokens.values()}
    breaker = await db.fetchrow("SELECT failures, open_until FROM circuit_breakers WHERE key = 'fcm'")
    assert breaker is not None and breaker["open_until"] is None and breaker["failures"] == 0
    per_member = await db.fetch(
        "SELECT member_id, count(*) AS n FROM deliveries WHERE notice_id = $1 AND channel = 'fcm' "
        "GROUP BY member_id",
        nid,
    )
    assert {r["member_id"]: r["n"] for r in per_member} == {m: 1 for m in tokens}


async def test_a_black_holed_sms_provider_is_never_resent_blindly_and_the_rest_waits(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    """SMS: a send whose answer never came may have been sent, so it is recorded ``unknown`` (a
    provider report or the next escalation step settles it) and never resent; the breaker opens
    on those batches all the same and the rest wait, then go once the provider answers."""
    proxy = await FaultProxy("127.0.0.1", twilio_fake.port).start()
    overrides = twilio_fake.settings_overrides()
    overrides["twilio"] = {**overrides["twilio"], "base_url": f"http://127.0.0.1:{proxy.port}"}
    tuned = make_settings(
        server_urls,
        **overrides,
        provider_timeout_seconds=SMS_TIMEOUT,
        breaker_threshold=2,
        breaker_base_seconds=COOL_DOWN,
        delivery_batch_size=3,
        delivery_parallel_jobs=1,  # batches one after another: the breaker opens before all are tried
        delivery_lease_seconds=4.0,
    )
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'U')")
    phones = {f"m{i:02d}": f"+1415555{i:04d}" for i in range(MEMBERS)}
    await db.executemany("INSERT INTO members (id, name) VALUES ($1, $1)", [(m,) for m in phones])
    await db.executemany("INSERT INTO member_units VALUES ($1, 'u')", [(m,) for m in phones])
    await db.executemany(
        "INSERT INTO contacts (member_id, channel, target) VALUES ($1, 'sms', to_jsonb($2::text))",
        list(phones.items()),
    )
    ding = {"kind": "ding", "title": "t", "body": "b", "audience": {"units": ["u"]}, "channels": ["sms"]}
    try:
        async with (
            TestClient(TestServer(create_app(tuned), host="127.0.0.1")) as api,
            running_worker(tuned),
        ):
            proxy.black_hole()
            resp = await api.post("/v1/notices", json=ding, headers=auth())
            assert resp.status == 202, await resp.text()
            nid = (await resp.json())["id"]

            async def states() -> Counter[tuple[str, str | None]]:
                assert await _overdue_sending(db) == 0
                rows = await db.fetch("SELECT state, wait_reason FROM deliveries WHERE notice_id = $1", nid)
                return Counter((r["state"], r["wait_reason"]) for r in rows)

            async def breaker_open() -> bool:
                s = await states()
                return (
                    s[("unknown", None)] + s[("queued", "circuit_open")] == MEMBERS
                    and s[("queued", "circuit_open")] > 0
                )

            await wait_until(breaker_open, within=30)
            unknown = (await states())[("unknown", None)]
            assert 2 * 3 <= unknown < MEMBERS  # the two batches that opened it, at least
            await proxy.restore()
            await advance_clock(db, COOL_DOWN + 1)

            async def rest_sent() -> bool:
                s = await states()
                return s == Counter({("unknown", None): unknown, ("sent", None): MEMBERS - unknown})

            await wait_until(rest_sent, within=30)
            await asyncio.sleep(1.0)
    finally:
        await proxy.stop()
    # Only the rest reached the provider, once each; the unknown ones were not tried again.
    sent = Counter(m.to for m in twilio_fake.sms)
    assert len(sent) == MEMBERS - unknown and set(sent.values()) == {1}
