"""A big notice fans out in parts at once (schemas/0032, notifier/workers/fanout.py), and keeps
every guarantee of the serial fan-out: each member once, a crashed part resumes without double
rows, a recall racing the parts cancels everything, the notice goes 'active' and its escalation
starts exactly once (when the last part finishes), and every counter -- the notice's, the
units', the reach and the report slots' notices -- equals the rows, also when two parts count
at the same moment. Real PostgreSQL; the parts' interleaving is forced, not hoped for."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from notifier.db import fanout as fanout_db
from notifier.db import notices
from notifier.db import recall as recall_db
from notifier.db.pool import Connection
from notifier.domain.escalation import PolicyRules
from notifier.workers.context import WorkerDeps
from notifier.workers.fanout import fanout_notice
from tests.api.test_receipt_lock_order import PINNED, REAL
from tests.conftest import advance_clock, wait_until
from tests.workers.test_counters import violations
from tests.workers.test_delivery_layer import ScriptedChannel, make_members

MEMBERS = 640
CHUNK = 100  # the smallest chunk the settings allow: the first chunk, then parts of ~270 each


@pytest.fixture
async def parts_env(env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection) -> WorkerDeps:
    """A tree of units below 'u' (members in one or two of them), chunks of 100, two parts."""
    deps, _ = env
    await make_members(db, MEMBERS)
    await db.execute(
        "INSERT INTO units (id, name, parent_id) "
        "VALUES ('b1', 'B1', 'u'), ('b2', 'B2', 'u'), ('c1', 'C1', 'b1')"
    )
    await db.execute(
        "UPDATE member_units SET unit_id = (ARRAY['u', 'b1', 'b2', 'c1'])[1 + substr(member_id, 2)::int % 4]"
    )
    await db.execute(
        "INSERT INTO member_units (member_id, unit_id) SELECT id, 'b2' FROM members "
        "WHERE substr(id, 2)::int % 8 = 3"  # in c1 and in b2
    )
    # A unit the first chunk (m00000-m00099) does not reach, with members all along both parts'
    # ranges: each part's first recipients there may be the notice's first in it.
    await db.execute("INSERT INTO units (id, name, parent_id) VALUES ('d1', 'D1', 'b2')")
    spread = "substr({id}, 2)::int >= 100 AND substr({id}, 2)::int % 10 = 9"
    await db.execute("DELETE FROM member_units WHERE " + spread.format(id="member_id"))
    await db.execute("INSERT INTO member_units SELECT id, 'd1' FROM members WHERE " + spread.format(id="id"))
    tuned = deps.settings.model_copy(update={"fanout_chunk_size": CHUNK, "fanout_parts": 2})
    return WorkerDeps(tuned, deps.pool, deps.queue, deps.channels)


async def new_notice(
    db: asyncpg.Connection, escalation: dict[str, Any] | None = None, summary: bool = False
) -> str:
    """A DING to the whole tree; ``summary``: an escalation summary (about another notice)."""
    snapshot = (
        None if escalation is None else json.dumps(PolicyRules.model_validate(escalation).snapshot(None))
    )
    parent = None
    if summary:
        parent = await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels, state) "
            "VALUES ('ding', 'p', 'b', '{}', ARRAY['inapp'], 'active') RETURNING id"
        )
    return str(
        await db.fetchval(
            "INSERT INTO notices "
            "(kind, title, body, audience, channels, escalation, parent_notice_id, parent_step) "
            "VALUES ('ding', 't', 'b', '{\"units\": [\"u\"]}', ARRAY['inapp', 'scripted'], $1::jsonb, $2, "
            "CASE WHEN $2::uuid IS NOT NULL THEN 1 END) RETURNING id",
            snapshot,
            parent,
        )
    )


async def rows_per_member(db: asyncpg.Connection, nid: str) -> tuple[int, int, int]:
    """(recipients, distinct members with deliveries, deliveries)"""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM recipients WHERE notice_id = $1) AS r, "
        "count(DISTINCT member_id) AS m, count(*) AS d FROM deliveries WHERE notice_id = $1",
        nid,
    )
    assert row is not None
    return int(row["r"]), int(row["m"]), int(row["d"])


Hook = Callable[[int], Awaitable[None]]


def hook_advance_part(monkeypatch: pytest.MonkeyPatch, hook: Hook) -> None:
    """Run ``hook(call number)`` inside a part's transaction, after its chunk was counted."""
    original = fanout_db.advance_part
    calls = 0

    async def advance_part(
        conn: Connection, notice_id: str, part: int, cursor: str | None, done: bool
    ) -> int:
        nonlocal calls
        calls += 1
        await hook(calls)
        return await original(conn, notice_id, part, cursor, done)

    monkeypatch.setattr(fanout_db, "advance_part", advance_part)


