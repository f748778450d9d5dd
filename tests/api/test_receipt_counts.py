"""A single read receipt counts its read where the batch's does: the notice's counters, each
unit's (with its time-to-read bucket) and the units' report slots, which the single receipt moves
itself (record_receipts, schemas/0036: the slots' triggers stand aside for it), admin, unit key
and member key alike, a repeat counted once."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.conftest import Org
from tests.api.test_scoping import _active, _notice_by
from tests.conftest import advance_clock
from tests.helpers import post
from tests.workers.test_counters import violations


async def test_single_receipts_move_the_counters_and_report_slots_as_the_rows_say(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    other = await _notice_by(client, None, {"units": ["c"]})
    for n in (nid, other):
        await _active(client, n)
    url = f"/v1/notices/{nid}/receipts"
    await post(client, url, {"member_id": "m1a", "type": "read"}, status=200)  # admin
    await advance_clock(db, 7 * 60)  # a later bucket
    await post(client, url, {"member_id": "m1b", "type": "read"}, token=org.b1_service, status=200)
    again = await post(client, url, {"member_id": "m1b", "type": "read"}, token=org.b1_service, status=200)
    assert again["recorded"] is False
    await post(client, f"/v1/notices/{other}/receipts", {"type": "read"}, token=org.m2a_member, status=200)
    await post(client, f"/v1/notices/{other}/receipts", {"member_id": "m1a", "type": "read"}, status=200)
    # each read in its group, branch and committee
    assert await db.fetchval("SELECT sum(read)::int FROM unit_report_slots") == 4 * 3
    assert await violations(db) == []
