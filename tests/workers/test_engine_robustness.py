"""The time engine under races and failures: reads racing a step, two schedulers, a SIGKILLed
worker with Redis wiped, scheduled sends across restarts, expiry. Fake SMS provider; the engine
clock is moved, never slept through."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from notifier.channels.registry import build_registry
from notifier.db import receipts
from notifier.db.pool import create_pool
from notifier.domain.escalation import PolicyRules
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from notifier.workers.queue import create_queue
from notifier.workers.tick import tick_once
from tests.conftest import WEBHOOK_SECRET, advance_clock, make_settings, wait_until
from tests.fakes.twilio import FakeTwilio


async def make_deps(settings: Settings) -> WorkerDeps:
    return WorkerDeps(
        settings, await create_pool(settings), await create_queue(settings), build_registry(settings)
    )


async def close_deps(deps: WorkerDeps) -> None:
    await deps.channels.close()
    await deps.queue.aclose()
    await deps.pool.close()


@pytest.fixture
async def settings_sms(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> Settings:
    return make_settings(
        server_urls,
        **twilio_fake.settings_overrides(),
        delivery_idle_wait_seconds=0.0,
        sms_rate_per_second=100_000.0,
    )


@pytest.fixture
async def deps(settings_sms: Settings) -> AsyncIterator[WorkerDeps]:
    d = await make_deps(settings_sms)
    yield d
    await close_deps(d)


def phone(i: int) -> str:
    return f"+1415{i:07d}"


async def org(db: asyncpg.Connection, n: int) -> list[str]:
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'U')")
    ids = [f"m{i:05d}" for i in range(n)]
    await db.executemany("INSERT INTO members (id, name) VALUES ($1, $1)", [(m,) for m in ids])
    await db.executemany("INSERT INTO member_units VALUES ($1, 'u')", [(m,) for m in ids])
    await db.executemany(
        "INSERT INTO contacts (member_id, channel, target) VALUES ($1, 'sms', to_jsonb($2::text))",
        [(m, phone(i)) for i, m in enumerate(ids)],
    )
    return ids


async def ding(deps: WorkerDeps, db: asyncpg.Connection, rules: dict[str, Any], **extra: Any) -> str:
    snapshot = PolicyRules.model_validate(rules).snapshot(None)
    columns = ", ".join(["kind", "title", "body", "audience", "channels", "escalation", *extra])
    values = ", ".join(f"${i}" for i in range(1, 7 + len(extra)))
    nid = str(
        await db.fetchval(
            f"INSERT INTO notices ({columns}) VALUES ({values}) RETURNING id",
            "ding",
            "Muster",
            "Now.",
            '{"units": ["u"]}',
            ["inapp"],
            json_dumps(snapshot),
            *extra.values(),
        )
    )
    await fanout_notice(deps, nid)
    return nid


def json_dumps(value: Any) -> str:
    return json.dumps(value)


REMIND_SMS = {"steps": [{"after": "PT1M", "remind": ["sms"]}]}


async def test_reads_racing_the_step_never_get_a_reminder(
    deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    members = await org(db, 300)
    nid = await ding(deps, db, REMIND_SMS)
    readers = set(random.Random(7).sample(members, 150))
    await advance_clock(db, 61)

    async def read(member: str) -> None:
        async with deps.pool.acquire() as conn, conn.transaction():
            await receipts.mark_read(conn, nid, member, "api")

    # The tick and 150 reads at once; then the reminders go out.
    await asyncio.gather(tick_once(deps), *(read(m) for m in readers))
    await deliver_notice_channel(deps, nid, "sms")
    sent_to = Counter(m.to for m in twilio_fake.sms)
    index = {m: i for i, m in enumerate(members)}
    assert not {phone(index[m]) for m in readers} & set(sent_to)
    assert sent_to == Counter({phone(index[m]): 1 for m in members if m not in readers})
    # Reminders made before a read landed were cancelled, not sent.
    states = Counter(
        r["state"]
        for r in await db.fetch("SELECT state FROM deliveries WHERE notice_id = $1 AND step > 0", nid)
    )
    assert states["sent"] == 150 and set(states) <= {"sent", "cancelled"}


async def test_two_schedulers_fire_every_step_once(
    settings_sms: Settings, deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    await org(db, 50)
    rules = {
        "steps": [{"after": "PT1M", "remind": ["sms"]}, {"after": "PT2M", "remind": ["sms"]}],
        "repeat": 1,
    }
    nid = await ding(deps, db, rules)
    other = await make_deps(settings_sms)
    try:
        for _ in range(4):
            await advance_clock(db, 60)
            for _ in range(3):
                await asyncio.gather(tick_once(deps), tick_once(other), tick_once(deps), tick_once(other))
            await asyncio.gather(
                deliver_notice_channel(deps, nid, "sms"), deliver_notice_channel(other, nid, "sms")
            )
    finally:
        await close_deps(other)
    fired = await db.fetch(
        "SELECT detail->>'round' AS r, detail->>'step' AS s FROM notice_events "
        "WHERE notice_id = $1 AND kind = 'step_fired' ORDER BY at",
        nid,
    )
    assert [(r["r"], r["s"]) for r in fired] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert Counter(Counter(m.to for m in twilio_fake.sms).values()) == {4: 50}  # four reminders each, no more


def worker_env(settings: Settings, twilio_fake: FakeTwilio) -> dict[str, str]:
    return {
        **os.environ,
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_LINK_SECRET": "test-link-secret-0123456789",
        "NOTIFIER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NOTIFIER_REDIS_URL": settings.redis_url,
        "NOTIFIER_QUEUE_NAME": settings.queue_name,
        "NOTIFIER_RECONCILE_INTERVAL_SECONDS": "1",
        "NOTIFIER_RECONCILE_STALL_SECONDS": "1",
        "NOTIFIER_DELIVERY_LEASE_SECONDS": "2",
        "NOTIFIER_SMS_PROVIDER": "twilio",
        "NOTIFIER_SMS_RATE_PER_SECOND": "200",
        "NOTIFIER_PUBLIC_URL": "https://notifier.example.org",
        "NOTIFIER_TWILIO__ACCOUNT_SID": twilio_fake.account_sid,
        "NOTIFIER_TWILIO__AUTH_TOKEN": twilio_fake.auth_token,
        "NOTIFIER_TWILIO__SMS_FROM": "+15005550006",
        "NOTIFIER_TWILIO__BASE_URL": twilio_fake.base_url,
    }


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "worker", "--processes", "1"],  # one process: the one killed
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_sigkill_mid_step_and_wiped_redis_complete_the_step_exactly_once(
    settings_sms: Settings, deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    members = await org(db, 600)
    nid = await ding(deps, db, REMIND_SMS)
    env = worker_env(settings_sms, twilio_fake)
    first = start_worker(env)
    second: subprocess.Popen[bytes] | None = None
    try:
        await advance_clock(db, 61)
        for _ in range(2000):  # kill once the step is under way: some reminders out, most not
            if len(twilio_fake.sms) >= 60:
                break
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        sent_at_kill = len(twilio_fake.sms)
        assert 0 < sent_at_kill < 600
        in_flight = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE step > 0 AND state = 'sending' AND sent_at IS NOT NULL"
        )
        redis = Redis.from_url(settings_sms.redis_url)
        await redis.flushdb()
        await redis.aclose()
        second = start_worker(env)

        async def settled() -> bool:
            pending = await db.fetchval(
                "SELECT count(*) FROM deliveries "
                "WHERE notice_id = $1 AND step > 0 AND state IN ('queued', 'sending')",
                nid,
            )
            rows = await db.fetchval("SELECT count(*) FROM deliveries WHERE notice_id = $1 AND step > 0", nid)
            return bool(rows == 600 and pending == 0)

        await wait_until(settled, within=60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    per_phone = Counter(m.to for m in twilio_fake.sms)
    assert max(per_phone.values()) == 1  # no SMS twice
    state_of = {
        phone(int(r["member_id"][1:])): r["state"]
        for r in await db.fetch("SELECT member_id, state FROM deliveries WHERE step > 0")
    }
    states = Counter(state_of.values())
    # Every reminder was decided once: sent (and received exactly once), or 'unknown' for those
    # in flight at the kill -- maybe received, never blindly resent.
    assert states["sent"] + states["unknown"] == 600, states
    assert all(per_phone[p] == 1 for p, state in state_of.items() if state == "sent")
    assert {p for p in per_phone if state_of[p] != "sent"} <= {
        p for p, st in state_of.items() if st == "unknown"
    }
    assert states["unknown"] == in_flight  # exactly the batches that were in flight at the kill
    fired = await db.fetchval(
        "SELECT count(*) FROM notice_events WHERE notice_id = $1 AND kind = 'step_fired'", nid
    )
    assert fired == 1
    assert len(members) == 600


async def test_scheduled_send_survives_restarts_and_a_wiped_redis(
    settings_sms: Settings, deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    await org(db, 5)
    send_at = await db.fetchval("SELECT notifier_now() + interval '1 hour'")
    nid = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels, send_at, state) "
            "VALUES ('notice', 't', 'b', '{\"units\": [\"u\"]}', '{sms}', $1, 'scheduled') RETURNING id",
            send_at,
        )
    )
    await advance_clock(db, 3599)
    assert await tick_once(deps) == {
        "scheduled": 0,
        "escalations": 0,
        "lessons": 0,
        "dingtalk_reads": 0,
        "dingtalk_recalls": 0,
        "dingtalk_ding_recalls": 0,
        "unit_posts": 0,
        "quiz_deadlines": 0,
    }
    redis = Redis.from_url(settings_sms.redis_url)
    await redis.flushdb()  # every queued job gone; the row is the timer
    await redis.aclose()
    await advance_clock(db, 2)
    env = worker_env(settings_sms, twilio_fake)
    worker = start_worker(env)
    try:
        await wait_until(lambda: _count(twilio_fake, 5), within=30)
        await asyncio.sleep(1.5)
    finally:
        worker.terminate()
        worker.wait(10)
    assert Counter(m.to for m in twilio_fake.sms) == Counter({phone(i): 1 for i in range(5)})
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "active"


async def _count(twilio_fake: FakeTwilio, n: int) -> bool:
    return len(twilio_fake.sms) >= n


async def test_no_escalation_after_expiry(
    deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    await org(db, 3)
    rules = {"steps": [{"after": "PT1M", "remind": ["sms"]}, {"after": "PT10M", "remind": ["sms"]}]}
    expires = await db.fetchval("SELECT notifier_now() + interval '5 minutes'")
    nid = await ding(deps, db, rules, expires_at=expires)
    await advance_clock(db, 61)
    await tick_once(deps)
    await deliver_notice_channel(deps, nid, "sms")
    assert len(twilio_fake.sms) == 3
    await advance_clock(db, 600)
    await tick_once(deps)
    await deliver_notice_channel(deps, nid, "sms")
    assert len(twilio_fake.sms) == 3
    kinds = [
        r["kind"]
        for r in await db.fetch("SELECT kind FROM notice_events WHERE notice_id = $1 ORDER BY at", nid)
    ]
    assert kinds == ["step_fired", "escalation_expired"]