async def waiting_on_lock(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
    )


@pytest.mark.parametrize("summary", [False, True], ids=["ding", "summary"])
async def test_two_parts_counting_at_once_keep_every_counter_equal_to_the_rows(
    parts_env: WorkerDeps, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, summary: bool
) -> None:
    """While the first part's chunk is counted (uncommitted), a second job fans out the other
    part: its chunk statement runs at once, its counting waits for the first part to commit, so
    the report slots count the notice once per unit (each part would otherwise find 'its'
    recipients the unit's first in d1). A summary reaches no unit, so no notice_reach insert
    makes the second part wait by chance. Escalation starts once, the notice goes 'active' once."""
    deps = parts_env
    nid = await new_notice(db, {"steps": [{"after": 600, "remind": ["scripted"]}], "repeat": 0}, summary)
    second: list[asyncio.Task[int]] = []
    reached = asyncio.Event()

    async def hook(call: int) -> None:
        if call == 1:  # the first part chunk: start the second job and let it run into us
            second.append(asyncio.create_task(fanout_notice(deps, nid)))
            for _ in range(500):
                if reached.is_set() or await waiting_on_lock(db):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the second job neither waited nor counted")
        else:
            reached.set()

    hook_advance_part(monkeypatch, hook)
    first = await fanout_notice(deps, nid)
    other = await second[0]
    assert first + other == MEMBERS
    assert other > 0  # the second job fanned out a part
    assert await rows_per_member(db, nid) == (MEMBERS, MEMBERS, 2 * MEMBERS)
    parts = await db.fetch(
        "SELECT part, parts, done FROM fanout_parts WHERE notice_id = $1 ORDER BY part", nid
    )
    assert [tuple(p) for p in parts] == [(0, 2, True), (1, 2, True)]
    notice = await db.fetchrow("SELECT state, fanned_out_at FROM notices WHERE id = $1", nid)
    assert notice is not None and notice["state"] == "active" and notice["fanned_out_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM escalations WHERE notice_id = $1", nid) == 1
    assert await violations(db) == []
    reach = await db.fetch("SELECT unit_id FROM notice_reach WHERE notice_id = $1 ORDER BY unit_id", nid)
    assert [r["unit_id"] for r in reach] == ([] if summary else ["b1", "b2", "c1", "d1", "u"])


async def test_a_notice_within_one_chunk_is_not_split(parts_env: WorkerDeps, db: asyncpg.Connection) -> None:
    deps = parts_env.settings.model_copy(update={"fanout_chunk_size": MEMBERS + 1})
    nid = await new_notice(db)
    assert (
        await fanout_notice(WorkerDeps(deps, parts_env.pool, parts_env.queue, parts_env.channels), nid)
        == MEMBERS
    )
    assert await db.fetchval("SELECT count(*) FROM fanout_parts") == 0
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "active"
    assert await violations(db) == []


