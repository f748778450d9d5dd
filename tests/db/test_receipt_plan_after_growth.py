"""The read receipt statements find the deliveries a read makes moot by index however much the
table grew since the API's connection prepared them. The API planned them once (a generic plan,
cached on the connection) while ``deliveries`` was empty, and kept that plan while a 20,000-member
fan-out filled it: a nested loop over sequential scans of ``deliveries`` that held each receipt
on CPU for up to 60 s (then a 503) (benchmarks/scale.py)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.api.keys import DEPS
from notifier.db.receipts import MARK_READ, MARK_READ_ANSWER, RECORD, RECORD_IN_UNIT


def _seq_scans(node: dict[str, Any]) -> list[str]:
    """The relations this plan (node) reads by sequential scan."""
    found = [node["Relation Name"]] if node["Node Type"] == "Seq Scan" else []
    for child in node.get("Plans", []):
        found += _seq_scans(child)
    return found


async def test_receipt_statements_reach_deliveries_by_index_after_the_table_grew(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    nid = str(uuid.uuid4())
    many = f"(ARRAY['{nid}'::uuid], ARRAY['m1'], 'api', ARRAY[NULL::timestamptz])"
    statements = {
        "mark_read": ("(uuid[], text[], text, timestamptz[])", MARK_READ, many),
        "mark_read_answer": ("(uuid[], text[], text, timestamptz[])", MARK_READ_ANSWER, many),
        "record": (
            "(uuid, text, text, text, bool, bool)",
            RECORD,
            f"('{nid}', 'm1', 'api', NULL, false, false)",
        ),
        "record_in_unit": (
            "(uuid, text, text, text, bool, bool)",
            RECORD_IN_UNIT,
            f"('{nid}', 'm1', 'api', 'u1', false, false)",
        ),
    }
    await db.execute("ANALYZE deliveries")  # its statistics: empty (a fresh deployment)
    assert client.app is not None
    async with client.app[DEPS].pool.acquire() as api:  # a connection of the API's pool
        for name, (types, sql, args) in statements.items():
            await api.execute(f"PREPARE {name}{types} AS {sql}")
            for _ in range(6):  # past the executions after which a generic plan may be cached
                await api.execute(f"EXECUTE {name}{args}")
        # a fan-out grows the table (no ANALYZE in between): reminders, held rows and the rest
        await db.execute(
            "INSERT INTO deliveries (notice_id, member_id, channel, state, step, wait_reason)"
            " SELECT $1::uuid, 'm' || g, 'sms', 'queued', g % 2,"
            " CASE WHEN g % 3 = 0 THEN 'quiet_hours' END FROM generate_series(1, 20000) g",
            nid,
        )
        scanned = {}
        for name, (_types, _sql, args) in statements.items():
            # the plan this connection runs the statement with (json: decoded by the pool)
            [top] = await api.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}{args}")
            scanned[name] = _seq_scans(top["Plan"]).count("deliveries")
        for name in statements:
            await api.execute(f"DEALLOCATE {name}")
    assert scanned == dict.fromkeys(statements, 0)
