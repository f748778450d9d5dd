"""The read receipt statements find the deliveries a read makes moot by index however much the
table grew since the API's connection prepared them. The API planned them once (a generic plan,
cached on the connection) while ``deliveries`` was empty, and kept that plan while a 20,000-member
fan-out filled it: a nested loop over sequential scans of ``deliveries`` that held each receipt
on CPU for up to 60 s (then a 503) (benchmarks/scale.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.api.keys import DEPS
from notifier.db.deliveries import MOOT_AFTER_READ
from notifier.db.pool import API_SESSION
from notifier.db.receipts import MARK_READ, MARK_READ_ANSWER, RECORD_WALKS
from notifier.settings import Settings

# One receipt through record_receipts (db/receipts.py RECORD_MANY, as the group commit's flush of one):
# $1 notice, $2 member, $3 via, $4 root, $5 member key, $6 lessons; no row: not found.
RECORD = (
    "SELECT * FROM record_receipts(ARRAY[$1::uuid], ARRAY[$2::text], $3, ARRAY[$4::text],"
    " ARRAY[$5::boolean], $6) WHERE id IS NOT NULL"
)


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


def _relations(node: dict[str, Any]) -> set[str]:
    """The relations this plan (node) reads or writes."""
    found = {node["Relation Name"]} if "Relation Name" in node else set()
    for child in node.get("Plans", []):
        found |= _relations(child)
    return found


def _nested_plans(messages: list[str]) -> list[dict[str, Any]]:
    """The plans auto_explain logged (format json), one per statement run."""
    plans = []
    for m in messages:
        if "{" in m:
            plans.append(json.loads(m[m.index("{") :])["Plan"])
    return plans


async def test_the_single_receipts_moot_deliveries_are_found_by_index_after_the_table_grew(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The single receipt (record_receipts, schemas/0036) cancels what its read makes moot in
    cancel_moot_deliveries (schemas/0031), whose plans a session makes once and keeps: made while
    ``deliveries`` was empty, they still reach a member's rows by index once it holds 20,000."""
    nid = str(uuid.uuid4())
    await db.execute("ANALYZE deliveries")
    api = await asyncpg.connect(settings.database_url, server_settings=API_SESSION)  # as the API's pool
    try:
        for _ in range(6):  # planned (and kept) while the table is empty
            assert await api.fetchval("SELECT cancel_moot_deliveries($1, 'm3', now())", nid) == 0
        await db.execute(
            "INSERT INTO deliveries (notice_id, member_id, channel, state, step, wait_reason)"
            " SELECT $1::uuid, 'm' || g, 'sms', 'queued', g % 2,"
            " CASE WHEN g % 3 = 0 THEN 'quiet_hours' END FROM generate_series(1, 20000) g",
            nid,
        )
        await db.execute(  # m3's reminder row, another one and a sent one the read leaves alone
            "INSERT INTO deliveries (notice_id, member_id, channel, state, step)"
            " VALUES ($1, 'm3', 'sms', 'sent', 0), ($1, 'm3', 'email', 'queued', 1)",
            nid,
        )
        logged: list[str] = []
        api.add_log_listener(lambda _c, m: logged.append(m.message))
        await api.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_format = json;"
            " SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = log;"
            " SET client_min_messages = log"
        )
        assert await api.fetchval("SELECT cancel_moot_deliveries($1, 'm3', now())", nid) == 2
        await api.execute("RESET client_min_messages")
    finally:
        await api.close()
    plans = _nested_plans(logged)
    assert len(plans) >= 3, logged  # the check, the update, the call (and the triggers' statements)
    assert [_seq_scans(p).count("deliveries") for p in plans] == [0] * len(plans)
    assert await db.fetchval(
        "SELECT array_agg(state || ':' || step ORDER BY channel, step) FROM deliveries"
        " WHERE notice_id = $1 AND member_id = 'm3'",
        nid,
    ) == ["cancelled:1", "sent:0", "cancelled:1"]


async def test_cancel_moot_deliveries_holds_the_rule_of_moot_after_read(db: asyncpg.Connection) -> None:
    source = await db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'cancel_moot_deliveries'")
    assert source.count(MOOT_AFTER_READ.format(d="m")) == 2


