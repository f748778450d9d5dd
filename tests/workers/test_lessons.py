"""The daily lesson on the real engine: the engine clock is moved to absolute local times (the
delta computed from ``SELECT notifier_now()``), the scheduler, fan-out, delivery and escalation
steps are called directly (or run by a real arq worker), and a fake FCM records every push. Every
test checks the exact messages sent: nothing missing, nothing twice, nothing unexpected."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.channels.registry import build_registry
from notifier.db import lessons, receipts
from notifier.db.pool import create_pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from notifier.workers.lessons import send_due_lessons
from notifier.workers.queue import create_queue
from notifier.workers.settings import create_worker, stop_worker
from notifier.workers.tick import tick_once, wake_for_next_timer
from tests.conftest import advance_clock, auth, make_settings, wait_until
from tests.fakes.fcm import FakeFcm

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")


@dataclass
class Env:
    db: asyncpg.Connection
    deps: WorkerDeps
    fcm: FakeFcm
    tokens: dict[str, str]  # member -> FCM registration token

    def pushes(self) -> Counter[tuple[str, str]]:
        """(member, notice) -> how many pushes the fake FCM accepted."""
        member_of = {t: m for m, t in self.tokens.items()}
        return Counter((member_of[m.token], m.message["data"]["notice_id"]) for m in self.fcm.messages)


async def make_deps(settings: Settings) -> WorkerDeps:
    return WorkerDeps(
        settings, await create_pool(settings), await create_queue(settings), build_registry(settings)
    )


async def close_deps(deps: WorkerDeps) -> None:
    await deps.channels.close()
    await deps.queue.aclose()
    await deps.pool.close()


@pytest.fixture
async def env(server_urls: tuple[str, str], db: asyncpg.Connection) -> AsyncIterator[Env]:
    fcm = await FakeFcm().start()
    settings = make_settings(server_urls, **fcm.settings_overrides(), delivery_idle_wait_seconds=0.0)
    deps = await make_deps(settings)
    yield Env(db, deps, fcm, {})
    await close_deps(deps)
    await fcm.stop()


async def unit(env: Env, unit_id: str, parent: str | None = None, **settings: Any) -> None:
    """A unit with settings given as SQL text (timezone, lesson_time, lesson_reminder_time)."""
    cols = ["id", "name", "parent_id", *settings]
    values = [unit_id, unit_id.upper(), parent, *settings.values()]
    casts = {"lesson_time": "::text::time", "lesson_reminder_time": "::text::time"}
    marks = ", ".join(f"${i + 1}{casts.get(c, '')}" for i, c in enumerate(cols))
    await env.db.execute(f"INSERT INTO units ({', '.join(cols)}) VALUES ({marks})", *values)


async def members(env: Env, unit_id: str, ids: list[str], quiet: tuple[str, str] | None = None) -> None:
    for m in ids:
        await env.db.execute(
            "INSERT INTO members (id, name, quiet_start, quiet_end) "
            "VALUES ($1, $1, $2::text::time, $3::text::time)",
            m,
            *(quiet or (None, None)),
        )
        await env.db.execute("INSERT INTO member_units VALUES ($1, $2)", m, unit_id)
        env.tokens[m] = env.fcm.good_target()
        await env.db.execute(
            "INSERT INTO contacts (member_id, channel, target) VALUES ($1, 'fcm', to_jsonb($2::text))",
            m,
            env.tokens[m],
        )


async def lesson(env: Env, unit_id: str, day: dt.date, title: str | None = None) -> None:
    await env.db.execute(
        "INSERT INTO lessons (unit_id, day, title, body) VALUES ($1, $2, $3, 'Study the points.')",
        unit_id,
        day,
        title or f"{unit_id} {day}",
    )


async def engine_now(db: asyncpg.Connection) -> dt.datetime:
    now = await db.fetchval("SELECT notifier_now()")
    assert isinstance(now, dt.datetime)
    return now


async def next_local(db: asyncpg.Connection, tz: ZoneInfo, hh: int, mm: int, ss: int = 0) -> dt.datetime:
    """The next moment (after the engine's now) at which the wall clock in ``tz`` reads hh:mm:ss."""
    local = (await engine_now(db)).astimezone(tz)
    target = local.replace(hour=hh, minute=mm, second=ss, microsecond=0)
    if target <= local:
        target = dt.datetime.combine(target.date() + dt.timedelta(days=1), target.timetz())
    return target


async def go_to(db: asyncpg.Connection, target: dt.datetime) -> None:
    """Move the engine clock to the absolute time ``target`` (forward only)."""
    delta = (target - await engine_now(db)).total_seconds()
    assert delta > 0, f"{target} already passed"
    await advance_clock(db, delta)


async def lesson_notices(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT n.id, n.title, n.scope_unit_id, n.audience, n.channels, n.escalation, n.send_at, "
            "r.day FROM notices n JOIN lesson_runs r ON r.notice_id = n.id WHERE n.kind = 'lesson' "
            "ORDER BY n.created_at, n.scope_unit_id"
        )
    )


