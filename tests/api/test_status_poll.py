"""``GET /v1/notices/{id}`` without ``?unit=``, the status poll: on the API's pool for status polls,
whose sessions plan the poll's statement once (db/visibility.py STATUS_SESSION) and reach every
row by key, for an admin and for a unit-bound caller alike."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.api.keys import DEPS
from notifier.db.visibility import VISIBLE_TO_ADMIN_WITH_COUNTS, VISIBLE_WITH_COUNTS
from tests.api.conftest import Org
from tests.api.test_scoping import _active, _notice_by
from tests.helpers import get


async def test_the_status_poll_is_planned_once_per_session_and_reaches_rows_by_key(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await _active(client, nid)
    for _ in range(3):
        whole = await get(client, f"/v1/notices/{nid}")
        mine = await get(client, f"/v1/notices/{nid}", token=org.b1_service)
    recipients = await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1::uuid", nid)
    assert whole["counts"]["recipients"] == mine["counts"]["recipients"] == recipients > 0
    pool = client.app[DEPS].status_pool
    conns = [await pool.acquire() for _ in range(pool.get_size())]  # every session it opened
    try:
        args = {VISIBLE_TO_ADMIN_WITH_COUNTS: f"'{nid}'", VISIBLE_WITH_COUNTS: f"'{nid}', 'b1'"}
        plans = {statement: [0, 0] for statement in args}
        for conn in conns:
            for row in await conn.fetch(
                "SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement = ANY($1::text[])",
                list(plans),
            ):
                plans[row["statement"]][0] += row["generic_plans"]
                plans[row["statement"]][1] += row["custom_plans"]
                # The plan kept: by key, whatever the tables' size when it was made.
                explained = await conn.fetch(f"EXPLAIN EXECUTE {row['name']}({args[row['statement']]})")
                plan = "\n".join(r[0] for r in explained)
                assert "Seq Scan" not in plan and "Index" in plan, plan
        # Three polls each (and the waits for active, the admin's): planned once, then reused.
        assert plans[VISIBLE_WITH_COUNTS][0] >= 3 and plans[VISIBLE_WITH_COUNTS][1] == 0
        assert plans[VISIBLE_TO_ADMIN_WITH_COUNTS][0] >= 3 and plans[VISIBLE_TO_ADMIN_WITH_COUNTS][1] == 0
    finally:
        for conn in conns:
            await pool.release(conn)