async def test_a_part_that_crashes_mid_way_resumes_without_double_rows(
    parts_env: WorkerDeps, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part's chunk dies after its rows were written and counted (not committed): the job
    fails, the other part's work stays, and a re-run finishes every part once, counters right,
    escalation started once."""
    deps = parts_env
    nid = await new_notice(db, {"steps": [{"after": 600, "remind": ["scripted"]}], "repeat": 0})

    async def hook(call: int) -> None:
        if call == 3:
            raise ConnectionResetError("worker killed")

    hook_advance_part(monkeypatch, hook)
    with pytest.raises(ConnectionResetError):
        await fanout_notice(deps, nid)
    recipients, _, _ = await rows_per_member(db, nid)
    assert CHUNK < recipients < MEMBERS
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "fanning_out"
    assert await violations(db) == []
    monkeypatch.undo()
    assert await fanout_notice(deps, nid) == MEMBERS - recipients
    assert await fanout_notice(deps, nid) == 0  # and again: nothing left
    assert await rows_per_member(db, nid) == (MEMBERS, MEMBERS, 2 * MEMBERS)
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "active"
    assert await db.fetchval("SELECT count(*) FROM escalations WHERE notice_id = $1", nid) == 1
    assert await violations(db) == []


async def test_a_recall_during_the_parts_cancels_everything(
    parts_env: WorkerDeps, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recall issued while a part's chunk is uncommitted waits for it and cancels its
    deliveries too; no part adds a delivery after it, and the notice never goes 'active'."""
    deps = parts_env
    nid = await new_notice(db, {"steps": [{"after": 600, "remind": ["scripted"]}], "repeat": 0})
    recalling: list[asyncio.Task[list[str]]] = []

    async def recall() -> list[str]:
        async with deps.pool.acquire() as conn, conn.transaction():
            return await recall_db.recall(conn, nid, "test")

    async def hook(call: int) -> None:
        if call == 1:
            recalling.append(asyncio.create_task(recall()))
            for _ in range(500):
                if await waiting_on_lock(db):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the recall did not wait for the part's chunk")
            assert not recalling[0].done()

    hook_advance_part(monkeypatch, hook)
    await fanout_notice(deps, nid)
    assert await recalling[0] == [nid]
    assert await fanout_notice(deps, nid) == 0  # a later job finds the notice recalled
    recipients, _, _ = await rows_per_member(db, nid)
    assert CHUNK < recipients < MEMBERS  # the first part's chunk was written, nothing after the recall
    rows = await db.fetch(
        "SELECT state, count(*) AS n FROM deliveries "
        "WHERE notice_id = $1 AND channel = 'scripted' GROUP BY 1",
        nid,
    )
    states = {r["state"]: r["n"] for r in rows}
    assert states == {"cancelled": recipients}
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "recalled"
    assert await db.fetchval("SELECT count(*) FROM escalations WHERE notice_id = $1", nid) == 0
    assert await violations(db) == []


async def test_a_notice_whose_audience_exceeds_the_first_chunk_is_split_at_once(
    parts_env: WorkerDeps, db: asyncpg.Connection
) -> None:
    """Its membership rows counted (no sort of the audience) exceed the first chunk: no serial
    first chunk runs, the parts start from the first member; two jobs at once finish it."""
    settings = parts_env.settings.model_copy(update={"fanout_first_chunk_size": CHUNK})
    deps = WorkerDeps(settings, parts_env.pool, parts_env.queue, parts_env.channels)
    nid = await new_notice(db, {"steps": [{"after": 600, "remind": ["scripted"]}], "repeat": 0})
    got = await asyncio.gather(fanout_notice(deps, nid), fanout_notice(deps, nid))
    assert sum(got) == MEMBERS
    assert await rows_per_member(db, nid) == (MEMBERS, MEMBERS, 2 * MEMBERS)
    notice = await db.fetchrow("SELECT state, fanout_cursor FROM notices WHERE id = $1", nid)
    assert notice is not None and notice["state"] == "active" and notice["fanout_cursor"] is None
    parts = await db.fetch("SELECT part, done FROM fanout_parts WHERE notice_id = $1 ORDER BY part", nid)
    assert [tuple(p) for p in parts] == [(0, True), (1, True)]
    assert await db.fetchval("SELECT count(*) FROM escalations WHERE notice_id = $1", nid) == 1
    assert await violations(db) == []


async def test_parts_reach_named_members_in_other_units_and_in_none(
    parts_env: WorkerDeps, db: asyncpg.Connection
) -> None:
    """A part finds its audience in its range of memberships: members of the audience's subtree,
    and the named members -- also one whose units lie outside it, and ones in no unit at all
    (the last ids, in the last part's open range)."""
    settings = parts_env.settings.model_copy(update={"fanout_first_chunk_size": CHUNK})
    deps = WorkerDeps(settings, parts_env.pool, parts_env.queue, parts_env.channels)
    await db.execute("INSERT INTO members (id, name) VALUES ('z1', 'Z'), ('z2', 'Z')")
    named = ["m00002", "m00398", "z1", "z2"]  # in b2, in b2, in no unit
    nid = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels) "
            "VALUES ('ding', 't', 'b', jsonb_build_object('units', '[\"b1\"]'::jsonb, 'members', $1::jsonb), "
            "ARRAY['inapp']) RETURNING id",
            json.dumps(named),
        )
    )
    want = {
        r["member_id"]
        for r in await db.fetch("SELECT member_id FROM member_units WHERE unit_id IN ('b1', 'c1')")
    } | set(named)
    assert await fanout_notice(deps, nid) == len(want)
    # The parts span the audience's member ids (up to z2, its last), not an open range.
    parts = await db.fetch("SELECT upper FROM fanout_parts WHERE notice_id = $1 ORDER BY part", nid)
    assert len(parts) == 2 and parts[1]["upper"] == "z2"
    rows = await db.fetch("SELECT member_id FROM recipients WHERE notice_id = $1", nid)
    assert {r["member_id"] for r in rows} == want
    assert await violations(db) == []