async def sent_units(db: asyncpg.Connection) -> list[tuple[str, dt.date]]:
    rows = await db.fetch("SELECT unit_id, day FROM lesson_runs ORDER BY unit_id, day")
    return [(r["unit_id"], r["day"]) for r in rows]


async def send_and_deliver(env: Env) -> list[str]:
    """One scheduler pass, then fan-out and FCM delivery of what it created (no worker)."""
    before = {str(r["id"]) for r in await lesson_notices(env.db)}
    sent = await send_due_lessons(env.deps)
    created = [str(r["id"]) for r in await lesson_notices(env.db) if str(r["id"]) not in before]
    assert sent == len(created)
    for nid in created:
        await fanout_notice(env.deps, nid)
        await deliver_notice_channel(env.deps, nid, "fcm")
    return created


# --- when a lesson goes --------------------------------------------------------------------------


async def test_scheduler_down_across_the_lesson_time_sends_late_once(env: Env) -> None:
    await unit(env, "u")
    team = [f"m{i}" for i in range(5)]
    await members(env, "u", team)
    at_0759 = await next_local(env.db, SHANGHAI, 7, 59)
    day = at_0759.date()
    await lesson(env, "u", day)
    await go_to(env.db, at_0759)
    assert await send_due_lessons(env.deps) == 0  # the scheduler was up at 07:59: nothing due

    # Down from 07:59 to 08:20; a real worker (its one-second tick) comes back at 08:20.
    await go_to(env.db, at_0759 + dt.timedelta(minutes=21))
    worker = create_worker(env.deps.settings)
    task = asyncio.ensure_future(worker.async_run())
    try:

        async def all_pushed() -> bool:
            return len(env.fcm.messages) >= 5

        await wait_until(all_pushed, within=20)
        await asyncio.sleep(2.5)  # more ticks and reconciler passes: nothing more may go out
    finally:
        await stop_worker(worker, task)
    rows = await lesson_notices(env.db)
    assert len(rows) == 1
    nid = str(rows[0]["id"])
    assert env.pushes() == Counter({(m, nid): 1 for m in team})
    assert rows[0]["day"] == day and rows[0]["scope_unit_id"] == "u"
    assert json.loads(rows[0]["audience"]) == {"units": ["u"], "members": []}
    assert list(rows[0]["channels"]) == ["inapp", "fcm"]
    # send_at records the lesson time it was due at; it went out late, at 08:20.
    assert rows[0]["send_at"] == dt.datetime.combine(day, dt.time(8, 0), SHANGHAI)
    notice = await env.db.fetchrow("SELECT state, created_at FROM notices WHERE id = $1", rows[0]["id"])
    assert notice is not None and notice["state"] == "active"
    assert notice["created_at"].astimezone(SHANGHAI).time() >= dt.time(8, 20)
    per_member = await env.db.fetch(
        "SELECT member_id, channel, state FROM deliveries WHERE notice_id = $1 ORDER BY member_id, channel",
        rows[0]["id"],
    )
    assert [tuple(r) for r in per_member] == [
        t for m in team for t in ((m, "fcm", "sent"), (m, "inapp", "delivered"))
    ]
    assert await env.db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", rows[0]["id"]) == 5


