"""A single read receipt cancels what the read makes moot (the member's queued reminders and
held rows; schemas/0031 cancel_moot_deliveries) and leaves the rest, admin or unit key alike."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.conftest import Org
from tests.api.test_scoping import _active, _notice_by
from tests.helpers import post
from tests.workers.test_counters import violations


async def _states(db: asyncpg.Connection, nid: str, member: str) -> list[str]:
    rows = await db.fetch(
        "SELECT channel || ':' || step || ':' || state AS s FROM deliveries"
        " WHERE notice_id = $1::uuid AND member_id = $2 AND channel <> 'inapp' ORDER BY channel, step",
        nid,
        member,
    )
    return [r["s"] for r in rows]


async def test_a_single_receipt_cancels_the_readers_reminder_and_held_rows_only(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await _active(client, nid)
    for member in ("m1a", "m1b"):  # a reminder and a held row waiting, one sent
        await db.execute(
            "INSERT INTO deliveries (notice_id, member_id, channel, state, step, wait_reason) VALUES"
            " ($1::uuid, $2, 'email', 'queued', 1, NULL), ($1::uuid, $2, 'sms', 'queued', 0, 'quiet_hours'),"
            " ($1::uuid, $2, 'sms', 'sent', 1, NULL)",
            nid,
            member,
        )
    moot, left = (
        ["email:1:cancelled", "sms:0:cancelled", "sms:1:sent"],
        ["email:1:queued", "sms:0:queued", "sms:1:sent"],
    )
    url = f"/v1/notices/{nid}/receipts"
    out = await post(client, url, {"member_id": "m1b", "type": "read"}, token=org.b1_service, status=200)
    assert out["recorded"] is True
    assert (await _states(db, nid, "m1b"), await _states(db, nid, "m1a")) == (moot, left)
    out = await post(client, url, {"member_id": "m1a", "type": "read"}, status=200)  # an admin's
    assert out["recorded"] is True
    assert await _states(db, nid, "m1a") == moot


async def test_a_single_receipt_whose_moot_rows_move_the_recipient_counts_it_once(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    # Each member's inbox row failed and a reminder waits: the recipient is 'queued' for the
    # reminder alone, and the read's cancel moves it to 'failed' -- the deliveries trigger moves
    # the same counter rows the read's counting does, in the same statement.
    nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await _active(client, nid)
    members = ("m1a", "m1b")
    for member in members:
        await db.execute(
            "UPDATE deliveries SET state = 'failed' WHERE notice_id = $1::uuid AND member_id = $2",
            nid,
            member,
        )
        await db.execute(
            "INSERT INTO deliveries (notice_id, member_id, channel, state, step)"
            " VALUES ($1::uuid, $2, 'email', 'queued', 1)",
            nid,
            member,
        )
    status = (
        "SELECT dstatus, read_at IS NOT NULL AS read FROM recipients"
        " WHERE notice_id = $1::uuid AND member_id = $2"
    )
    for member in members:
        assert tuple(await db.fetchrow(status, nid, member) or ()) == ("queued", False)
    url = f"/v1/notices/{nid}/receipts"
    out = await post(client, url, {"member_id": "m1b", "type": "read"}, token=org.b1_service, status=200)
    assert out["recorded"] is True
    out = await post(client, url, {"member_id": "m1a", "type": "read"}, status=200)  # an admin's
    assert out["recorded"] is True
    for member in members:
        assert await _states(db, nid, member) == ["email:1:cancelled"]
        assert tuple(await db.fetchrow(status, nid, member) or ()) == ("failed", True)
    assert await violations(db) == []