async def test_a_notice_whose_parts_move_is_not_stalled(
    parts_env: WorkerDeps, db: asyncpg.Connection
) -> None:
    """The parts do not touch the notice row (they hold it FOR SHARE): the reconciler looks at
    their rows too before it wakes a fan-out again."""
    nid = await new_notice(db)
    await db.execute("UPDATE notices SET state = 'fanning_out' WHERE id = $1", nid)
    await advance_clock(db, 600)
    await db.execute(
        "INSERT INTO fanout_parts (notice_id, part, parts, cursor) "
        "VALUES ($1, 0, 2, ''), ($1, 1, 2, 'm00300')",
        nid,
    )
    assert await notices.stalled_fanouts(db, 60) == []
    await advance_clock(db, 600)
    assert await notices.stalled_fanouts(db, 60) == [nid]


async def test_an_audience_that_exactly_fills_the_first_chunk_is_not_split_over_the_organisation(
    parts_env: WorkerDeps, db: asyncpg.Connection
) -> None:
    """Not split at once (it fits the first chunk), yet the full first chunk cannot tell it was
    the last: the rest is split up to the audience's last member, so no parts walk the
    memberships of the whole organisation above it (here: none left, no parts at all)."""
    size = int(await db.fetchval("SELECT count(DISTINCT member_id) FROM member_units WHERE unit_id = 'c1'"))
    assert size >= 100 and await db.fetchval(
        "SELECT max(member_id) FROM member_units WHERE unit_id = 'c1'"
    ) < (await db.fetchval("SELECT max(member_id) FROM member_units"))
    settings = parts_env.settings.model_copy(
        update={"fanout_chunk_size": size, "fanout_first_chunk_size": size}
    )
    deps = WorkerDeps(settings, parts_env.pool, parts_env.queue, parts_env.channels)
    nid = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels) "
            "VALUES ('ding', 't', 'b', '{\"units\": [\"c1\"]}', ARRAY['inapp']) RETURNING id"
        )
    )
    assert await fanout_notice(deps, nid) == size
    assert await db.fetchval("SELECT count(*) FROM fanout_parts WHERE notice_id = $1", nid) == 0
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "active"
    assert (await rows_per_member(db, nid))[0] == size
    assert await violations(db) == []


async def test_a_chunks_counting_takes_the_units_counts_before_the_notices(
    parts_env: WorkerDeps, db: asyncpg.Connection, server_urls: tuple[str, str]
) -> None:
    """As the receipts do (tests/api/test_receipt_lock_order.py): a batch of reads holding a
    unit's counter row of the same shard makes the chunk's counting wait for it without the
    chunk holding the notice's counter row, so the batch then gets that one at once (in the
    reverse order the two deadlocked)."""
    settings = parts_env.settings.model_copy(update={"fanout_chunk_size": MEMBERS + 1})
    deps = WorkerDeps(settings, parts_env.pool, parts_env.queue, parts_env.channels)
    nid = await new_notice(db)
    # The two counter rows exist (zeros) so that the batch's updates take no lock on the notice
    # row (a new counter row's foreign key check would, and the claim would skip the notice).
    await db.execute(
        "INSERT INTO notice_unit_counts (notice_id, unit_id, direct, shard) VALUES ($1, 'u', false, 0)", nid
    )
    await db.execute("INSERT INTO notice_counts (notice_id, shard) VALUES ($1, 0)", nid)
    batch = await asyncpg.connect(server_urls[0])
    await db.execute(PINNED)
    try:
        tx = batch.transaction()
        await tx.start()
        await batch.execute("SET LOCAL lock_timeout = '300ms'")
        await batch.execute(
            "UPDATE notice_unit_counts SET read = read WHERE notice_id = $1 AND unit_id = 'u' AND NOT direct",
            nid,
        )
        fanned = asyncio.ensure_future(fanout_notice(deps, nid))

        async def blocked() -> bool:
            if fanned.done():
                raise AssertionError(f"the fan-out did not wait: {fanned.result()}")
            return await waiting_on_lock(db)

        await wait_until(blocked, within=10)
        await batch.execute("UPDATE notice_counts SET read = read WHERE notice_id = $1 AND shard = 0", nid)
        await tx.commit()
        assert await asyncio.wait_for(fanned, 10) == MEMBERS
    finally:
        await db.execute(REAL)
        await batch.close()
    assert await violations(db) == []