async def test_a_member_without_a_push_token_has_the_lesson_in_the_inbox_and_no_failed_push(env: Env) -> None:
    await unit(env, "u")
    await members(env, "u", ["with", "without"])
    await env.db.execute("DELETE FROM contacts WHERE member_id = 'without'")
    at_0800 = await next_local(env.db, SHANGHAI, 8, 0)
    await lesson(env, "u", at_0800.date())
    await go_to(env.db, at_0800)
    [nid] = await send_and_deliver(env)
    assert env.pushes() == Counter({("with", nid): 1})
    row = await env.db.fetchrow("SELECT channels, optional_channels FROM notices WHERE id = $1", nid)
    assert row is not None
    assert (list(row["channels"]), list(row["optional_channels"])) == (["inapp", "fcm"], ["fcm"])
    per_member = await env.db.fetch(
        "SELECT member_id, channel, state FROM deliveries WHERE notice_id = $1 ORDER BY member_id, channel",
        nid,
    )
    assert [tuple(r) for r in per_member] == [
        ("with", "fcm", "sent"),
        ("with", "inapp", "delivered"),
        ("without", "inapp", "delivered"),
    ]
    counts = await env.db.fetchrow(
        "SELECT sum(recipients) AS recipients, sum(delivered) AS delivered, sum(failed) AS failed "
        "FROM notice_counts WHERE notice_id = $1",
        nid,
    )
    assert counts is not None and tuple(counts) == (2, 2, 0)
    statuses = await env.db.fetch(
        "SELECT member_id, dstatus FROM recipients WHERE notice_id = $1 ORDER BY member_id", nid
    )
    assert [tuple(r) for r in statuses] == [("with", "delivered"), ("without", "delivered")]


async def test_two_schedulers_at_once_send_each_lesson_once(env: Env) -> None:
    units = [f"u{i:02d}" for i in range(30)]
    at_0800 = await next_local(env.db, SHANGHAI, 8, 0)
    for u in units:
        await unit(env, u)
        await lesson(env, u, at_0800.date())
    await go_to(env.db, at_0800)
    others = [await make_deps(env.deps.settings) for _ in range(2)]
    try:
        results = await asyncio.gather(send_due_lessons(env.deps), *(send_due_lessons(d) for d in others))
        assert sum(results) == 30, results
        again = await asyncio.gather(send_due_lessons(env.deps), *(send_due_lessons(d) for d in others))
        assert again == [0, 0, 0]
    finally:
        for d in others:
            await close_deps(d)
    rows = await lesson_notices(env.db)
    assert sorted(r["scope_unit_id"] for r in rows) == units
    assert await env.db.fetchval("SELECT count(*) FROM notices") == 30
    # One fan-out job queued per notice (the job id is per notice), none for a lost race.
    jobs = await env.deps.queue.zrange(env.deps.settings.queue_name, 0, -1)
    assert sorted(j.decode() for j in jobs) == sorted(f"fanout:{r['id']}:lesson" for r in rows)


async def test_a_scheduler_that_loses_the_race_waits_for_the_winner_and_sends_nothing(env: Env) -> None:
    await unit(env, "u")
    at_0800 = await next_local(env.db, SHANGHAI, 8, 0)
    await lesson(env, "u", at_0800.date())
    await go_to(env.db, at_0800)
    # The winner has inserted its run and notice but not committed yet.
    other = await make_deps(env.deps.settings)
    try:
        async with env.deps.pool.acquire() as winner:
            tx = winner.transaction()
            await tx.start()
            due = await lessons.due(winner, 10)
            assert [r["unit_id"] for r in due] == ["u"]
            day, due_at = due[0]["day"].isoformat(), due[0]["due_at"].isoformat()
            won = await lessons.send(winner, [{"unit_id": "u", "day": day, "due_at": due_at}], ["inapp"])
            loser = asyncio.ensure_future(send_due_lessons(other))
            await asyncio.sleep(0.3)
            done_early = loser.done()
            await tx.commit()
            assert await asyncio.wait_for(loser, 10) == 0
            assert not done_early  # it found the lesson due and waited on the run's key
    finally:
        await close_deps(other)
    assert [str(r["id"]) for r in await lesson_notices(env.db)] == [str(won[0]["notice_id"])]


