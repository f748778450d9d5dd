"""A step over many unread reminds them in chunks, one transaction each (issue 13, target 7): a
reminder's insert locks its recipient's row until commit, so a read waits at most one chunk.
Between chunks the timer stays due with the step's cursor; a read, recall or the ceiling on sends
between chunks is honoured, every member is reminded once, the step fires once, and the counters
equal the rows."""

from __future__ import annotations

import dataclasses
import json

import asyncpg
import pytest

from notifier.db import escalations, receipts
from notifier.db import recall as recall_db
from notifier.workers import escalate
from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import advance_escalations
from tests.conftest import advance_clock
from tests.workers.test_counters import violations
from tests.workers.test_delivery_layer import ScriptedChannel, make_members, make_notice

Env = tuple[WorkerDeps, ScriptedChannel]
POLICY = {"steps": [{"after": 60, "remind": ["scripted", "inapp"]}], "repeat": 0}


def chunked(deps: WorkerDeps, size: int, **more: object) -> WorkerDeps:
    """Chunks of ``size``, one after another in the tick (no parts: test_escalation_parts.py)."""
    update = {"escalation_chunk_size": size, "escalation_parts": 1, **more}
    return dataclasses.replace(deps, settings=deps.settings.model_copy(update=update))


async def reminded(db: asyncpg.Connection, nid: str) -> dict[str, list[str]]:
    rows = await db.fetch(
        "SELECT channel, array_agg(member_id ORDER BY member_id) AS m FROM deliveries "
        "WHERE notice_id = $1 AND step > 0 GROUP BY channel",
        nid,
    )
    return {r["channel"]: list(r["m"]) for r in rows}


async def events(db: asyncpg.Connection, nid: str) -> list[tuple[str, object]]:
    rows = await db.fetch("SELECT kind, detail FROM notice_events WHERE notice_id = $1 ORDER BY id", nid)
    return [(r["kind"], json.loads(r["detail"])) for r in rows]


async def timer(db: asyncpg.Connection, nid: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT state, step_cursor, sends FROM escalations WHERE notice_id = $1", nid)
    assert row is not None
    return row


async def test_a_step_reminds_in_chunks_one_transaction_each_and_fires_once(
    env: Env, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps, _ = env
    await make_members(db, 7)
    nid = await make_notice(deps, db, ["inapp"], escalation=POLICY)
    await advance_clock(db, 61)
    deps = chunked(deps, 3)
    monkeypatch.setattr(escalate, "MAX_PER_TICK", 1)  # one transaction per call
    assert await advance_escalations(deps) == 0  # a chunk, not yet a step
    first = await reminded(db, nid)
    assert first == {c: ["m00000", "m00001", "m00002"] for c in ("inapp", "scripted")}
    row = await timer(db, nid)
    assert (row["state"], row["step_cursor"], row["sends"]) == ("active", "m00002", 6)
    assert [k for k, _ in await events(db, nid)] == []  # the step has not fired yet
    assert await violations(db) == []
    # A read between chunks: that member is not reminded by the rest of the step.
    async with deps.pool.acquire() as conn, conn.transaction():
        await receipts.mark_read(conn, nid, "m00004", "api")
    assert await advance_escalations(deps) == 0
    assert await advance_escalations(deps) == 1  # the last chunk fires the step
    assert await advance_escalations(deps) == 0  # nothing left
    rest = ["m00003", "m00005", "m00006"]
    assert await reminded(db, nid) == {c: first[c] + rest for c in ("inapp", "scripted")}
    fired = [d for k, d in await events(db, nid) if k == "step_fired"]
    assert fired == [{"round": 0, "step": 0, "unread": 7, "reminded": {"scripted": 6, "inapp": 6}}]
    row = await timer(db, nid)
    assert (row["state"], row["step_cursor"], row["sends"]) == ("done", None, 12)
    assert await violations(db) == []


async def test_a_recall_between_chunks_stops_the_step(
    env: Env, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps, _ = env
    await make_members(db, 5)
    nid = await make_notice(deps, db, ["inapp"], escalation=POLICY)
    await advance_clock(db, 61)
    deps = chunked(deps, 2)
    monkeypatch.setattr(escalate, "MAX_PER_TICK", 1)
    await advance_escalations(deps)
    async with deps.pool.acquire() as conn, conn.transaction():
        await recall_db.recall(conn, nid, "admin")
    monkeypatch.setattr(escalate, "MAX_PER_TICK", 200)
    await advance_escalations(deps)
    assert await reminded(db, nid) == {c: ["m00000", "m00001"] for c in ("inapp", "scripted")}
    assert "step_fired" not in [k for k, _ in await events(db, nid)]
    assert (await timer(db, nid))["state"] == "stopped"
    assert await violations(db) == []


async def test_the_ceiling_on_sends_counts_every_chunk(env: Env, db: asyncpg.Connection) -> None:
    deps, _ = env
    await make_members(db, 7)
    nid = await make_notice(deps, db, ["inapp"], escalation={"steps": [{"after": 60, "remind": ["inapp"]}]})
    await advance_clock(db, 61)
    assert await advance_escalations(chunked(deps, 3, escalation_max_sends=5)) == 1
    assert await reminded(db, nid) == {"inapp": ["m00000", "m00001", "m00002", "m00003", "m00004"]}
    kinds = [k for k, _ in await events(db, nid)]
    assert kinds == ["step_fired", escalate.CEILING_EVENT]
    row = await timer(db, nid)
    assert (row["state"], row["step_cursor"], row["sends"]) == ("stopped", None, 5)
    assert await violations(db) == []


async def test_a_reminder_statement_reads_the_engine_clock_once_not_per_row(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, _ = env
    await make_members(db, 6)
    nid = await make_notice(deps, db, ["inapp"])
    async with deps.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL track_functions = 'all'")
        row = await escalations.remind(
            conn, nid, "inapp", 1, needs_contact=False, delivers_on_insert=True, budget=100
        )
        calls = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE funcname = 'notifier_now'"
        )
    assert row["reached"] == 6
    assert calls == 1  # four timestamps per reminder, one reading of the clock for them all
