"""Edge cases found in review: work that may no longer go out, catching up after downtime, a read
landing between claim and send, and a breaker hit by batches already in flight."""

from __future__ import annotations

import time

import asyncpg
import pytest

from notifier.channels.base import Capabilities, NoticeContent, Outcome, StatusUpdate
from notifier.db import deliveries, receipts, throttle
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_batch, deliver_notice_channel
from notifier.workers.queue import TICK_NOW
from notifier.workers.reconcile import reconcile_once
from notifier.workers.reports import apply_reports
from notifier.workers.tick import tick_once, wake_for_next_timer
from tests.conftest import advance_clock, frozen_clock
from tests.workers.test_delivery_layer import (
    ScriptedChannel,
    make_members,
    make_notice,
    states,
)

Env = tuple[WorkerDeps, ScriptedChannel]


async def test_a_retry_after_recall_is_cancelled_not_left_queued_forever(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, channel = env
    channel.capabilities = Capabilities(max_attempts=10)
    await make_members(db, 3)
    nid = await make_notice(deps, db, ["scripted"])
    claimed = await deliveries.claim(deps.pool, nid, "scripted", 10, 60)
    await db.execute("UPDATE notices SET state = 'recalled' WHERE id = $1", nid)  # recalled mid-send
    channel.script = [Outcome.RETRY] * 3
    await deliver_batch(deps, channel, NoticeContent(nid, "ding", "t", "b"), claimed)
    assert len(channel.sent) == 3  # what was already on its way finishes ...
    assert await states(db, nid) == {"queued:retry": 3}
    # ... but its retries never go: the sweep cancels them, so nothing waits in the queue forever.
    result = await reconcile_once(deps)
    assert result["cancelled"] == 3
    assert await states(db, nid) == {"cancelled": 3}
    assert await deliveries.due_groups(deps.pool, 0.0, deps.channels.ids()) == []
    await advance_clock(db, 60)
    await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 3


async def test_a_read_between_claim_and_send_stops_the_reminder(env: Env, db: asyncpg.Connection) -> None:
    deps, channel = env
    await make_members(db, 2)
    nid = await make_notice(
        deps, db, ["inapp"], escalation={"steps": [{"after": 60, "remind": ["scripted"]}], "repeat": 0}
    )
    await advance_clock(db, 61)
    await tick_once(deps)
    claimed = await deliveries.claim(deps.pool, nid, "scripted", 10, 60)
    assert len(claimed) == 2
    async with deps.pool.acquire() as conn, conn.transaction():
        await receipts.mark_read(conn, nid, "m00000", "api")
    await deliver_batch(deps, channel, NoticeContent(nid, "ding", "t", "b"), claimed)
    assert [o.member_id for o in channel.sent] == ["m00001"]


async def test_catching_up_after_downtime_fires_only_the_latest_missed_step(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, channel = env
    await make_members(db, 1)
    policy = {
        "steps": [{"after": 60, "remind": ["scripted"]}, {"after": 120, "remind": ["scripted"]}],
        "repeat": 5,
    }
    nid = await make_notice(deps, db, ["inapp"], escalation=policy)
    await advance_clock(db, 3600)  # the engine was down for an hour: 12 steps are overdue
    for _ in range(3):
        await tick_once(deps)
    await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 1  # one reminder, not twelve at once
    kinds = [
        r["kind"]
        for r in await db.fetch("SELECT kind FROM notice_events WHERE notice_id = $1 ORDER BY id", nid)
    ]
    assert kinds.count("step_skipped") == 11 and kinds.count("step_fired") == 1


async def test_batches_failing_while_the_breaker_is_open_do_not_extend_it(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, _ = env
    async with deps.pool.acquire() as conn:
        for _ in range(deps.settings.breaker_threshold - 1):
            assert await throttle.breaker_failure(conn, "p", 5, 5.0, 300.0) is None
        first = await throttle.breaker_failure(conn, "p", 5, 5.0, 300.0)
        assert first is not None
        for _ in range(7):  # the other jobs' batches, already in flight, fail too
            assert await throttle.breaker_failure(conn, "p", 5, 5.0, 300.0) is None
        opened = await conn.fetchval("SELECT opened_count FROM circuit_breakers WHERE key = 'p'")
    assert opened == 1


async def test_a_notice_naming_a_channel_this_deployment_lacks_fails_visibly(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, _ = env
    await make_members(db, 1)
    nid = await make_notice(deps, db, ["carrier-pigeon"])  # fan-out runs inside make_notice
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "failed"
    event = await db.fetchrow("SELECT kind, detail FROM notice_events WHERE notice_id = $1", nid)
    assert event is not None and event["kind"] == "fanout_failed" and "carrier-pigeon" in event["detail"]
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE notice_id = $1", nid) == 0


async def test_a_batch_of_reports_is_applied_in_one_go(env: Env, db: asyncpg.Connection) -> None:
    deps, _ = env
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["scripted"])
    await deliver_notice_channel(deps, nid, "scripted")
    refs = {
        r["member_id"]: r["provider_ref"]
        for r in await db.fetch("SELECT member_id, provider_ref FROM deliveries WHERE notice_id = $1", nid)
    }
    batch = [
        StatusUpdate(refs["m00000"], "delivered"),
        StatusUpdate(refs["m00000"], "sent"),  # out of order in the same batch: the furthest wins
        StatusUpdate(refs["m00001"], None, read=True),
        StatusUpdate("not-yet-known", "delivered"),
    ]
    async with deps.pool.acquire() as conn, conn.transaction():
        assert await apply_reports(conn, "scripted", batch) == 1
    rows = await db.fetch("SELECT member_id, state FROM deliveries WHERE notice_id = $1", nid)
    assert {r["member_id"]: r["state"] for r in rows} == {"m00000": "delivered", "m00001": "sent"}
    reads = await db.fetch("SELECT member_id, read_via FROM recipients WHERE read_at IS NOT NULL")
    assert [tuple(r) for r in reads] == [("m00001", "scripted")]
    counts = await db.fetchrow(
        "SELECT sum(read) AS read, sum(delivered) AS delivered FROM notice_counts WHERE notice_id = $1", nid
    )
    assert counts is not None and (counts["read"], counts["delivered"]) == (1, 1)
    parked = await db.fetchval("SELECT count(*) FROM provider_events WHERE provider_ref = 'not-yet-known'")
    assert parked == 1


async def _tick_wakeups(deps: WorkerDeps) -> list[float]:
    """The scores (ms since the epoch, when due) of the early tick wake-ups waiting in Redis."""
    jobs = await deps.queue.queued_jobs(queue_name=deps.settings.queue_name)
    return sorted(j.score or 0 for j in jobs if j.function == TICK_NOW)


async def test_a_step_due_before_the_next_cron_tick_is_woken_at_its_due_time(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, _ = env
    await make_members(db, 1)
    async with frozen_clock(db):
        nid = await make_notice(
            deps, db, ["inapp"], escalation={"steps": [{"after": 60, "remind": ["scripted"]}], "repeat": 0}
        )
        due_in = float(
            await db.fetchval(
                "SELECT extract(epoch FROM due_at - notifier_now()) FROM escalations WHERE notice_id = $1",
                nid,
            )
        )
        # Ten seconds away: the cron ticks until then look again; no wake-up yet.
        await advance_clock(db, due_in - 10)
        before = await _tick_wakeups(deps)
        assert (await tick_once(deps))["escalations"] == 0
        assert await wake_for_next_timer(deps) is None
        assert await _tick_wakeups(deps) == before
        # Due in 0.4 s, before the next cron tick: a wake-up at the due time, not up to 1 s later.
        await advance_clock(db, 9.6)
        t0 = time.time()
        assert (await tick_once(deps))["escalations"] == 0
        added = [s for s in await _tick_wakeups(deps) if s not in before]
        assert len(added) == 1
        assert t0 * 1000 + 300 <= added[0] <= time.time() * 1000 + 500
        assert await wake_for_next_timer(deps) == pytest.approx(0.4, abs=0.001)
        # Once the step has fired, nothing is pending: no more wake-ups.
        await advance_clock(db, 0.4)
        assert (await tick_once(deps))["escalations"] == 1
        assert await wake_for_next_timer(deps) is None


async def test_a_scheduled_notice_due_before_the_next_cron_tick_is_woken_at_its_send_time(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, _ = env
    await make_members(db, 1)
    async with frozen_clock(db):
        send_at = await db.fetchval("SELECT notifier_now() + interval '1 minute'")
        await db.execute(
            "INSERT INTO notices (kind, title, body, audience, channels, send_at, state) "
            "VALUES ('notice', 't', 'b', '{\"units\": [\"u\"]}', '{inapp}', $1, 'scheduled')",
            send_at,
        )
        await advance_clock(db, 50)
        assert await wake_for_next_timer(deps) is None  # ten seconds away: the cron ticks look again
        await advance_clock(db, 9.7)
        assert await wake_for_next_timer(deps) == pytest.approx(0.3, abs=0.001)
        await advance_clock(db, 0.3)
        assert (await tick_once(deps))["scheduled"] == 1
        assert await wake_for_next_timer(deps) is None  # released: nothing waits