async def test_each_unit_fires_at_its_own_local_time(env: Env) -> None:
    # sh: Asia/Shanghai by default. ny sets America/New_York; nyg inherits it from ny.
    await unit(env, "sh")
    await unit(env, "ny", timezone="America/New_York")
    await unit(env, "nyg", "ny")
    at_sh = await next_local(env.db, SHANGHAI, 8, 0)
    day = at_sh.date()
    for u in ("sh", "ny", "nyg"):
        await lesson(env, u, day)
    await go_to(env.db, at_sh)
    # 08:00 in Shanghai is the evening before in New York: only sh's lesson for that date is due.
    assert await send_due_lessons(env.deps) == 1
    assert await sent_units(env.db) == [("sh", day)]

    at_ny = dt.datetime.combine(day, dt.time(8, 0), NEW_YORK)
    await go_to(env.db, at_ny - dt.timedelta(seconds=1))
    assert await send_due_lessons(env.deps) == 0
    await go_to(env.db, at_ny)
    assert await send_due_lessons(env.deps) == 2
    assert await sent_units(env.db) == [("ny", day), ("nyg", day), ("sh", day)]
    by_unit = {r["scope_unit_id"]: r for r in await lesson_notices(env.db)}
    assert by_unit["nyg"]["send_at"] == at_ny and by_unit["sh"]["send_at"] == at_sh
    assert await send_due_lessons(env.deps) == 0


async def test_the_units_configured_lesson_time_inherited_down_the_tree(env: Env) -> None:
    await unit(env, "p", lesson_time="06:45")
    await unit(env, "early", "p")  # inherits 06:45
    await unit(env, "late", "p", lesson_time="09:30")
    start = await next_local(env.db, SHANGHAI, 6, 44)
    day = start.date()
    for u in ("early", "late"):
        await lesson(env, u, day)
    await go_to(env.db, start)
    assert await send_due_lessons(env.deps) == 0
    await go_to(env.db, dt.datetime.combine(day, dt.time(6, 45), SHANGHAI))
    assert await send_due_lessons(env.deps) == 1
    assert await sent_units(env.db) == [("early", day)]
    await go_to(env.db, dt.datetime.combine(day, dt.time(9, 29, 59), SHANGHAI))
    assert await send_due_lessons(env.deps) == 0
    await go_to(env.db, dt.datetime.combine(day, dt.time(9, 30), SHANGHAI))
    assert await send_due_lessons(env.deps) == 1
    assert await sent_units(env.db) == [("early", day), ("late", day)]


async def test_next_days_lesson_goes_the_next_day_and_past_days_never(env: Env) -> None:
    await unit(env, "u")
    await members(env, "u", ["m0"])
    at_0800 = await next_local(env.db, SHANGHAI, 8, 0)
    day = at_0800.date()
    yesterday, tomorrow = day - dt.timedelta(days=1), day + dt.timedelta(days=1)
    for d in (yesterday, day, tomorrow):
        await lesson(env, "u", d)
    await go_to(env.db, at_0800)
    first = await send_and_deliver(env)
    assert await sent_units(env.db) == [("u", day)]  # yesterday's is not sent late, tomorrow's waits
    await go_to(env.db, dt.datetime.combine(day, dt.time(23, 59, 59), SHANGHAI))
    assert await send_and_deliver(env) == []
    await go_to(env.db, dt.datetime.combine(tomorrow, dt.time(7, 59, 59), SHANGHAI))
    assert await send_and_deliver(env) == []
    await go_to(env.db, dt.datetime.combine(tomorrow, dt.time(8, 0), SHANGHAI))
    second = await send_and_deliver(env)
    assert await sent_units(env.db) == [("u", day), ("u", tomorrow)]
    assert env.pushes() == Counter({("m0", first[0]): 1, ("m0", second[0]): 1})
    titles = [r["title"] for r in await lesson_notices(env.db)]
    assert titles == [f"u {day}", f"u {tomorrow}"]


# --- quiet hours -------------------------------------------------------------------------------