@pytest.mark.parametrize("in_part", [False, True], ids=["first-chunk", "part"])
async def test_a_chunk_over_rows_that_exist_skips_them_and_counts_only_the_new(
    parts_env: WorkerDeps, db: asyncpg.Connection, in_part: bool
) -> None:
    """The chunk statement inserts without ON CONFLICT (a per-row probe of the unique index, a
    tenth of its CPU) when its range holds no rows of the notice yet; a range fanned out in part
    already -- here: some of its members, then all of it again -- takes the variant that skips
    what exists: no error, each member once, the counters equal to the rows."""
    nid = await new_notice(db)
    ch = (["inapp", "scripted"], [False, False], [True, False])

    async def chunk(upper: str | None) -> int:
        async with db.transaction():
            got = await fanout_db.fanout_chunk(
                db,
                nid,
                ["u"],
                [],
                "" if in_part else None,
                MEMBERS if upper is None else 200,
                *ch,
                in_part=in_part,
                upper=upper,
            )
        return int(got["recipients"])

    assert await chunk("m00199") == 200
    assert await rows_per_member(db, nid) == (200, 200, 400)
    assert await chunk(None) == MEMBERS - 200
    assert await chunk(None) == 0
    assert await rows_per_member(db, nid) == (MEMBERS, MEMBERS, 2 * MEMBERS)
    assert await violations(db) == []


async def test_a_parts_chunk_ends_where_its_rows_say(parts_env: WorkerDeps, db: asyncpg.Connection) -> None:
    """part_bound (one walk of member_units from the cursor, bounded by the part's end) against
    its definition over the membership rows: the chunk ends `rows` rows above the cursor, or at
    the part's end when that comes first or when less than a quarter chunk would follow."""
    ids = [r["member_id"] for r in await db.fetch("SELECT member_id FROM member_units ORDER BY member_id")]

    def want(cursor: str, rows: int, end: str | None) -> tuple[str | None, bool]:
        above = [m for m in ids if m > cursor]
        at = above[rows - 1] if len(above) >= rows else None
        beyond_i = rows + rows // 4 - 1
        beyond = above[beyond_i] if len(above) > beyond_i else None
        last = beyond is None or (end is not None and beyond >= end)
        return (end if last else at), last

    for cursor in ["", "m00099", "m00300", "m00500", "m00639"]:
        for rows in [100, 120, 200]:
            for end in [None, "m00250", "m00420", "m00460", "m00639"]:
                if end is not None and end <= cursor:
                    continue
                assert await fanout_db.part_bound(db, cursor, rows, end) == want(cursor, rows, end), (
                    cursor,
                    rows,
                    end,
                )


async def test_a_first_fan_out_of_a_range_probes_no_unique_index_per_row(
    parts_env: WorkerDeps, db: asyncpg.Connection
) -> None:
    """What makes the chunk cheaper: ON CONFLICT would look each new row up in the unique
    indexes before inserting it (an index scan per row); a range with no rows of the notice yet
    is checked once, then inserted without it."""
    nid = await new_notice(db)
    async with db.transaction():
        await fanout_db.fanout_chunk(
            db,
            nid,
            ["u"],
            [],
            "",
            MEMBERS,
            ["inapp", "scripted"],
            [False, False],
            [True, False],
            in_part=True,
            upper=None,
        )
        scans = await db.fetchval(
            "SELECT pg_stat_get_xact_numscans('recipients_pkey'::regclass) "
            "+ pg_stat_get_xact_numscans('deliveries_notice_id_member_id_channel_step_key'::regclass)"
        )
    assert await rows_per_member(db, nid) == (MEMBERS, MEMBERS, 2 * MEMBERS)
    assert scans <= 4, scans  # the range check's, not one per recipient and delivery
