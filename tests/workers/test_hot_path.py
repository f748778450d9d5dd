"""The delivery write-back finds its rows by key, whatever the planner's statistics say.

A worker's write-backs -- the statements and everything their triggers run -- may not scan all
of ``recipients`` or ``deliveries`` (pg_stat_xact_user_tables counts every sequential scan of
the transaction). Such scans made each 500-row batch cost in proportion to the whole table (a
cached generic plan, and joins against the batch's arrays planned as hashed sequential scans).
The batches run on a worker session (``WORKER_SESSION``) after an ANALYZE, and more than five
times, so cached generic plans would be in use."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg

from benchmarks.fanout.org import create_org
from notifier.channels.base import Outcome
from notifier.db import deliveries, notices, reports
from notifier.db import fanout as fanout_db
from notifier.db.deliveries import Released, Written
from notifier.db.pool import WORKER_SESSION, Connection, create_pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from tests.workers.test_delivery_layer import ScriptedChannel, make_members, make_notice, states

MEMBERS = 6000
BATCH = 100


async def _seq_scans(conn: Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE relname IN ('recipients', 'deliveries')"
    )
    return {r["relname"]: int(r["seq_scan"]) for r in rows}


async def test_the_write_back_never_scans_the_whole_tables(
    db: asyncpg.Connection, settings: Settings
) -> None:
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "hp", MEMBERS, "http://127.0.0.1:9/hook")

        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            ids = []
            for _ in range(2):  # an older notice: the tables hold more than this notice's rows
                row = await notices.insert(
                    conn,
                    kind="ding",
                    title="t",
                    body="b",
                    audience={"units": [root]},
                    channels=["webhook"],
                    scope_unit_id=None,
                    created_by=None,
                )
                ids.append(str(row["id"]))
                async with conn.transaction():
                    got = await fanout_db.fanout_chunk(
                        conn, ids[-1], [root], [], None, MEMBERS, ["webhook"], [True], [False]
                    )
                assert got["n"] == MEMBERS

            await conn.execute("VACUUM (ANALYZE) deliveries, recipients")
            written = 0
            scans = {"recipients": 0, "deliveries": 0}
            # One transaction around the batches (each write-back in its savepoint, as in the
            # worker's own transaction), so that pg_stat_xact_user_tables counts every scan.
            async with conn.transaction():
                for _ in range(8):
                    rows = await conn.fetch(deliveries.CLAIM, ids[-1], "webhook", BATCH, 60.0, 0)
                    claimed = [(int(r["id"]), int(r["attempts"])) for r in rows]
                    assert len(claimed) == BATCH
                    before = await _seq_scans(conn)
                    async with conn.transaction():
                        changed = await deliveries.record(
                            conn,
                            [Written(i, attempt, "delivered", None, 0.0, None) for i, attempt in claimed],
                        )
                        await reports.take_pending(conn, "webhook", [])
                    after = await _seq_scans(conn)
                    for table in scans:
                        scans[table] += after[table] - before[table]
                    written += len(changed)
            assert written == 8 * BATCH
            # The counters moved with the rows (the triggers ran), by primary key.
            counts = await conn.fetchrow(
                "SELECT sum(delivered) AS delivered, sum(queued) AS queued FROM notice_counts "
                "WHERE notice_id = $1",
                ids[-1],
            )
            assert counts is not None and counts["delivered"] == written
            assert counts["queued"] == MEMBERS - written
            assert scans == {"recipients": 0, "deliveries": 0}
    finally:
        await pool.close()


async def fanned_out_notice(
    conn: Connection, root: str, channels: list[str], needs_contact: list[bool], members: int = MEMBERS
) -> str:
    """A DING to ``root``'s ``members`` members on ``channels``, fanned out in one chunk."""
    row = await notices.insert(
        conn,
        kind="ding",
        title="t",
        body="b",
        audience={"units": [root]},
        channels=channels,
        scope_unit_id=None,
        created_by=None,
    )
    notice_id = str(row["id"])
    on_insert = [c == "inapp" for c in channels]
    async with conn.transaction():
        got = await fanout_db.fanout_chunk(
            conn, notice_id, [root], [], None, members, channels, needs_contact, on_insert
        )
    assert got["n"] == members
    return notice_id