async def test_quiet_hours_hold_the_lesson_push_until_7_and_a_ding_goes_at_once(env: Env) -> None:
    await unit(env, "u", lesson_time="06:30")
    await members(env, "u", ["sleeper"], quiet=("22:00", "07:00"))
    await members(env, "u", ["early"])  # no quiet hours
    at_0630 = await next_local(env.db, SHANGHAI, 6, 30)
    day = at_0630.date()
    seven = dt.datetime.combine(day, dt.time(7, 0), SHANGHAI)
    await lesson(env, "u", day)
    await go_to(env.db, at_0630)
    [lesson_id] = await send_and_deliver(env)
    assert env.pushes() == Counter({("early", lesson_id): 1})
    held = await env.db.fetchrow(
        "SELECT state, wait_reason, attempts, next_attempt_at FROM deliveries "
        "WHERE notice_id = $1 AND member_id = 'sleeper' AND channel = 'fcm'",
        lesson_id,
    )
    assert held is not None
    assert (held["state"], held["wait_reason"], held["attempts"]) == ("queued", "quiet_hours", 0)
    assert abs((held["next_attempt_at"] - seven).total_seconds()) < 0.001

    # The secretary's view: held, going at 07:00 local. The inbox has it already.
    async with TestClient(TestServer(create_app(env.deps.settings), host="127.0.0.1")) as client:
        resp = await client.get(f"/v1/notices/{lesson_id}/recipients", headers=auth())
        assert resp.status == 200, await resp.text()
        items = {i["member_id"]: i for i in (await resp.json())["items"]}
    sleeper = {d["channel"]: d for d in items["sleeper"]["deliveries"]}
    assert sleeper["fcm"]["state"] == "held"
    assert dt.datetime.fromisoformat(sleeper["fcm"]["next_attempt_at"]) == held["next_attempt_at"]
    assert sleeper["inapp"]["state"] == "delivered"
    assert items["sleeper"]["status"] == "delivered" and items["early"]["status"] == "delivered"

    # A DING in quiet hours goes to everyone at once.
    ding = await env.db.fetchval(
        "INSERT INTO notices (kind, title, body, audience, channels) "
        "VALUES ('ding', 'Muster', 'Now.', '{\"units\": [\"u\"]}', '{fcm}') RETURNING id"
    )
    ding_id = str(ding)
    await fanout_notice(env.deps, ding_id)
    await deliver_notice_channel(env.deps, ding_id, "fcm")
    assert env.pushes() == Counter({("early", lesson_id): 1, ("early", ding_id): 1, ("sleeper", ding_id): 1})

    # Still held a second before 07:00; sent once after it.
    await go_to(env.db, seven - dt.timedelta(seconds=1))
    await deliver_notice_channel(env.deps, lesson_id, "fcm")
    assert env.pushes()[("sleeper", lesson_id)] == 0
    await go_to(env.db, seven + dt.timedelta(seconds=1))
    await deliver_notice_channel(env.deps, lesson_id, "fcm")
    await deliver_notice_channel(env.deps, lesson_id, "fcm")
    assert await tick_once(env.deps) == {
        "scheduled": 0,
        "escalations": 0,
        "lessons": 0,
        "dingtalk_reads": 0,
        "dingtalk_recalls": 0,
        "dingtalk_ding_recalls": 0,
        "unit_posts": 0,
        "quiz_deadlines": 0,
    }
    assert env.pushes() == Counter(
        {("early", lesson_id): 1, ("early", ding_id): 1, ("sleeper", ding_id): 1, ("sleeper", lesson_id): 1}
    )
    state = await env.db.fetchval(
        "SELECT state FROM deliveries WHERE notice_id = $1 AND member_id = 'sleeper' AND channel = 'fcm'",
        lesson_id,
    )
    assert state == "sent"


# --- the evening reminder ----------------------------------------------------------------------


