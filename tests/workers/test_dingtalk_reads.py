"""DingTalk end to end on the real engine (PostgreSQL + Redis) and a fake DingTalk: work
notifications in tasks of 100, reads imported from ``getsendresult`` by the tick's poll timers,
and the platform's refusals as clear failures. The engine clock is moved instead of sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from notifier.workers.tick import tick_once
from tests.conftest import advance_clock, auth, frozen_clock, make_settings
from tests.fakes.dingtalk import FakeDingTalk
from tests.helpers import worker_deps


@pytest.fixture
async def deps(
    server_urls: tuple[str, str], db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> AsyncIterator[WorkerDeps]:
    settings = make_settings(
        server_urls, **dingtalk_fake.settings_overrides(), delivery_idle_wait_seconds=0.0
    )
    async with worker_deps(settings) as d:
        yield d


def user_of(member: str) -> str:
    return "ding" + member  # the member's DingTalk userid


async def org(db: asyncpg.Connection, n: int, unit: str = "u", first: int = 0) -> list[str]:
    await db.execute("INSERT INTO units (id, name) VALUES ($1, 'Unit') ON CONFLICT DO NOTHING", unit)
    members = [f"m{i:05d}" for i in range(first, first + n)]
    await db.execute("INSERT INTO members (id, name) SELECT unnest($1::text[]), 'M'", members)
    await db.execute("INSERT INTO member_units SELECT unnest($1::text[]), $2", members, unit)
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT m, 'dingtalk', to_jsonb('ding' || m) "
        "FROM unnest($1::text[]) m",
        members,
    )
    return members


async def notice(deps: WorkerDeps, db: asyncpg.Connection, unit: str = "u", title: str = "集合") -> str:
    nid = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels) "
            "VALUES ('ding', $1, 'Report to the east gate.', "
            "jsonb_build_object('units', jsonb_build_array($2::text)), '{dingtalk}') RETURNING id",
            title,
            unit,
        )
    )
    await fanout_notice(deps, nid)
    await deliver_notice_channel(deps, nid, "dingtalk")
    return nid


async def counts(deps: WorkerDeps, nid: str) -> dict[str, Any]:
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:
        resp = await client.get(f"/v1/notices/{nid}", headers=auth())
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    return dict(body["counts"])


async def polls(db: asyncpg.Connection) -> dict[str, tuple[int, bool]]:
    rows = await db.fetch("SELECT task_id, polls, done_at IS NOT NULL AS done FROM dingtalk_read_polls")
    return {r["task_id"]: (r["polls"], r["done"]) for r in rows}


@pytest.fixture
async def frozen(db: asyncpg.Connection) -> AsyncIterator[None]:
    """The poll schedule is checked to the second: the engine's clock moves only by the jumps."""
    async with frozen_clock(db):
        yield


