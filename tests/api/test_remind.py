"""POST /v1/notices/{id}/remind on real rows: only the unread, a step of its own per press,
idempotent under retries, spaced for secretaries, counted in the escalation ceiling, refused on
recalled or expired notices."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.db import receipts
from notifier.domain.escalation import MANUAL_STEP_BASE
from notifier.workers.deliver import deliver_notice_channel
from tests.api.conftest import issue_key, problem
from tests.api.viewsenv import Views, view_settings, views
from tests.conftest import advance_clock, auth
from tests.workers.test_delivery_layer import make_members, make_notice

__all__ = ["view_settings", "views"]  # fixtures


async def press(
    client: TestClient[Any, Any],
    nid: str,
    body: dict[str, Any],
    token: str | None = None,
    key: str | None = None,
) -> Any:
    headers = auth(token) if token else auth()
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(f"/v1/notices/{nid}/remind", json=body, headers=headers)


async def reminders(db: asyncpg.Connection, nid: str) -> list[tuple[str, str, int]]:
    rows = await db.fetch(
        "SELECT member_id, channel, step FROM deliveries WHERE notice_id = $1 AND step > 0 ORDER BY 3, 1, 2",
        nid,
    )
    return [(r["member_id"], r["channel"], r["step"]) for r in rows]


async def test_remind_now_reaches_the_unread_once_per_press_and_goes_out(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, channel, client = views
    await make_members(db, 3)
    nid = await make_notice(deps, db, ["inapp"])
    async with deps.pool.acquire() as conn, conn.transaction():
        assert await receipts.mark_read(conn, nid, "m00001", "api")
    resp = await press(client, nid, {"channels": ["scripted", "inapp"]})
    assert resp.status == 202, await resp.text()
    first = await resp.json()
    assert first == {
        "notice_id": nid,
        "step": MANUAL_STEP_BASE,
        "unit": None,
        "reminded": {"scripted": 2, "inapp": 2},
        "not_reached": 0,
        "ceiling_reached": False,
    }
    base = MANUAL_STEP_BASE
    assert await reminders(db, nid) == [
        ("m00000", "inapp", base),
        ("m00000", "scripted", base),
        ("m00002", "inapp", base),
        ("m00002", "scripted", base),
    ]
    await deliver_notice_channel(deps, nid, "scripted")
    assert sorted(o.member_id for o in channel.sent) == ["m00000", "m00002"]
    # Counted in the escalation ceiling (a notice without a policy gets a finished timer row).
    assert await db.fetchval("SELECT sends FROM escalations WHERE notice_id = $1", nid) == 4
    assert await db.fetchval("SELECT state FROM escalations WHERE notice_id = $1", nid) == "done"
    event = await db.fetchrow(
        "SELECT detail, members FROM notice_events WHERE notice_id = $1 AND kind = 'remind_now'", nid
    )
    assert event is not None and event["members"] == ["m00000", "m00002"]
    detail = json.loads(event["detail"])
    assert detail["step"] == base and detail["reminded"] == {"scripted": 2, "inapp": 2}
    # An admin's second press is a step of its own: the same members get it again.
    second = await (await press(client, nid, {"channels": ["scripted"]})).json()
    assert second["step"] == base + 1 and second["reminded"] == {"scripted": 2}
    assert len(await reminders(db, nid)) == 6
    # The roll-call shows each press as a manual reminder.
    rc = await (await client.get(f"/v1/notices/{nid}/roll-call", headers=auth())).json()
    entries = {r["member_id"]: r["escalation"] for g in rc["groups"] for r in g["recipients"]}
    assert [(e["action"], e["channel"], e["manual"], e["step"]) for e in entries["m00000"]] == [
        ("reminded", "inapp", True, base),
        ("reminded", "scripted", True, base),
        ("reminded", "scripted", True, base + 1),
    ]
    # The recipient's own timeline names the press.
    tl = await (await client.get(f"/v1/notices/{nid}/recipients/m00000", headers=auth())).json()
    assert [e["kind"] for e in tl["entries"] if e["type"] == "event"] == ["remind_now", "remind_now"]


async def test_a_retry_with_the_same_idempotency_key_sends_nothing_more(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, _, client = views
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["inapp"])
    first = await press(client, nid, {"channels": ["scripted"]}, key="press-1")
    assert first.status == 202
    again = await press(client, nid, {"channels": ["scripted"]}, key="press-1")
    assert again.status == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == await first.json()
    assert len(await reminders(db, nid)) == 2
    other = await press(client, nid, {"channels": ["inapp"]}, key="press-1")
    await problem(other, 422, [{"field": "Idempotency-Key", "message": "reused with a different request"}])
    assert len(await reminders(db, nid)) == 2
    # The notice's own Idempotency-Key namespace is apart: a new key is a new press.
    assert (await (await press(client, nid, {"channels": ["scripted"]}, key="press-2")).json())["step"] == (
        MANUAL_STEP_BASE + 1
    )


async def test_a_secretary_double_click_is_refused_until_the_spacing_has_passed(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, _, client = views
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["inapp"])
    desk = await issue_key(client, {"name": "desk", "role": "secretary", "unit_id": "u"})
    assert (await press(client, nid, {"channels": ["scripted"]}, token=desk)).status == 202
    twice = await press(client, nid, {"channels": ["scripted"]}, token=desk)
    body = await problem(twice, 409)
    assert body["type"].endswith("/remind-too-soon") and 1 <= int(twice.headers["Retry-After"]) <= 60
    assert len(await reminders(db, nid)) == 2
    await advance_clock(db, deps.settings.escalation_min_step_seconds + 1)
    later = await press(client, nid, {"channels": ["scripted"]}, token=desk)
    assert later.status == 202 and (await later.json())["step"] == MANUAL_STEP_BASE + 1


async def test_recalled_expired_and_unsent_notices_and_unknown_channels_are_refused(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, _, client = views
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["inapp"])
    resp = await press(client, nid, {"channels": ["scripted", "carrier-pigeon"]})
    body = await problem(resp, 422)
    assert [e["field"] for e in body["errors"]] == ["channels[1]"]
    resp = await press(client, nid, {"channels": ["scripted", "scripted"]})
    await problem(resp, 422)
    await db.execute(
        "UPDATE notices SET expires_at = notifier_now() + interval '10 minutes' WHERE id = $1", nid
    )
    await advance_clock(db, 601)
    body = await problem(await press(client, nid, {"channels": ["scripted"]}), 409)
    assert body["type"].endswith("/notice-expired")
    other = await make_notice(deps, db, ["inapp"])
    assert (await client.post(f"/v1/notices/{other}/recall", headers=auth())).status == 200
    body = await problem(await press(client, other, {"channels": ["scripted"]}), 409)
    assert body["type"].endswith("/notice-recalled")
    unsent = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels) "
            "VALUES ('ding', 't', 'b', '{\"units\": [\"u\"]}', '{inapp}') RETURNING id"
        )
    )
    body = await problem(await press(client, unsent, {"channels": ["scripted"]}), 409)
    assert body["type"].endswith("/notice-not-sent")
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE step > 0") == 0
    assert await db.fetchval("SELECT count(*) FROM notice_events WHERE kind = 'remind_now'") == 0


@pytest.mark.parametrize("view_settings", [{"escalation_max_sends": 3}])
async def test_remind_now_counts_in_the_escalation_send_ceiling(views: Views, db: asyncpg.Connection) -> None:
    deps, _, client = views
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["inapp"])
    first = await (await press(client, nid, {"channels": ["scripted"]})).json()
    assert first["reminded"] == {"scripted": 2} and not first["ceiling_reached"]
    second = await (await press(client, nid, {"channels": ["scripted"]})).json()
    assert second["reminded"] == {"scripted": 1} and second["ceiling_reached"]
    assert await db.fetchval("SELECT sends FROM escalations WHERE notice_id = $1", nid) == 3
    body = await problem(await press(client, nid, {"channels": ["scripted"]}), 409)
    assert body["type"].endswith("/escalation-ceiling")
    kinds = [
        r["kind"]
        for r in await db.fetch("SELECT kind FROM notice_events WHERE notice_id = $1 ORDER BY id", nid)
    ]
    assert kinds == ["remind_now", "remind_now", "escalation_ceiling_reached"]


async def test_concurrent_presses_with_one_key_send_once_and_without_a_key_take_steps_in_turn(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, _, client = views
    await make_members(db, 3)
    nid = await make_notice(deps, db, ["inapp"])
    answers = await asyncio.gather(
        *(press(client, nid, {"channels": ["scripted"]}, key="double-click") for _ in range(5))
    )
    assert sorted(r.status for r in answers) == [202] * 5
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 4
    assert len(await reminders(db, nid)) == 3
    keyless = await asyncio.gather(*(press(client, nid, {"channels": ["scripted"]}) for _ in range(4)))
    steps = sorted([(await r.json())["step"] for r in keyless])
    assert steps == [MANUAL_STEP_BASE + i for i in range(1, 5)]  # an admin's presses, one step each
    assert len(await reminders(db, nid)) == 15
    assert await db.fetchval("SELECT sends FROM escalations WHERE notice_id = $1", nid) == 15


async def test_a_press_that_finds_everyone_read_still_takes_its_step_but_is_on_no_timeline(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, _, client = views
    await make_members(db, 1)
    nid = await make_notice(deps, db, ["inapp"])
    async with deps.pool.acquire() as conn, conn.transaction():
        assert await receipts.mark_read(conn, nid, "m00000", "api")
    first = await (await press(client, nid, {"channels": ["scripted"]})).json()
    assert first["reminded"] == {"scripted": 0} and first["step"] == MANUAL_STEP_BASE
    assert await reminders(db, nid) == []
    assert (await (await press(client, nid, {"channels": ["scripted"]})).json())[
        "step"
    ] == MANUAL_STEP_BASE + 1
    tl = await (await client.get(f"/v1/notices/{nid}/recipients/m00000", headers=auth())).json()
    assert [e for e in tl["entries"] if e["type"] == "event"] == []
    members = await db.fetch(
        "SELECT members FROM notice_events WHERE notice_id = $1 AND kind = 'remind_now'", nid
    )
    assert [r["members"] for r in members] == [[], []]