async def test_evening_reminder_reaches_only_the_unread_once(env: Env) -> None:
    await unit(env, "c", lesson_reminder_time="20:00")
    await unit(env, "u", "c")  # inherits the reminder time; lesson at the default 08:00
    team = [f"m{i}" for i in range(4)]
    await members(env, "u", team)
    at_0800 = await next_local(env.db, SHANGHAI, 8, 0)
    day = at_0800.date()
    await lesson(env, "u", day)
    await go_to(env.db, at_0800)
    [nid] = await send_and_deliver(env)
    snapshot = await env.db.fetchval("SELECT escalation FROM notices WHERE id = $1", nid)
    assert json.loads(snapshot) == {
        "policy": "lesson-reminder",
        "steps": [{"after": 12 * 3600.0, "remind": ["fcm"], "notify": [], "channels": []}],
        "repeat": 0,
    }
    async with env.deps.pool.acquire() as conn, conn.transaction():
        for m in team[:2]:
            assert await receipts.mark_read(conn, nid, m, "api")

    async def tick_and_deliver() -> dict[str, int]:
        done = await tick_once(env.deps)
        await deliver_notice_channel(env.deps, nid, "fcm")
        return done

    await go_to(env.db, dt.datetime.combine(day, dt.time(19, 59, 59), SHANGHAI))
    assert (await tick_and_deliver())["escalations"] == 0
    assert env.pushes() == Counter({(m, nid): 1 for m in team})
    await go_to(env.db, dt.datetime.combine(day, dt.time(20, 0), SHANGHAI))
    assert (await tick_and_deliver())["escalations"] == 1
    await go_to(env.db, dt.datetime.combine(day, dt.time(23, 0), SHANGHAI))
    assert await tick_and_deliver() == {
        "scheduled": 0,
        "escalations": 0,
        "lessons": 0,
        "dingtalk_reads": 0,
        "dingtalk_recalls": 0,
        "dingtalk_ding_recalls": 0,
        "unit_posts": 0,
        "quiz_deadlines": 0,
    }
    assert env.pushes() == Counter(
        {(team[0], nid): 1, (team[1], nid): 1, (team[2], nid): 2, (team[3], nid): 2}
    )
    timer = await env.db.fetchval("SELECT state FROM escalations WHERE notice_id = $1", nid)
    assert timer == "done"


async def test_no_reminder_when_the_lesson_goes_after_the_reminder_time(env: Env) -> None:
    await unit(env, "u", lesson_reminder_time="20:00")
    await unit(env, "same", lesson_time="20:00", lesson_reminder_time="20:00")  # not later: none
    at_2030 = await next_local(env.db, SHANGHAI, 20, 30)
    for u in ("u", "same"):
        await lesson(env, u, at_2030.date())
    await go_to(env.db, at_2030)  # the scheduler was down from 08:00 until after 20:00
    assert await send_due_lessons(env.deps) == 2
    assert [r["escalation"] for r in await lesson_notices(env.db)] == [None, None]


async def test_without_push_channels_the_lesson_is_inbox_only_and_never_reminds(
    server_urls: tuple[str, str], db: asyncpg.Connection
) -> None:
    deps = await make_deps(make_settings(server_urls))
    try:
        await db.execute("INSERT INTO units (id, name, lesson_reminder_time) VALUES ('u', 'U', '20:00')")
        at_0800 = await next_local(db, SHANGHAI, 8, 0)
        await db.execute(
            "INSERT INTO lessons (unit_id, day, title, body) VALUES ('u', $1, 'T', 'B')", at_0800.date()
        )
        await go_to(db, at_0800)
        assert await send_due_lessons(deps) == 1
        [row] = await lesson_notices(db)
        assert list(row["channels"]) == ["inapp"] and row["escalation"] is None
    finally:
        await close_deps(deps)


async def test_the_tick_looks_ahead_to_a_lesson_due_before_its_next_run(env: Env) -> None:
    # The lesson time in the unit's own time zone; the look-ahead answers the seconds to it, and a
    # tick 0.4 s before it wakes the engine at that time (workers/tick.py), not up to 1 s late.
    await unit(env, "ny", timezone="America/New_York", lesson_time="08:00")
    at = await next_local(env.db, NEW_YORK, 8, 0)
    await lesson(env, "ny", at.date())
    await lesson(env, "ny", at.date() + dt.timedelta(days=1))  # tomorrow's: not today's, not looked at
    await go_to(env.db, at - dt.timedelta(seconds=30))
    async with env.deps.pool.acquire() as conn:
        ahead = await lessons.seconds_to_next_due(conn)
    assert ahead is not None and 29.0 < ahead <= 30.0
    assert await wake_for_next_timer(env.deps) is None  # beyond the next cron tick
    await go_to(env.db, at - dt.timedelta(seconds=0.4))
    woken = await wake_for_next_timer(env.deps)
    assert woken is not None and 0.3 < woken <= 0.4
    await go_to(env.db, at)
    assert await send_due_lessons(env.deps) == 1
    async with env.deps.pool.acquire() as conn:
        assert await lessons.seconds_to_next_due(conn) is None  # today's went out; tomorrow's is not today
    assert await wake_for_next_timer(env.deps) is None