async def test_the_claim_finds_its_rows_by_key_among_many_finished_ones(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """A claim on a table holding many finished deliveries (older notices, delivered) reads only
    the batch: joined to its CTE alone, the claimed rows were found again through a hash join over
    a sequential scan of all of ``deliveries`` (EXPLAIN showed it from ~10,000 rows on)."""
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "cl", MEMBERS, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            old = await fanned_out_notice(conn, root, ["webhook"], [True])
            await conn.execute(
                "UPDATE deliveries SET state = 'delivered', attempts = 1 WHERE notice_id = $1", old
            )
            new = await fanned_out_notice(conn, root, ["webhook"], [True])
            await conn.execute("VACUUM (ANALYZE) deliveries, recipients")
            plan = await conn.fetchval(
                "EXPLAIN (FORMAT JSON) " + deliveries.CLAIM, new, "webhook", BATCH, 60.0, 0
            )
            assert '"Seq Scan"' not in plan, plan
            claimed = 0
            async with conn.transaction():
                before = await _seq_scans(conn)
                for _ in range(16):
                    claimed += len(await conn.fetch(deliveries.CLAIM, new, "webhook", BATCH, 60.0, 0))
                after = await _seq_scans(conn)
            assert claimed == 16 * BATCH
            assert after["deliveries"] == before["deliveries"]
    finally:
        await pool.close()


async def test_a_write_back_that_only_rises_keeps_better_statuses_and_the_counters(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """Write-backs that raise recipients and one that lowers one: a webhook delivery reaching
    'sent' for a member already delivered in the app leaves them delivered; reaching 'delivered'
    for one whose app delivery failed moves them; a batch with one failure recomputes. The
    counters equal the rows after each."""
    from tests.workers.test_counters import unit_violations, violations

    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "rb", 40, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            row = await notices.insert(
                conn,
                kind="ding",
                title="t",
                body="b",
                audience={"units": [root]},
                channels=["inapp", "webhook"],
                scope_unit_id=None,
                created_by=None,
            )
            notice_id = str(row["id"])
            async with conn.transaction():
                await fanout_db.fanout_chunk(
                    conn, notice_id, [root], [], None, 40, ["inapp", "webhook"], [False, True], [True, False]
                )
            # Half the members' app deliveries failed (as if the inbox refused them): they are
            # only 'queued' by their webhook delivery now.
            await conn.execute(
                "UPDATE deliveries SET state = 'failed' WHERE notice_id = $1 AND channel = 'inapp' "
                "AND member_id IN (SELECT member_id FROM deliveries WHERE notice_id = $1 "
                "AND channel = 'inapp' ORDER BY member_id LIMIT 20)",
                notice_id,
            )
            assert await violations(db) == []

            async def write(states: list[str]) -> None:
                rows = await conn.fetch(deliveries.CLAIM, notice_id, "webhook", len(states), 60.0, 0)
                assert len(rows) == len(states)
                ordered = sorted(rows, key=lambda r: r["member_id"])
                async with conn.transaction():
                    await deliveries.record(
                        conn,
                        [
                            Written(r["id"], r["attempts"], state, None, 0.0, None)
                            for r, state in zip(ordered, states, strict=True)
                        ],
                    )
                assert await violations(db) == []
                assert await unit_violations(db) == []

            await write(["sent"] * 10)  # failed in the app: queued -> sent
            await write(["delivered"] * 10)  # failed in the app: queued -> delivered
            await write(["sent"] * 10)  # delivered in the app already: stays delivered
            await write(["failed"] + ["delivered"] * 9)  # one falls: the recompute path
            statuses = {
                r["dstatus"]: r["n"]
                for r in await conn.fetch(
                    "SELECT dstatus, count(*) AS n FROM recipients WHERE notice_id = $1 GROUP BY 1",
                    notice_id,
                )
            }
            assert statuses == {"sent": 10, "delivered": 30}
    finally:
        await pool.close()


async def test_a_fan_out_chunk_never_scans_the_stored_recipients(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """A fan-out chunk's cost does not grow with the recipients of earlier notices: the deliveries
    insert trigger joined each chunk against all of ``recipients`` (two sequential scans per
    chunk), although the chunk had written its recipients' statuses itself. The setting that
    tells the trigger so lasts one statement: a delivery inserted later in the same transaction
    still raises its recipient."""
    from tests.workers.test_counters import violations

    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "fo", MEMBERS, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            await fanned_out_notice(conn, root, ["inapp"], [False])  # stored recipients of an older notice
            await conn.execute("VACUUM (ANALYZE) deliveries, recipients")
            row = await notices.insert(
                conn,
                kind="ding",
                title="t",
                body="b",
                audience={"units": [root]},
                channels=["webhook"],
                scope_unit_id=None,
                created_by=None,
            )
            notice_id = str(row["id"])
            async with conn.transaction():
                before = await _seq_scans(conn)
                got = await fanout_db.fanout_chunk(
                    conn, notice_id, [root], [], None, MEMBERS, ["webhook"], [True], [False]
                )
                after = await _seq_scans(conn)
                assert got["n"] == MEMBERS
                assert after["recipients"] == before["recipients"]
                # Later in the transaction: an in-app delivery for one member raises them.
                await conn.execute(
                    "INSERT INTO deliveries (notice_id, member_id, channel, state, attempts) "
                    "SELECT $1, member_id, 'inapp', 'delivered', 1 FROM recipients "
                    "WHERE notice_id = $1 ORDER BY member_id LIMIT 1",
                    notice_id,
                )
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM recipients WHERE notice_id = $1 AND dstatus = 'delivered'",
                    notice_id,
                )
                == 1
            )
            assert await violations(db) == []
    finally:
        await pool.close()


async def test_a_job_claims_above_its_last_batch_then_looks_behind_it(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    """A draining job claims above the last id it claimed (its scan does not step over every row
    claimed before); when nothing is left above, it looks from the start again, so a row behind
    the cursor -- here the first row, retried -- is still sent, exactly once more."""
    deps, channel = env
    deps = WorkerDeps(
        deps.settings.model_copy(update={"delivery_batch_size": 10, "delivery_idle_wait_seconds": 2.0}),
        deps.pool,
        deps.queue,
        deps.channels,
    )
    await make_members(db, 30)
    channel.script = [Outcome.RETRY]  # the first send of the first batch: back to the queue
    nid = await make_notice(deps, db, ["scripted"])
    ids = [
        int(r["id"])
        for r in await db.fetch("SELECT id FROM deliveries WHERE notice_id = $1 ORDER BY id", nid)
    ]
    above = await deliveries.claim(deps.pool, nid, "scripted", 100, 60.0, ids[19])
    assert sorted(c.id for c in above) == ids[20:]
    await deliveries.release(deps.pool, [Released(c.id, c.attempt, "retry", 0.0) for c in above])

    assert await deliver_notice_channel(deps, nid, "scripted") == 31
    assert await states(db, nid) == Counter({"sent": 30})
    sends = Counter(item.delivery_id for item in channel.sent)
    assert sends == Counter({**dict.fromkeys(ids, 1), ids[0]: 2})


async def _two_channel_notice(conn: Connection, root: str, n: int) -> str:
    """A notice on webhook and push (push needs no contact here), every delivery queued."""
    row = await notices.insert(
        conn,
        kind="ding",
        title="t",
        body="b",
        audience={"units": [root]},
        channels=["webhook", "push"],
        scope_unit_id=None,
        created_by=None,
    )
    notice_id = str(row["id"])
    async with conn.transaction():
        got = await fanout_db.fanout_chunk(
            conn, notice_id, [root], [], None, n, ["webhook", "push"], [True, False], [False, False]
        )
    assert got["n"] == n
    return notice_id


async def test_a_batch_whose_recipients_all_rise_is_written_back_in_one_statement(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """A webhook batch written back as delivered moves its recipients and every counter in the
    write-back's own statement (schemas/0033): set_recipient_status, the per-recipient locking
    and second probe of the older trigger, is not called at all. A batch in which a recipient
    falls still takes that path."""
    from tests.workers.test_counters import violations

    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "os", 40, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            await conn.execute("SET track_functions = 'all'")
            notice_id = await _two_channel_notice(conn, root, 40)

            async def calls(states: list[str]) -> int:
                rows = await conn.fetch(deliveries.CLAIM, notice_id, "webhook", len(states), 60.0, 0)
                assert len(rows) == len(states)
                async with conn.transaction():
                    await deliveries.record(
                        conn,
                        [
                            Written(r["id"], r["attempts"], state, None, 0.0, None)
                            for r, state in zip(rows, states, strict=True)
                        ],
                    )
                    n = await conn.fetchval(
                        "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions "
                        "WHERE funcname = 'set_recipient_status'"
                    )
                assert await violations(db) == []
                return int(n)

            assert await calls(["delivered"] * 20) == 0
            assert await calls(["failed"] + ["delivered"] * 19) == 1
            delivered = await conn.fetchval(
                "SELECT sum(delivered) FROM notice_counts WHERE notice_id = $1", notice_id
            )
            assert delivered == 39
    finally:
        await pool.close()


async def test_a_recipient_moved_by_another_transaction_during_the_write_back_is_counted_once(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """While a push batch's write-back (queued -> sent) holds its recipients, a webhook batch is
    written back as delivered for the same members: its statement read them as 'queued', waits,
    and finds them 'sent' once the push batch commits. Those recipients are moved from 'sent'
    (not from 'queued' a second time): every counter equals the rows, nothing deadlocks."""
    from tests.workers.test_counters import violations

    members = 30
    pool = await create_pool(settings, min_size=2, max_size=3, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "cc", members, "http://127.0.0.1:9/hook")
        async with pool.acquire() as a, pool.acquire() as b:
            notice_id = await _two_channel_notice(a, root, members)
            pushed = await a.fetch(deliveries.CLAIM, notice_id, "push", members, 60.0, 0)
            hooked = await b.fetch(deliveries.CLAIM, notice_id, "webhook", members, 60.0, 0)
            assert len(pushed) == len(hooked) == members
            tx = a.transaction()
            await tx.start()
            await deliveries.record(
                a, [Written(r["id"], r["attempts"], "sent", None, 0.0, None) for r in pushed]
            )

            async def webhook_write_back() -> None:
                async with b.transaction():
                    await deliveries.record(
                        b, [Written(r["id"], r["attempts"], "delivered", None, 0.0, None) for r in hooked]
                    )

            waiting = asyncio.create_task(webhook_write_back())
            b_pid = b.get_server_pid()
            for _ in range(200):  # until the webhook write-back waits for the push batch's locks
                if await db.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", b_pid
                ):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the webhook write-back never waited for the push batch")
            await tx.commit()
            await asyncio.wait_for(waiting, 30)
        assert await violations(db) == []
        counts = await db.fetchrow(
            "SELECT sum(queued) AS queued, sum(sent) AS sent, sum(delivered) AS delivered "
            "FROM notice_counts WHERE notice_id = $1",
            notice_id,
        )
        assert counts is not None
        assert dict(counts) == {"queued": 0, "sent": 0, "delivered": members}
    finally:
        await pool.close()


async def test_the_delivery_triggers_keep_their_plans_on_a_worker_session(db: asyncpg.Connection) -> None:
    """The worker sessions plan every statement anew (``WORKER_SESSION``: force_custom_plan); the
    triggers every claim and write-back fires take no parameters, so they carry plan_cache_mode
    = auto and plan each statement once per connection (schemas/0033)."""
    rows = await db.fetch(
        "SELECT proname, proconfig FROM pg_proc WHERE proname = ANY($1::text[])",
        ["recipients_follow_updated_deliveries", "dingtalk_read_polls_start", "dingtalk_dings_start"],
    )
    assert {r["proname"]: r["proconfig"] for r in rows} == {
        "recipients_follow_updated_deliveries": ["plan_cache_mode=auto"],
        "dingtalk_read_polls_start": ["plan_cache_mode=auto"],
        "dingtalk_dings_start": ["plan_cache_mode=auto"],
    }
