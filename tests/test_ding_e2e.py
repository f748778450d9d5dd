"""The whole DING path on real PostgreSQL + Redis + a fake webhook receiver."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org, get, post


async def _all_final(client: TestClient[Any, Any], db: asyncpg.Connection, notice_id: str, n: int) -> bool:
    body = await get(client, f"/v1/notices/{notice_id}")
    c = body["counts"]
    if not (body["state"] == "active" and c["recipients"] == n and c["delivered"] + c["failed"] == n):
        return False
    pending = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state IN ('queued', 'sending')", notice_id
    )
    return bool(pending == 0)


async def test_ding_to_top_unit_reaches_every_member_once_per_channel(
    client: TestClient[Any, Any], worker: None, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    org = await build_org(client, groups=15, members=1000)
    members = org["members"]
    # Contacts set-based through SQL: the API path is covered elsewhere, here we want 1,000 fast.
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{receiver.url}"}}',
    )
    # A member listed by name *and* reached through a unit counts once.
    notice = await post(
        client,
        "/v1/notices",
        {
            "kind": "ding",
            "title": "紧急通知",
            "body": "All officers report to the muster point.",
            "audience": {"units": ["c", "b1"], "members": [members[0], members[1]]},
            "channels": ["inapp", "webhook"],
        },
        status=202,
    )
    assert notice["state"] == "queued"
    nid = notice["id"]
    await wait_until(lambda: _all_final(client, db, nid, 1000))

    # Exactly one webhook per member, each correctly signed (the receiver rejects bad signatures).
    assert receiver.rejected == 0
    assert receiver.per_member() == {m: 1 for m in members}
    assert {m.body["notice_id"] for m in receiver.messages} == {nid}
    assert receiver.messages[0].body["title"] == "紧急通知"
    # Exactly one delivery row per member per channel.
    rows = await db.fetch(
        "SELECT channel, count(*) AS n, count(DISTINCT member_id) AS m FROM deliveries "
        "WHERE notice_id = $1 GROUP BY channel ORDER BY channel",
        nid,
    )
    assert [(r["channel"], r["n"], r["m"]) for r in rows] == [("inapp", 1000, 1000), ("webhook", 1000, 1000)]

    counts = (await get(client, f"/v1/notices/{nid}"))["counts"]
    assert counts == {
        "recipients": 1000,
        "queued": 0,
        "sent": 0,
        "delivered": 1000,
        "failed": 0,
        "cancelled": 0,
        "read": 0,
        "unread": 1000,
    }

    # Some members of group g3 read it; the unread list for g3's branch is exact.
    g3_members = [m for m, g in zip(members, org["group_of"], strict=True) if g == "g3"]
    readers = set(g3_members[:10])
    for m in readers:
        await post(client, f"/v1/notices/{nid}/receipts", {"member_id": m, "type": "read"}, status=200)
    counts = (await get(client, f"/v1/notices/{nid}"))["counts"]
    assert counts["read"] == 10 and counts["unread"] == 990

    async def listing(query: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(100):
            page = await get(
                client,
                f"/v1/notices/{nid}/recipients?{query}&limit=7" + (f"&cursor={cursor}" if cursor else ""),
            )
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError("pagination did not end")

    unread_g3 = await listing("status=unread&unit=g3")
    assert [i["member_id"] for i in unread_g3] == sorted(set(g3_members) - readers)
    assert all(i["status"] == "delivered" and i["read_at"] is None for i in unread_g3)
    assert {d["channel"] for d in unread_g3[0]["deliveries"]} == {"inapp", "webhook"}
    read_g3 = await listing("status=read&unit=g3")
    assert [i["member_id"] for i in read_g3] == sorted(readers)
    # Branch b0 holds groups g0, g3, g6, g9, g12.
    b0_groups = {"g0", "g3", "g6", "g9", "g12"}
    unread_b0 = await listing("status=unread&unit=b0")
    expected = sorted(
        m for m, g in zip(members, org["group_of"], strict=True) if g in b0_groups and m not in readers
    )
    assert [i["member_id"] for i in unread_b0] == expected
    assert await listing("status=failed") == []

    # The inbox shows the notice with read state.
    inbox = await get(client, f"/v1/members/{g3_members[0]}/inbox")
    assert [(i["notice_id"], i["read"]) for i in inbox["items"]] == [(nid, True)]
    inbox = await get(client, f"/v1/members/{g3_members[0]}/inbox?unread=true")
    assert inbox["items"] == []


async def test_member_without_contact_is_failed_on_that_channel_and_visible(
    client: TestClient[Any, Any], worker: None, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    await build_org(client, groups=3, members=4)
    await post(client, "/v1/members/m00000/contacts", {"channel": "webhook", "target": receiver.url})
    notice = await post(
        client,
        "/v1/notices",
        {"kind": "notice", "title": "t", "body": "b", "audience": {"units": ["c"]}, "channels": ["webhook"]},
        status=202,
    )
    await wait_until(lambda: _all_final(client, db, notice["id"], 4))
    counts = (await get(client, f"/v1/notices/{notice['id']}"))["counts"]
    assert (counts["delivered"], counts["failed"]) == (1, 3)
    failed = await get(client, f"/v1/notices/{notice['id']}/recipients?status=failed")
    assert [i["member_id"] for i in failed["items"]] == ["m00001", "m00002", "m00003"]
    assert failed["items"][0]["deliveries"][0]["error"] == "no working contact for this channel"
    assert receiver.per_member() == {"m00000": 1}


async def test_an_optional_channel_reaches_who_it_can_and_fails_nobody(
    client: TestClient[Any, Any], worker: None, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    await build_org(client, groups=3, members=4)
    await post(client, "/v1/members/m00000/contacts", {"channel": "webhook", "target": receiver.url})
    body = {"kind": "notice", "title": "t", "body": "b", "audience": {"units": ["c"]}}
    # An optional channel is one of the notice's, and one that reaches members stays required.
    problem = await post(
        client,
        "/v1/notices",
        {**body, "channels": ["inapp", "webhook"], "optional_channels": ["webhook", "sms"]},
        status=422,
    )
    assert [e["field"] for e in problem["errors"]] == ["optional_channels[1]"]
    problem = await post(
        client, "/v1/notices", {**body, "channels": ["webhook"], "optional_channels": ["webhook"]}, status=422
    )
    assert [e["field"] for e in problem["errors"]] == ["optional_channels"]
    assert await db.fetchval("SELECT count(*) FROM notices") == 0

    notice = await post(
        client,
        "/v1/notices",
        {**body, "channels": ["inapp", "webhook"], "optional_channels": ["webhook"]},
        status=202,
    )
    assert notice["optional_channels"] == ["webhook"]
    await wait_until(lambda: _all_final(client, db, notice["id"], 4))
    status = await get(client, f"/v1/notices/{notice['id']}")
    assert status["optional_channels"] == ["webhook"]
    assert (status["counts"]["delivered"], status["counts"]["failed"]) == (4, 0)
    rows = await db.fetch(
        "SELECT member_id, channel, state FROM deliveries WHERE notice_id = $1 ORDER BY member_id, channel",
        notice["id"],
    )
    assert [(r["member_id"], r["channel"], r["state"]) for r in rows] == [
        ("m00000", "inapp", "delivered"),
        ("m00000", "webhook", "delivered"),
        ("m00001", "inapp", "delivered"),
        ("m00002", "inapp", "delivered"),
        ("m00003", "inapp", "delivered"),
    ]
    assert receiver.per_member() == {"m00000": 1}
