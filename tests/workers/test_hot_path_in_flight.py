"""A webhook delivery's two updates cost what one batch costs, whatever else is in flight
(schemas/0041, db/deliveries.py IN_FLIGHT).

The statements that name claimed rows (write-back, release, renewal) find them by primary key:
planned through the partial index of leased rows, each hashed every row in flight -- of every
batch of every worker -- and the index's dead entries. And a write-back updates each of its
recipients once. Both are properties of the plan and of the statements, checked as such (no
timing)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg

from benchmarks.fanout.org import create_org
from notifier.db import deliveries, notices
from notifier.db import fanout as fanout_db
from notifier.db.deliveries import Written
from notifier.db.pool import WORKER_SESSION, Connection, create_pool
from notifier.settings import Settings
from tests.workers.test_hot_path import fanned_out_notice

MEMBERS = 3000
BATCH = 200


async def notice_to_all(conn: Connection, root: str) -> str:
    """A webhook DING to the organisation's MEMBERS members, fanned out."""
    return await fanned_out_notice(conn, root, ["webhook"], [True], MEMBERS)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def test_the_statements_naming_claimed_rows_read_only_their_batch(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """Statistics taken while nothing was in flight (the planner then thinks the leased index
    holds no row), then many batches claimed: writing one back, releasing one, renewing one reads
    that batch by primary key -- not the leased index, not a sequential scan -- and the rows the
    plan reads from ``deliveries`` are the batch's."""
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "if", MEMBERS, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            notice_id = await notice_to_all(conn, root)
            await conn.execute("VACUUM (ANALYZE) deliveries, recipients")
            batches = [
                await conn.fetch(deliveries.CLAIM, notice_id, "webhook", BATCH, 60.0, 0) for _ in range(10)
            ]
            assert all(len(b) == BATCH for b in batches)
            ids = [int(r["id"]) for r in batches[3]]
            attempts = [int(r["attempts"]) for r in batches[3]]
            statements = {
                "write-back": (
                    deliveries.RECORD,
                    (ids, attempts, ["delivered"] * BATCH, [None] * BATCH, [0.0] * BATCH, [None] * BATCH),
                ),
                "release": (deliveries.RELEASE, (ids, attempts, ["throttled"] * BATCH, [1.0] * BATCH)),
                "renewal": (deliveries.RENEW, (ids, attempts, 60.0)),
            }
            for name, (sql, args) in statements.items():
                tx = conn.transaction()
                await tx.start()
                try:
                    plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
                finally:
                    await tx.rollback()
                scans = [
                    n
                    for n in _nodes(plan[0]["Plan"])
                    if n.get("Relation Name") == "deliveries" and "Scan" in n["Node Type"]
                ]
                assert scans, (name, json.dumps(plan))
                for scan in scans:
                    assert scan.get("Index Name") == "deliveries_pkey", (name, json.dumps(plan))
                    assert scan["Actual Rows"] * scan["Actual Loops"] <= BATCH, (name, json.dumps(plan))
            # Nothing was written: every batch is still in flight, the counters untouched.
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state = 'sending'", notice_id
                )
                == 10 * BATCH
            )
    finally:
        await pool.close()


async def test_a_write_back_updates_each_recipient_once_and_moves_the_counters(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """Batches written back as delivered update each of their recipients once
    (pg_stat_xact_user_tables, this transaction's own counts), and the counters move with them."""
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "ho", MEMBERS, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            notice_id = await notice_to_all(conn, root)
            written = 0
            async with conn.transaction():
                for _ in range(3):
                    rows = await conn.fetch(deliveries.CLAIM, notice_id, "webhook", BATCH, 60.0, 0)
                    changed = await deliveries.record(
                        conn, [Written(r["id"], r["attempts"], "delivered", None, 0.0, None) for r in rows]
                    )
                    written += len(changed)
                stats = await conn.fetchrow(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                    "WHERE relname = 'recipients'"
                )
            assert written == 3 * BATCH
            assert stats is not None
            assert stats["n_tup_upd"] == written
            counts = await conn.fetchrow(
                "SELECT sum(delivered) AS delivered, sum(queued) AS queued FROM notice_counts "
                "WHERE notice_id = $1",
                notice_id,
            )
            assert counts is not None
            assert (counts["delivered"], counts["queued"]) == (written, MEMBERS - written)
    finally:
        await pool.close()


async def test_the_reconcilers_sweep_reads_only_where_moot_rows_can_be(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """While a large first send is queued (every row step 0, none held), the reconciler's sweep
    for moot rows (CANCEL_MOOT_QUEUED) reads none of its rows: it looks through the partial
    indexes of queued reminders and held rows, and at the queued rows of recalled notices. With
    the three places in one OR no index could serve it: it read every queued row (a sequential
    scan of all of ``deliveries`` on a large table), every sweep. The planner is told that a
    sequential scan is dear, as it is on a table of millions of rows. Reminders and held rows of a
    member who has read, and the rows of a recalled notice, are still cancelled."""
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "sw", MEMBERS, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            big = await notice_to_all(conn, root)
            members = [f"sw-m{i:07d}" for i in range(5)]
            row = await notices.insert(
                conn,
                kind="ding",
                title="t",
                body="b",
                audience={"members": members},
                channels=["webhook"],
                scope_unit_id=None,
                created_by=None,
            )
            recalled = str(row["id"])
            async with conn.transaction():
                await fanout_db.fanout_chunk(
                    conn, recalled, [], members, None, 100, ["webhook"], [True], [False]
                )
            # A held row and a reminder of members who have read; a recalled notice.
            await conn.execute(
                "UPDATE deliveries SET wait_reason = 'quiet_hours' WHERE notice_id = $1 AND member_id = $2",
                big,
                members[0],
            )
            await conn.execute(
                "INSERT INTO deliveries (notice_id, member_id, channel, step, state) "
                "VALUES ($1, $2, 'webhook', 1, 'queued')",
                big,
                members[1],
            )
            await conn.execute(
                "UPDATE recipients SET read_at = notifier_now() WHERE notice_id = $1 AND member_id = ANY($2)",
                big,
                members[:2],
            )
            await conn.execute("UPDATE notices SET state = 'recalled' WHERE id = $1", recalled)
            await conn.execute("VACUUM (ANALYZE) deliveries, recipients, notices")
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute("SET LOCAL enable_seqscan = off")
                plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + deliveries.CANCEL_MOOT_QUEUED)
            finally:
                await tx.rollback()
            read = sum(  # the rows each scan of deliveries returned and the rows it filtered out
                (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
                for n in _nodes(plan[0]["Plan"])
                if n.get("Relation Name") == "deliveries" and "Scan" in n["Node Type"]
            )
            # The moot rows (2 + 5), each found in its place and once more by key.
            assert read <= 2 * (2 + len(members)), json.dumps(plan)
            cancelled = await deliveries.cancel_moot(conn)
            assert Counter(str(r["notice_id"]) for r in cancelled) == {big: 2, recalled: len(members)}
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state = 'queued'", big
                )
                == MEMBERS - 1
            )
    finally:
        await pool.close()