async def test_reads_on_dingtalk_become_our_receipts(
    frozen: None, deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    members = await org(db, 300)
    nid = await notice(deps, db)
    # Three tasks of 100, one message per member, each task id recorded and given a poll timer.
    assert sorted(len(t.user_ids) for t in dingtalk_fake.tasks.values()) == [100, 100, 100]
    assert dingtalk_fake.per_user() == {user_of(m): 1 for m in members}
    refs = await db.fetch("SELECT provider_ref, count(*) FROM deliveries WHERE state = 'sent' GROUP BY 1")
    assert sorted(r["count"] for r in refs) == [100, 100, 100]
    assert {r["provider_ref"] for r in refs} == {str(t) for t in dingtalk_fake.tasks}
    assert await polls(db) == {str(t): (0, False) for t in dingtalk_fake.tasks}

    # Not due yet: the first poll is 10 s after the send.
    await tick_once(deps)
    assert dingtalk_fake.calls["getsendresult"] == 0

    # 50 read on DingTalk; the poll 10 s later brings them in, and the rest count as delivered.
    dingtalk_fake.mark_read({user_of(m) for m in members[:50]})
    await advance_clock(db, 10)
    assert (await tick_once(deps))["dingtalk_reads"] == 3
    c = await counts(deps, nid)
    assert (c["read"], c["unread"], c["delivered"], c["sent"]) == (50, 250, 300, 0)

    # 70 more over the next minutes, on the back-off schedule (30 s, then 1 min).
    dingtalk_fake.mark_read({user_of(m) for m in members[50:120]})
    await advance_clock(db, 29)
    await tick_once(deps)
    assert dingtalk_fake.calls["getsendresult"] == 3  # not due until 30 s after the last poll
    await advance_clock(db, 1)
    await tick_once(deps)
    assert dingtalk_fake.calls["getsendresult"] == 6
    # The first task (members 0..99) is all read now: its timer is done.
    first_task = next(
        str(t.task_id) for t in dingtalk_fake.tasks.values() if t.user_ids[0] == user_of(members[0])
    )
    assert (await polls(db))[first_task] == (2, True)
    # Polled again and again, each read still counts once.
    await advance_clock(db, 60)
    await tick_once(deps)
    c = await counts(deps, nid)
    assert (c["read"], c["unread"]) == (120, 180)
    reads = await db.fetch("SELECT member_id, read_via FROM recipients WHERE read_at IS NOT NULL ORDER BY 1")
    assert [(r["member_id"], r["read_via"]) for r in reads] == [(m, "dingtalk") for m in members[:120]]
    assert await db.fetchval("SELECT sum(read) FROM notice_counts WHERE notice_id = $1", nid) == 120
    assert dingtalk_fake.rejected == 0 and dingtalk_fake.token_requests == 1

    # The schedule then backs off to 5 min and every 15 min; a task everyone read is done.
    dingtalk_fake.mark_read({user_of(m) for m in members[100:200]})  # the second task is now all read
    second = next(
        str(t.task_id) for t in dingtalk_fake.tasks.values() if t.user_ids[0] == user_of(members[100])
    )
    await advance_clock(db, 299)
    await tick_once(deps)
    assert dingtalk_fake.calls["getsendresult"] == 8
    await advance_clock(db, 1)
    await tick_once(deps)
    assert dingtalk_fake.calls["getsendresult"] == 10
    assert (await polls(db))[second] == (4, True)
    for _ in range(2):
        await advance_clock(db, 900)
        await tick_once(deps)
    assert dingtalk_fake.calls["getsendresult"] == 12  # one task left unread, polled every 15 minutes
    assert (await counts(deps, nid))["read"] == 200

    # After 24 hours DingTalk cannot answer: the timers end.
    await advance_clock(db, 24 * 3600)
    dingtalk_fake.advance(24 * 3600)
    await tick_once(deps)
    assert all(done for _, done in (await polls(db)).values())
    before = dingtalk_fake.calls["getsendresult"]
    await advance_clock(db, 3600)
    await tick_once(deps)
    assert dingtalk_fake.calls["getsendresult"] == before


async def test_unknown_users_and_duplicates_are_clear_failures_counted_once(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    members = await org(db, 10, unit="a")
    newcomers = await org(db, 5, unit="b", first=10)
    await db.execute("INSERT INTO member_units SELECT unnest($1::text[]), 'b'", members)  # b = all 15
    dingtalk_fake.invalid_users.add(user_of(newcomers[0]))  # a userid DingTalk does not know

    first = await notice(deps, db, unit="a")
    # The same content again the same day: DingTalk refuses it for the 10 who have it.
    again = await notice(deps, db, unit="b")
    # ... and a third time to only those 10: the whole call is refused (143106), nothing sent.
    third = await notice(deps, db, unit="a")
    assert dingtalk_fake.per_user() == {user_of(m): 1 for m in members + newcomers[1:]}
    rows = await db.fetch("SELECT state, error FROM deliveries WHERE notice_id = $1", third)
    assert len(rows) == 10 and {r["state"] for r in rows} == {"failed"}
    assert all("143106" in r["error"] and "same content" in r["error"] for r in rows)

    dingtalk_fake.mark_read({user_of(m) for m in members + newcomers})
    for _ in range(3):  # polled three times: nothing counted twice
        await advance_clock(db, 61)
        await tick_once(deps)
    c1, c2, c3 = await counts(deps, first), await counts(deps, again), await counts(deps, third)
    assert (c1["read"], c1["delivered"], c1["failed"]) == (10, 10, 0)
    # Notice 2: 4 newcomers read it; the unknown user and the 10 duplicates failed, with reasons.
    assert (c2["recipients"], c2["read"], c2["delivered"], c2["failed"]) == (15, 4, 4, 11)
    rows = await db.fetch(
        "SELECT member_id, error FROM deliveries WHERE notice_id = $1 AND state = 'failed'", again
    )
    failed: dict[str, str] = {r["member_id"]: r["error"] for r in rows}
    assert "invalid user id" in failed[newcomers[0]]
    # ... and the userid DingTalk does not know is not used again.
    disabled = await db.fetch("SELECT member_id, disabled_reason FROM contacts WHERE disabled_at IS NOT NULL")
    assert [r["member_id"] for r in disabled] == [newcomers[0]]
    assert "invalid user id" in disabled[0]["disabled_reason"]
    assert all("143106" in failed[m] and "same content" in failed[m] for m in members)
    assert (c3["read"], c3["failed"], c3["sent"]) == (0, 10, 0)
    # The refused task was never created, so it has no timer; the two real tasks are done.
    assert len(dingtalk_fake.tasks) == 2 and all(done for _, done in (await polls(db)).values())


async def recall_via_api(deps: WorkerDeps, nid: str) -> None:
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:
        resp = await client.post(f"/v1/notices/{nid}/recall", headers=auth())
        assert resp.status == 200, await resp.text()


async def test_a_recalled_notice_is_withdrawn_on_dingtalk_once(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    await org(db, 150)
    nid = await notice(deps, db)
    other = await notice(deps, db, title="Another notice")
    assert len(dingtalk_fake.tasks) == 4
    assert (await tick_once(deps))["dingtalk_recalls"] == 0  # nothing recalled yet
    await recall_via_api(deps, nid)
    assert (await tick_once(deps))["dingtalk_recalls"] == 2
    recalled = {str(t.task_id) for t in dingtalk_fake.tasks.values() if t.recalled}
    mine = {
        r["provider_ref"]
        for r in await db.fetch("SELECT DISTINCT provider_ref FROM deliveries WHERE notice_id = $1", nid)
    }
    assert recalled == mine and len(mine) == 2  # only this notice's tasks, the other stays
    await recall_via_api(deps, nid)  # recalling again changes nothing
    await advance_clock(db, 3600)
    assert (await tick_once(deps))["dingtalk_recalls"] == 0
    assert dingtalk_fake.calls["recall"] == 2
    rows = await db.fetch(
        "SELECT recalled_at IS NOT NULL AS ok, recall_error FROM dingtalk_read_polls WHERE notice_id = $1",
        nid,
    )
    assert [(r["ok"], r["recall_error"]) for r in rows] == [(True, None), (True, None)]

    # A day later DingTalk can no longer withdraw it: recorded with the reason, not retried.
    await advance_clock(db, 23 * 3600 - 60)
    dingtalk_fake.advance(24 * 3600 + 1)
    await recall_via_api(deps, other)
    assert (await tick_once(deps))["dingtalk_recalls"] == 2
    rows = await db.fetch(
        "SELECT recalled_at, recall_error, recall_due_at FROM dingtalk_read_polls WHERE notice_id = $1", other
    )
    assert all(
        r["recalled_at"] is None and "40035" in r["recall_error"] and r["recall_due_at"] is None for r in rows
    )
    await advance_clock(db, 3600)
    await tick_once(deps)
    assert dingtalk_fake.calls["recall"] == 4