async def test_the_single_receipts_statements_are_planned_once_and_by_index_after_the_tables_grew(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The single receipt's statements (RECORD: record_receipts, schemas/0036) are planned once per
    session (generic plans: the parameters are not in them) and kept; made while every table it
    reads was nearly empty, they still reach rows by index once ``recipients``, ``deliveries``,
    ``members`` and ``member_units`` hold 20,000 rows each (no ANALYZE since)."""
    nid = str(uuid.uuid4())
    await db.execute("INSERT INTO units (id, name, parent_id) VALUES ('r', 'R', NULL), ('b', 'B', 'r')")
    await db.execute("INSERT INTO members (id, name) SELECT 'm' || g, 'M' FROM generate_series(1, 3) g")
    await db.execute(
        "INSERT INTO member_units (member_id, unit_id) SELECT 'm' || g, 'b' FROM generate_series(1, 3) g"
    )
    await db.execute(
        "INSERT INTO notices (id, kind, title, body, audience, channels, scope_unit_id, state)"
        " VALUES ($1, 'notice', 'T', 'B', '{}', '{in_app}', 'b', 'active')",
        nid,
    )
    await db.execute(
        "INSERT INTO recipients (notice_id, member_id, dstatus, units, direct_units)"
        " SELECT $1, 'm' || g, 'queued', '{b,r}', '{b}' FROM generate_series(1, 3) g",
        nid,
    )
    await db.execute("ANALYZE")  # their statistics: (nearly) empty
    calls = [("m1", None), ("m1", None), ("m2", "b"), ("m2", "r"), ("m9", "b"), ("m9", None)]
    api = await asyncpg.connect(settings.database_url, server_settings=API_SESSION)  # as the API's pool
    try:
        for mid, root in calls:  # every path, planned (and kept) while the tables are small
            await api.fetchrow(RECORD, nid, mid, "api", root, False, False)
        await db.execute(
            "INSERT INTO members (id, name) SELECT 'x' || g, 'X' FROM generate_series(1, 20000) g;"
            " INSERT INTO member_units (member_id, unit_id)"
            " SELECT 'x' || g, 'b' FROM generate_series(1, 20000) g"
        )
        await db.execute(
            "INSERT INTO recipients (notice_id, member_id, dstatus, units, direct_units)"
            " SELECT $1, 'x' || g, 'queued', '{b,r}', '{b}' FROM generate_series(1, 20000) g",
            nid,
        )
        await db.execute(
            "INSERT INTO deliveries (notice_id, member_id, channel, state, step, wait_reason)"
            " SELECT $1::uuid, 'x' || g, 'sms', 'queued', g % 2,"
            " CASE WHEN g % 3 = 0 THEN 'quiet_hours' END FROM generate_series(1, 20000) g",
            nid,
        )
        logged: list[str] = []
        api.add_log_listener(lambda _c, m: logged.append(m.message))
        await api.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_format = json;"
            " SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = log;"
            " SET client_min_messages = log"
        )
        answers: list[Any] = [  # a unit key's read with a reminder to cancel, an admin's, one already read
            await api.fetchrow(RECORD, nid, mid, "api", root, False, False)
            for mid, root in [("x3", "r"), ("x4", None), ("m1", None)]
        ]
        await api.execute("RESET client_min_messages")
    finally:
        await api.close()
    assert [(a["member_ok"], a["recipient"], a["recorded"], a["cancelled"]) for a in answers] == [
        (True, True, True, 1),
        (True, True, True, 0),
        (True, True, False, None),
    ]
    plans = _nested_plans(logged)
    assert len(plans) >= 10, logged  # the function's statements (and its triggers'), and the calls
    # by index (engine_clock: notifier_now()'s one row)
    assert {t for p in plans for t in _seq_scans(p)} <= {"engine_clock"}
    # generic: the parameters are not in the plans of its statements (a custom plan has them as
    # constants); the foreign keys' checks of notices (the server's own) are planned as it likes
    custom = [p for p in plans if any(f"'{v}'" in json.dumps(p) for v in (nid, "x3", "x4"))]
    assert [sorted(_relations(p)) for p in custom if _relations(p) != {"notices"}] == []
    assert {r for p in plans for r in _relations(p)} >= {"recipients", "deliveries", "member_units", "units"}


async def test_record_receipts_walks_the_tree_as_units_py_does(db: asyncpg.Connection) -> None:
    source = await db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'record_receipts'")
    assert [source.count(walk) for walk in RECORD_WALKS] == [1, 1]
