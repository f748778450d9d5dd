"""The cost guard (issue 14) on the real engine: a unit's daily SMS budget, inherited by the units
below it, holds what is beyond it visibly (``budget_exhausted`` with the time it goes, an event
on the notice), never touches the notice's free channels, and frees the held rows when an admin
overrides it or when the unit's day ends. The fake Twilio counts what really left."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.settings import Settings
from tests.conftest import advance_clock, auth, make_settings, running_worker, wait_until
from tests.fakes.twilio import FakeTwilio

MEMBERS = 5
LIMIT = 3


@dataclass
class Env:
    client: TestClient[Any, Any]
    db: asyncpg.Connection
    twilio: FakeTwilio
    settings: Settings

    async def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        resp = await self.client.request(method, path, json=body, headers=auth(token) if token else auth())
        text = await resp.text()
        return resp.status, (await resp.json() if text and resp.content_type.endswith("json") else None)


def phone(i: int) -> str:
    return f"+1415555{i:04d}"


@pytest.fixture
async def env(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> AsyncIterator[Env]:
    settings = make_settings(server_urls, **twilio_fake.settings_overrides())
    async with (
        TestClient(TestServer(create_app(settings), host="127.0.0.1")) as client,
        running_worker(settings),
    ):
        await db.execute(
            "INSERT INTO units (id, name, parent_id, timezone) VALUES ('c', 'C', NULL, 'UTC'), "
            "('b1', 'B1', 'c', NULL), ('g1', 'G1', 'b1', NULL)"
        )
        ids = [f"m{i}" for i in range(MEMBERS)]
        await db.execute("INSERT INTO members (id, name) VALUES ('sec', 'Secretary')")
        await db.execute("INSERT INTO member_units VALUES ('sec', 'b1')")
        await db.execute("INSERT INTO unit_secretaries VALUES ('b1', 'sec')")
        await db.executemany("INSERT INTO members (id, name) VALUES ($1, $1)", [(m,) for m in ids])
        await db.executemany("INSERT INTO member_units VALUES ($1, 'g1')", [(m,) for m in ids])
        await db.executemany(
            "INSERT INTO contacts (member_id, channel, target) VALUES ($1, 'sms', to_jsonb($2::text))",
            [(m, phone(i)) for i, m in enumerate(ids)],
        )
        yield Env(client, db, twilio_fake, settings)


async def ding_from_g1(env: Env) -> str:
    status, key = await env.call("POST", "/v1/api-keys", {"name": "g1", "role": "service", "unit_id": "g1"})
    assert status == 201, key
    body = {
        "kind": "ding",
        "title": "t",
        "body": "b",
        "audience": {"units": ["g1"]},
        "channels": ["inapp", "sms"],
    }
    status, notice = await env.call("POST", "/v1/notices", body, token=key["token"])
    assert status == 202, notice
    return str(notice["id"])


async def states(env: Env, nid: str) -> Counter[tuple[str, str, str | None]]:
    rows = await env.db.fetch("SELECT channel, state, wait_reason FROM deliveries WHERE notice_id = $1", nid)
    return Counter((r["channel"], r["state"], r["wait_reason"]) for r in rows)


async def exhaust(env: Env) -> str:
    status, budget = await env.call("PUT", "/v1/units/b1/budgets/sms", {"daily_limit": LIMIT})
    assert status == 200, budget
    assert budget["daily_limit"] == LIMIT and budget["used_today"] == 0
    nid = await ding_from_g1(env)
    held = MEMBERS - LIMIT

    async def settled() -> bool:
        return await states(env, nid) == Counter(
            {
                ("inapp", "delivered", None): MEMBERS,
                ("sms", "sent", None): LIMIT,
                ("sms", "queued", "budget_exhausted"): held,
            }
        )

    await wait_until(settled, within=20)
    await asyncio.sleep(1.5)  # ticks and reconciler passes: nothing more may leave
    assert len(env.twilio.sms) == LIMIT
    return nid


async def test_a_spent_budget_holds_paid_sends_visibly_and_an_admin_override_frees_them(env: Env) -> None:
    nid = await exhaust(env)
    # The free channel went to everybody; the held SMS say why and when (the next UTC midnight).
    status, page = await env.call("GET", f"/v1/notices/{nid}/recipients")
    assert status == 200
    now = await env.db.fetchval("SELECT notifier_now()")
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    held = [d for item in page["items"] for d in item["deliveries"] if d["state"] == "budget_exhausted"]
    assert len(held) == MEMBERS - LIMIT
    for d in held:
        assert d["channel"] == "sms" and d["next_attempt_at"] is not None
        at = await env.db.fetchval("SELECT $1::text::timestamptz", d["next_attempt_at"])
        assert abs((at - midnight).total_seconds()) < 5, (at, midnight)
    events = await env.db.fetch("SELECT kind, detail FROM notice_events WHERE notice_id = $1", nid)
    exhausted = [json.loads(e["detail"]) for e in events if e["kind"] == "budget_exhausted"]
    assert exhausted == [
        {
            "channel": "sms",
            "unit_id": "b1",
            "day": str(now.date()),
            "daily_limit": LIMIT,
            "held": MEMBERS - LIMIT,
        }
    ]

    # The secretary of the unit whose budget it is was told, once, in-app.
    async def told() -> bool:
        n = await env.db.fetchval(
            "SELECT count(*) FROM deliveries d JOIN notices n ON n.id = d.notice_id "
            "WHERE n.kind = 'notice' AND d.member_id = 'sec' AND d.channel = 'inapp' "
            "AND d.state = 'delivered'"
        )
        return bool(n == 1)

    await wait_until(told, within=20)
    tell = await env.db.fetchrow("SELECT title, body, scope_unit_id FROM notices WHERE kind = 'notice'")
    assert tell is not None and tell["scope_unit_id"] == "b1" and "SMS budget of unit b1" in tell["title"]
    assert nid in tell["body"]
    status, listed = await env.call("GET", "/v1/units/b1/budgets")
    assert status == 200 and [(b["channel"], b["used_today"]) for b in listed["items"]] == [("sms", LIMIT)]

    # Only an admin overrides; a unit's own key cannot lift its budget.
    status, key = await env.call("POST", "/v1/api-keys", {"name": "b1", "role": "service", "unit_id": "b1"})
    assert status == 201
    status, _ = await env.call("PUT", "/v1/units/b1/budgets/sms", {"daily_limit": 100}, token=key["token"])
    assert status == 403
    status, problem = await env.call("PUT", "/v1/units/b1/budgets/inapp", {"daily_limit": 1})
    assert status == 422 and problem["errors"][0]["field"] == "channel", problem

    until = (now + timedelta(hours=1)).isoformat()
    status, budget = await env.call(
        "PUT", "/v1/units/b1/budgets/sms", {"daily_limit": LIMIT, "override_until": until}
    )
    assert status == 200, budget

    async def all_sent() -> bool:
        return await states(env, nid) == Counter(
            {("inapp", "delivered", None): MEMBERS, ("sms", "sent", None): MEMBERS}
        )

    await wait_until(all_sent, within=20)
    await asyncio.sleep(1.0)
    assert Counter(m.to for m in env.twilio.sms) == Counter({phone(i): 1 for i in range(MEMBERS)})
    actions = [r["action"] for r in await env.db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions.count("budget.put") == 2
    assert await env.db.fetchval("SELECT count(*) FROM notices WHERE kind = 'notice'") == 1  # told once


async def test_the_held_sends_go_when_the_units_day_ends(env: Env) -> None:
    nid = await exhaust(env)
    resets_in = await env.db.fetchval(
        "SELECT extract(epoch FROM (date_trunc('day', notifier_now() AT TIME ZONE 'UTC') + interval '1 day') "
        "AT TIME ZONE 'UTC' - notifier_now())::float8"
    )
    await advance_clock(env.db, resets_in + 2)

    async def all_sent() -> bool:
        return (await states(env, nid))[("sms", "sent", None)] == MEMBERS

    await wait_until(all_sent, within=20)
    await asyncio.sleep(1.0)
    assert Counter(m.to for m in env.twilio.sms) == Counter({phone(i): 1 for i in range(MEMBERS)})
    spend = await env.db.fetch("SELECT day, used FROM budget_spend WHERE unit_id = 'b1' ORDER BY day")
    assert [r["used"] for r in spend] == [LIMIT, MEMBERS - LIMIT]


async def test_without_a_budget_up_the_tree_nothing_is_held(env: Env) -> None:
    status, budget = await env.call("PUT", "/v1/units/c/budgets/voice", {"daily_limit": 0})  # another channel
    assert status == 200, budget
    nid = await ding_from_g1(env)

    async def all_sent() -> bool:
        return (await states(env, nid))[("sms", "sent", None)] == MEMBERS

    await wait_until(all_sent, within=20)
    assert len(env.twilio.sms) == MEMBERS
    status, _ = await env.call("DELETE", "/v1/units/c/budgets/voice")
    assert status == 204
    status, _ = await env.call("DELETE", "/v1/units/c/budgets/voice")
    assert status == 404


async def test_an_admins_notice_spends_the_budgets_of_the_units_it_reaches(env: Env) -> None:
    """An admin's notice has no scope unit: each SMS is charged to the budget governing its
    recipient (b1's for the members of g1 below it), a recipient under no budget is not limited,
    and raising the budget frees what it held."""
    await env.db.execute("INSERT INTO members (id, name) VALUES ('top', 'Top')")
    await env.db.execute("INSERT INTO member_units VALUES ('top', 'c')")  # above b1: no budget
    await env.db.execute(
        "INSERT INTO contacts (member_id, channel, target) VALUES ('top', 'sms', '\"+14155559999\"')"
    )
    status, budget = await env.call("PUT", "/v1/units/b1/budgets/sms", {"daily_limit": LIMIT})
    assert status == 200, budget
    body = {
        "kind": "ding",
        "title": "t",
        "body": "b",
        "audience": {"units": ["g1"], "members": ["top"]},
        "channels": ["inapp", "sms"],
    }
    status, notice = await env.call("POST", "/v1/notices", body)  # the admin token
    assert status == 202, notice
    nid = str(notice["id"])
    held = MEMBERS - LIMIT

    async def settled() -> bool:
        return await states(env, nid) == Counter(
            {
                ("inapp", "delivered", None): MEMBERS + 1,
                ("sms", "sent", None): LIMIT + 1,
                ("sms", "queued", "budget_exhausted"): held,
            }
        )

    await wait_until(settled, within=20)
    assert "+14155559999" in {m.to for m in env.twilio.sms} and len(env.twilio.sms) == LIMIT + 1
    assert (
        await env.db.fetchval("SELECT used FROM budget_spend WHERE unit_id = 'b1' AND channel = 'sms'")
        == LIMIT
    )
    events = await env.db.fetch(
        "SELECT detail FROM notice_events WHERE notice_id = $1 AND kind = 'budget_exhausted'", nid
    )
    assert [(json.loads(e["detail"])["unit_id"], json.loads(e["detail"])["held"]) for e in events] == [
        ("b1", held)
    ]
    status, _ = await env.call("PUT", "/v1/units/b1/budgets/sms", {"daily_limit": MEMBERS})

    async def all_sent() -> bool:
        return (await states(env, nid))[("sms", "sent", None)] == MEMBERS + 1

    await wait_until(all_sent, within=20)
    assert Counter(m.to for m in env.twilio.sms) == Counter(
        {**{phone(i): 1 for i in range(MEMBERS)}, "+14155559999": 1}
    )
