"""GET /v1/notices/{id}/roll-call on real rows: every reason a recipient has not read, the
escalation so far, keyset pages and the CSV export."""

from __future__ import annotations

import csv
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.channels.base import Capabilities, Outcome
from notifier.db import receipts, rollcall, timeline
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.escalate import advance_escalations
from tests.api.viewsenv import Views, view_settings, views
from tests.conftest import advance_clock, auth
from tests.workers.test_delivery_layer import make_members, make_notice

__all__ = ["view_settings", "views"]  # fixtures


async def roll_call(client: TestClient[Any, Any], nid: str, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/v1/notices/{nid}/roll-call{query}", headers=auth())
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def by_member(page: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["member_id"]: r for g in page["groups"] for r in g["recipients"]}


async def test_every_reason_comes_from_the_rows(views: Views, db: asyncpg.Connection) -> None:
    deps, channel, client = views
    await make_members(db, 7)
    await db.execute("DELETE FROM contacts WHERE member_id = 'm00003'")
    await db.execute(
        "UPDATE members SET timezone = 'UTC', "
        "quiet_start = (notifier_now() AT TIME ZONE 'UTC')::time - interval '1 hour', "
        "quiet_end = (notifier_now() AT TIME ZONE 'UTC')::time + interval '1 hour' WHERE id = 'm00005'"
    )
    channel.answers = {
        "m00000": (Outcome.DELIVERED, None),
        "m00002": (Outcome.FAILED, "number does not exist"),
        "m00004": (Outcome.RETRY, "provider busy"),
    }
    nid = await make_notice(deps, db, ["scripted"], kind="notice")  # quiet hours hold a notice
    await deliver_notice_channel(deps, nid, "scripted")
    async with deps.pool.acquire() as conn, conn.transaction():
        assert await receipts.mark_read(conn, nid, "m00006", "api")
    page = await roll_call(client, nid)
    assert [g["unit_id"] for g in page["groups"]] == ["u"] and page["groups"][0]["unit_name"] == "Unit"
    rows = by_member(page)
    assert sorted(rows) == [f"m0000{i}" for i in range(6)]  # the reader is not on it
    assert {m: r["reason"] for m, r in rows.items()} == {
        "m00000": "delivered",
        "m00001": "sent",
        "m00002": "failed",
        "m00003": "no_contact",
        "m00004": "retrying",
        "m00005": "held",
    }
    assert rows["m00000"]["channel"] == "scripted" and rows["m00000"]["at"] is not None
    assert rows["m00001"]["at"] is not None and rows["m00001"]["until"] is None
    assert rows["m00002"]["error"] == "number does not exist"
    assert rows["m00003"]["no_contact"] == ["scripted"] and rows["m00003"]["error"]
    now = await db.fetchval("SELECT notifier_now()")
    retry_at = await db.fetchval(
        "SELECT next_attempt_at FROM deliveries WHERE notice_id = $1 AND member_id = 'm00004'", nid
    )
    assert rows["m00004"]["error"] == "provider busy"  # the retry's own time: backoff with jitter
    held_until = await db.fetchval(
        "SELECT next_attempt_at FROM deliveries WHERE notice_id = $1 AND member_id = 'm00005'", nid
    )
    assert held_until > now
    assert datetime.fromisoformat(rows["m00005"]["until"]) == held_until
    assert datetime.fromisoformat(rows["m00004"]["until"]) == retry_at
    assert all(r["escalation"] == [] for r in rows.values())


async def test_the_escalation_so_far_is_on_the_roll_call(views: Views, db: asyncpg.Connection) -> None:
    deps, channel, client = views
    await make_members(db, 3)
    await db.execute("UPDATE members SET name = 'Secretary' WHERE id = 'm00002'")
    await db.execute("INSERT INTO unit_secretaries VALUES ('u', 'm00002')")
    await db.execute("DELETE FROM contacts WHERE member_id = 'm00001'")
    policy = {
        "steps": [
            {"after": 60, "remind": ["scripted"]},
            {"after": 120, "notify": ["secretary"], "channels": ["inapp"]},
        ]
    }
    nid = await make_notice(deps, db, ["inapp"], escalation=policy)
    await advance_clock(db, 61)
    assert await advance_escalations(deps) == 1
    await deliver_notice_channel(deps, nid, "scripted")
    await advance_clock(db, 60)
    assert await advance_escalations(deps) == 1
    rows = by_member(await roll_call(client, nid))
    first = rows["m00000"]["escalation"]
    assert [(e["action"], e.get("channel"), e["manual"]) for e in first] == [
        ("reminded", "scripted", False),
        ("secretary_told", None, False),
    ]
    assert first[0]["state"] == "sent" and first[0]["step"] == 1
    unreachable = rows["m00001"]["escalation"]
    assert [(e["action"], e.get("channel")) for e in unreachable] == [
        ("not_reached", "scripted"),
        ("secretary_told", None),
    ]
    # In-app delivered it on the first send: that is what reached the member furthest.
    assert (rows["m00000"]["reason"], rows["m00000"]["channel"]) == ("delivered", "inapp")
    assert {c["channel"]: c["state"] for c in rows["m00000"]["channels"]} == {
        "inapp": "delivered",
        "scripted": "sent",
    }


async def test_keyset_pages_list_each_unread_member_under_each_of_their_units_once(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, _, client = views
    await make_members(db, 5)
    await db.execute("INSERT INTO units (id, name, parent_id) VALUES ('v', 'Second', 'u')")
    await db.execute("INSERT INTO member_units VALUES ('m00001', 'v'), ('m00003', 'v')")
    nid = await make_notice(deps, db, ["scripted"])
    seen: list[tuple[str, str]] = []
    query = "?limit=2"
    for _ in range(10):
        page = await roll_call(client, nid, query)
        assert sum(len(g["recipients"]) for g in page["groups"]) <= 2
        seen += [(g["unit_id"], r["member_id"]) for g in page["groups"] for r in g["recipients"]]
        if page["next_cursor"] is None:
            break
        query = f"?limit=2&cursor={page['next_cursor']}"
    assert seen == [("u", f"m0000{i}") for i in range(5)] + [("v", "m00001"), ("v", "m00003")]
    only_v = await roll_call(client, nid, "?unit=v")
    assert [(g["unit_id"], len(g["recipients"])) for g in only_v["groups"]] == [("v", 2)]
    resp = await client.get(f"/v1/notices/{nid}/roll-call?cursor=bm90LWpzb24", headers=auth())
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "query.cursor"


async def test_csv_streams_every_page_with_a_bom_and_no_formulas(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, _, client = views
    await make_members(db, 5)
    await db.execute("UPDATE members SET name = '张伟' WHERE id = 'm00000'")
    await db.execute("UPDATE members SET name = '=HYPERLINK(\"http://x\")' WHERE id = 'm00001'")
    await db.execute("DELETE FROM contacts WHERE member_id = 'm00002'")
    nid = await make_notice(deps, db, ["scripted"])
    resp = await client.get(f"/v1/notices/{nid}/roll-call?limit=2", headers={**auth(), "Accept": "text/csv"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    raw = await resp.read()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    assert rows[0][:5] == ["unit_id", "unit_name", "member_id", "name", "reason"]
    assert [r[2] for r in rows[1:]] == [f"m0000{i}" for i in range(5)]  # all pages, not just limit
    assert rows[1][3] == "张伟"
    assert rows[2][3] == '\'=HYPERLINK("http://x")'
    assert rows[3][4] == "no_contact" and rows[3][9] == "scripted"
    assert {r[4] for r in rows[1:]} == {"queued", "no_contact"}


async def test_a_per_contact_cap_shows_as_throttled_with_its_next_attempt(
    views: Views, db: asyncpg.Connection
) -> None:
    deps, channel, client = views
    channel.capabilities = Capabilities(per_target_limit=(1, 900.0))
    await make_members(db, 1)
    earlier = await make_notice(deps, db, ["scripted"])
    await deliver_notice_channel(deps, earlier, "scripted")
    nid = await make_notice(deps, db, ["scripted"])
    await deliver_notice_channel(deps, nid, "scripted")
    row = by_member(await roll_call(client, nid))["m00000"]
    due = await db.fetchval("SELECT next_attempt_at FROM deliveries WHERE notice_id = $1", nid)
    assert row["reason"] == "throttled" and datetime.fromisoformat(row["until"]) == due
    assert by_member(await roll_call(client, earlier))["m00000"]["reason"] == "sent"


async def test_a_page_reads_only_its_own_members_of_an_event_naming_many(
    views: Views, db: asyncpg.Connection
) -> None:
    """A step that missed 20,000 members is one event naming them all: a page of the roll-call gets
    back only the members on it (not 20,000 ids to search once per row)."""
    deps, _channel, client = views
    await make_members(db, 3)
    nid = await make_notice(deps, db, ["inapp"])
    missed = [f"x{i:05d}" for i in range(20_000)] + ["m00001"]
    async with deps.pool.acquire() as conn:
        await timeline.record_for_members(conn, nid, missed, "not_reached", {"channel": "sms", "step": 1})
        events = await rollcall.escalation_events(conn, nid, ["m00000", "m00001", "m00002"])
    assert [(e["kind"], e["members"]) for e in events] == [("not_reached", ["m00001"])]
    rows = by_member(await roll_call(client, nid))
    assert [(e["action"], e["channel"]) for e in rows["m00001"]["escalation"]] == [("not_reached", "sms")]
    assert rows["m00000"]["escalation"] == [] and rows["m00002"]["escalation"] == []
