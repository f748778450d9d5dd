"""The issue's DingTalk story end to end, on the real engine (PostgreSQL + Redis) and the fake
DingTalk: a DING to 300 members as work notifications (3 tasks of 100); 120 read it on DingTalk
and our counts reach read = 120 with ``via: dingtalk`` without anyone calling our receipts API;
the escalation step then DINGs the 180 still unread by phone through ``dingtalk_ding`` -- only
them -- and a recall withdraws the tasks and the DINGs. The engine clock is moved, not slept."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.channels.registry import build_registry
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from notifier.workers.tick import tick_once
from tests.conftest import advance_clock, auth, make_settings
from tests.fakes.dingtalk import FakeDingTalk
from tests.helpers import worker_deps
from tests.workers.test_dingtalk_reads import counts, org, recall_via_api, user_of


@pytest.fixture
async def deps(
    server_urls: tuple[str, str], db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> AsyncIterator[WorkerDeps]:
    settings = make_settings(
        server_urls, **dingtalk_fake.settings_overrides(), delivery_idle_wait_seconds=0.0
    )
    async with worker_deps(settings) as d:
        yield d


async def send(deps: WorkerDeps, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:
        resp = await client.post("/v1/notices", json=body, headers=auth())
        assert resp.status == status, await resp.text()
        answer: dict[str, Any] = await resp.json()
    return answer


ESCALATING_DING = {
    "kind": "ding",
    "title": "防汛集合",
    "body": "All officers to the river bank.",
    "audience": {"units": ["u"]},
    "channels": ["dingtalk"],
    "escalation": {"steps": [{"after": "PT10M", "remind": ["dingtalk_ding"], "mode": "phone"}]},
}


async def test_reads_come_back_from_dingtalk_and_the_unread_are_called_by_phone(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    members = await org(db, 300)
    nid = (await send(deps, ESCALATING_DING))["id"]
    await fanout_notice(deps, nid)
    await deliver_notice_channel(deps, nid, "dingtalk")
    assert sorted(len(t.user_ids) for t in dingtalk_fake.tasks.values()) == [100, 100, 100]

    # 120 read on DingTalk, over time; the read polls bring them in as our receipts.
    readers = members[::5] + members[1::5][:60]
    assert len(set(readers)) == 120
    dingtalk_fake.mark_read({user_of(m) for m in readers[:70]})
    await advance_clock(db, 10)
    await tick_once(deps)
    dingtalk_fake.mark_read({user_of(m) for m in readers[70:]})
    await advance_clock(db, 30)
    await tick_once(deps)
    c = await counts(deps, nid)
    assert (c["read"], c["unread"]) == (120, 180)
    rows = await db.fetch("SELECT member_id, read_via FROM recipients WHERE read_at IS NOT NULL ORDER BY 1")
    assert [(r["member_id"], r["read_via"]) for r in rows] == [(m, "dingtalk") for m in sorted(readers)]
    assert dingtalk_fake.dings == []  # no DING before the step is due

    # Ten minutes after the send the step DINGs the 180 unread by phone, 20 a call, only them.
    await advance_clock(db, 600 - 40)
    assert (await tick_once(deps))["escalations"] == 1
    # The robot's DINGs a minute are a shared rate limit (here 60 receivers a minute, so the
    # wait is far longer than any slow machine takes): what may not go now waits, visibly.
    slow = deps.settings.model_copy(
        update={"dingtalk": deps.settings.dingtalk.model_copy(update={"ding_per_minute": 60})}
    )
    registry = build_registry(slow)
    try:
        slow_deps = WorkerDeps(slow, deps.pool, deps.queue, registry)
        await deliver_notice_channel(slow_deps, nid, "dingtalk_ding")
        held = await db.fetch(
            "SELECT wait_reason FROM deliveries WHERE notice_id = $1 AND channel = 'dingtalk_ding' "
            "AND state = 'queued'",
            nid,
        )
        assert 150 <= len(held) < 180 and {r["wait_reason"] for r in held} == {"throttled"}
        await advance_clock(db, 200)  # every held DING's slot has come
        await deliver_notice_channel(slow_deps, nid, "dingtalk_ding")
    finally:
        await registry.close()
    unread = sorted(set(members) - set(readers))
    assert dingtalk_fake.dinged(remind_type=3) == {user_of(m): 1 for m in unread}
    assert (
        sum(len(d.user_ids) for d in dingtalk_fake.dings) == 180
        and max(len(d.user_ids) for d in dingtalk_fake.dings) == 20
    )
    assert dingtalk_fake.dinged(remind_type=1) == {} and dingtalk_fake.dinged(remind_type=2) == {}
    rows = await db.fetch(
        "SELECT member_id, state, step, provider_ref FROM deliveries "
        "WHERE notice_id = $1 AND channel = 'dingtalk_ding' ORDER BY member_id",
        nid,
    )
    assert [r["member_id"] for r in rows] == unread
    assert {(r["state"], r["step"]) for r in rows} == {("sent", 1)}
    assert {r["provider_ref"] for r in rows} == {d.open_ding_id for d in dingtalk_fake.dings}
    assert (await counts(deps, nid))["read"] == 120  # a DING reports no read: nothing invented

    # The notice is recalled: its 3 tasks and its DINGs are withdrawn on DingTalk, once each.
    await recall_via_api(deps, nid)
    done = await tick_once(deps)
    assert (done["dingtalk_recalls"], done["dingtalk_ding_recalls"]) == (3, len(dingtalk_fake.dings))
    assert all(d.recalled for d in dingtalk_fake.dings) and all(
        t.recalled for t in dingtalk_fake.tasks.values()
    )
    await recall_via_api(deps, nid)
    await advance_clock(db, 3600)
    done = await tick_once(deps)
    assert (done["dingtalk_recalls"], done["dingtalk_ding_recalls"]) == (0, 0)
    assert dingtalk_fake.calls["ding/recall"] == len(dingtalk_fake.dings)
    rows = await db.fetch("SELECT recalled_at IS NOT NULL AS ok, recall_error FROM dingtalk_dings")
    assert [(r["ok"], r["recall_error"]) for r in rows] == [(True, None)] * len(dingtalk_fake.dings)


async def test_a_refused_ding_recall_is_recorded_not_retried(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    await org(db, 3)
    nid = (
        await send(
            deps, {**ESCALATING_DING, "channels": ["dingtalk_ding"], "escalation": None, "kind": "notice"}
        )
    )["id"]
    await fanout_notice(deps, nid)
    await deliver_notice_channel(deps, nid, "dingtalk_ding")
    assert [(d.remind_type, len(d.user_ids)) for d in dingtalk_fake.dings] == [
        (1, 3)
    ]  # the first send: in the app
    dingtalk_fake.dings.clear()  # DingTalk no longer knows the DING
    await recall_via_api(deps, nid)
    assert (await tick_once(deps))["dingtalk_ding_recalls"] == 1
    (row,) = await db.fetch("SELECT recalled_at, recall_error, recall_due_at FROM dingtalk_dings")
    assert row["recalled_at"] is None and row["recall_due_at"] is None
    assert "openDingId" in row["recall_error"]
    await advance_clock(db, 3600)
    assert (await tick_once(deps))["dingtalk_ding_recalls"] == 0


async def test_a_mode_on_a_step_without_a_ding_is_a_422_naming_the_step(
    deps: WorkerDeps, db: asyncpg.Connection
) -> None:
    await org(db, 1)
    bad = {
        **ESCALATING_DING,
        "escalation": {"steps": [{"after": "PT10M", "remind": ["dingtalk"], "mode": "sms"}]},
    }
    problem = await send(deps, bad, status=422)
    assert any(e["field"].startswith("escalation.steps[0]") for e in problem["errors"]), problem
    assert await db.fetchval("SELECT count(*) FROM notices") == 0


async def test_contacts_for_channels_that_use_others_are_refused(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    (member,) = await org(db, 1)
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:
        for channel, target, says in [
            ("dingtalk_ding", "dingm1", "through their dingtalk contact"),
            ("dingtalk_robot", dingtalk_fake.new_robot(), "unit-level"),
        ]:
            resp = await client.post(
                f"/v1/members/{member}/contacts", json={"channel": channel, "target": target}, headers=auth()
            )
            problem = await resp.json()
            assert resp.status == 422 and problem["errors"][0]["field"] == "channel", problem
            assert says in problem["errors"][0]["message"]
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE channel <> 'dingtalk'") == 0


async def api(deps: WorkerDeps, method: str, path: str, body: Any, token: str | None = None) -> Any:
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:
        resp = await client.request(method, path, json=body, headers=auth(token) if token else auth())
        return resp.status, await resp.json()


async def test_dings_by_phone_count_against_the_units_budget_and_dings_in_the_app_are_free(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    """Issue 14's cost guard on ``dingtalk_ding``: a DING by phone (or SMS) is paid, each mode with
    its own daily budget; beyond it the calls wait as ``budget_exhausted``; the same notice's
    DINGs in the app and its work notifications are never held by it."""
    members = await org(db, 5)
    status, problem = await api(deps, "PUT", "/v1/units/u/budgets/dingtalk_ding", {"daily_limit": 1})
    assert status == 422 and problem["errors"][0]["field"] == "channel", problem  # the app mode is free
    status, budget = await api(deps, "PUT", "/v1/units/u/budgets/dingtalk_ding.phone", {"daily_limit": 2})
    assert status == 200 and budget["channel"] == "dingtalk_ding.phone", budget
    status, sms = await api(deps, "PUT", "/v1/units/u/budgets/dingtalk_ding.sms", {"daily_limit": 0})
    assert status == 200, sms  # another mode's budget, spent already: it does not touch the phone's
    status, key = await api(deps, "POST", "/v1/api-keys", {"name": "u", "role": "service", "unit_id": "u"})
    assert status == 201, key
    body = {**ESCALATING_DING, "channels": ["dingtalk", "dingtalk_ding"]}
    nid = (await send_as(deps, body, key["token"]))["id"]
    await fanout_notice(deps, nid)
    await deliver_notice_channel(deps, nid, "dingtalk")
    await deliver_notice_channel(deps, nid, "dingtalk_ding")
    assert dingtalk_fake.dinged(remind_type=1) == {user_of(m): 1 for m in members}  # in the app: free

    await advance_clock(db, 600)
    assert (await tick_once(deps))["escalations"] == 1
    await deliver_notice_channel(deps, nid, "dingtalk_ding")
    assert len(dingtalk_fake.dinged(remind_type=3)) == 2 and dingtalk_fake.dinged(remind_type=2) == {}
    rows = await db.fetch(
        "SELECT channel, step, state, wait_reason, count(*) AS n FROM deliveries WHERE notice_id = $1 "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3",
        nid,
    )
    assert [tuple(r) for r in rows] == [
        ("dingtalk", 0, "delivered", None, 5),
        ("dingtalk_ding", 0, "sent", None, 5),
        ("dingtalk_ding", 1, "queued", "budget_exhausted", 3),
        ("dingtalk_ding", 1, "sent", None, 2),
    ]
    events = await db.fetch(
        "SELECT detail FROM notice_events WHERE notice_id = $1 AND kind = 'budget_exhausted'", nid
    )
    assert [json.loads(e["detail"])["channel"] for e in events] == ["dingtalk_ding.phone"]
    status, listed = await api(deps, "GET", "/v1/units/u/budgets", None)
    assert status == 200
    assert {b["channel"]: b["used_today"] for b in listed["items"]} == {
        "dingtalk_ding.phone": 2,
        "dingtalk_ding.sms": 0,
    }

    # An admin's override frees the held calls at once; they go, once each.
    until = (await db.fetchval("SELECT notifier_now() + interval '1 hour'")).isoformat()
    status, _ = await api(
        deps, "PUT", "/v1/units/u/budgets/dingtalk_ding.phone", {"daily_limit": 2, "override_until": until}
    )
    assert status == 200
    await deliver_notice_channel(deps, nid, "dingtalk_ding")
    assert dingtalk_fake.dinged(remind_type=3) == {user_of(m): 1 for m in members}


async def send_as(deps: WorkerDeps, body: dict[str, Any], token: str) -> dict[str, Any]:
    status, answer = await api(deps, "POST", "/v1/notices", body, token)
    assert status == 202, answer
    return dict(answer)
