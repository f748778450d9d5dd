"""A step over more than one chunk of unread is reminded in parts at once (schemas/0037,
notifier/workers/escalation_parts.py), and keeps every guarantee of the serial chunks: each
unread member reminded once per channel, a read before its chunk honoured, a crashed part resumed
(the tick wakes its jobs again), a recall stopping the parts, the step fired exactly once -- by
the last part to finish, also when two finish at the same moment -- the ceiling on sends never
exceeded, and the counters equal to the rows. Real PostgreSQL; interleavings forced, not hoped for."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from notifier.db import escalation_parts as parts_db
from notifier.db import recall as recall_db
from notifier.db import receipts
from notifier.db.pool import Connection, Record
from notifier.workers import escalation_parts
from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import advance_escalations
from notifier.workers.escalation_parts import remind_parts
from notifier.workers.queue import ESCALATION_PART
from tests.conftest import advance_clock, running_worker, wait_until
from tests.workers.test_counters import violations
from tests.workers.test_delivery_layer import ScriptedChannel, make_members, make_notice

Env = tuple[WorkerDeps, ScriptedChannel]
POLICY = {"steps": [{"after": 60, "remind": ["scripted", "inapp"]}], "repeat": 0}
MEMBERS = 20


def in_parts(deps: WorkerDeps, size: int = 6, parts: int = 2, **more: object) -> WorkerDeps:
    """Steps over more than ``size`` unread in ``parts`` parts, each in chunks of size / parts."""
    update = {"escalation_chunk_size": size, "escalation_parts": parts, **more}
    return dataclasses.replace(deps, settings=deps.settings.model_copy(update=update))


async def reminded(db: asyncpg.Connection, nid: str) -> dict[str, list[str]]:
    rows = await db.fetch(
        "SELECT channel, array_agg(member_id ORDER BY member_id) AS m FROM deliveries "
        "WHERE notice_id = $1 AND step > 0 GROUP BY channel",
        nid,
    )
    return {r["channel"]: list(r["m"]) for r in rows}


async def fired(db: asyncpg.Connection, nid: str) -> list[Any]:
    rows = await db.fetch(
        "SELECT detail FROM notice_events WHERE notice_id = $1 AND kind = 'step_fired' ORDER BY id", nid
    )
    return [json.loads(r["detail"]) for r in rows]


async def has_fired(db: asyncpg.Connection, nid: str) -> bool:
    return bool(await fired(db, nid))


async def timer(db: asyncpg.Connection, nid: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT state, step_cursor, sends, due_at > notifier_now() AS later FROM escalations "
        "WHERE notice_id = $1",
        nid,
    )
    assert row is not None
    return row


async def part_jobs(deps: WorkerDeps) -> int:
    return sum(1 for j in await deps.queue.queued_jobs() if j.function == ESCALATION_PART)


async def split_step(
    deps: WorkerDeps,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    policy: dict[str, Any] = POLICY,
) -> str:
    """A notice whose step the tick has split, and no part reminded yet (the tick's own runner
    held back: the test runs the parts)."""
    await make_members(db, MEMBERS)
    nid = await make_notice(deps, db, ["inapp"], escalation=policy)
    await advance_clock(db, 61)

    async def held_back(deps: WorkerDeps, notice_id: str) -> int:
        return 0

    with monkeypatch.context() as patched:
        patched.setattr(escalation_parts, "remind_parts", held_back)
        assert await advance_escalations(deps) == 0  # split, not yet a step
    return nid


Hook = Callable[[int, bool], Awaitable[None]]


def hook_advance(monkeypatch: pytest.MonkeyPatch, hook: Hook, *, after: bool = False) -> None:
    """Run ``hook(call number, done)`` in a part's chunk transaction, before (or ``after``) its
    row is advanced (and, for its last chunk, the parts left counted)."""
    original = parts_db.advance
    calls = 0

    async def advance(
        conn: Connection,
        notice_id: str,
        part: Record,
        cursor: str | None,
        reached: dict[str, int],
        sends: int,
        done: bool,
    ) -> int:
        nonlocal calls
        calls += 1
        if not after:
            await hook(calls, done)
        left = await original(conn, notice_id, part, cursor, reached, sends, done)
        if after:
            await hook(calls, done)
        return left

    monkeypatch.setattr(parts_db, "advance", advance)


async def test_a_step_in_parts_reminds_each_unread_once_and_fires_once(
    env: Env, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = in_parts(env[0])
    nid = await split_step(deps, db, monkeypatch)
    parts = await db.fetch(
        "SELECT part, cursor, upper, done FROM escalation_parts WHERE notice_id = $1 ORDER BY part", nid
    )
    assert [tuple(p) for p in parts] == [(0, "", "m00010", False), (1, "m00010", None, False)]
    row = await timer(db, nid)
    # the ceiling holds every unread on both channels while the parts run (a remind-now sees it)
    assert (row["state"], row["step_cursor"], row["sends"], row["later"]) == ("active", "", 40, True)
    assert await part_jobs(deps) == 1  # and one runner in the tick
    assert await fired(db, nid) == []
    assert await advance_escalations(deps) == 0  # postponed: the tick leaves the parts alone
    async with deps.pool.acquire() as conn, conn.transaction():  # a read before its chunk
        await receipts.mark_read(conn, nid, "m00015", "api")
    done = await asyncio.gather(remind_parts(deps, nid), remind_parts(deps, nid))
    assert sum(done) == 7  # m00000-m00010 in chunks of 3, then m00011-m00019 but m00015
    everyone = [f"m{i:05d}" for i in range(MEMBERS) if i != 15]
    assert await reminded(db, nid) == {"inapp": everyone, "scripted": everyone}
    assert await fired(db, nid) == [
        {"round": 0, "step": 0, "unread": 20, "reminded": {"scripted": 19, "inapp": 19}}
    ]
    row = await timer(db, nid)
    assert (row["state"], row["step_cursor"], row["sends"]) == ("done", None, 38)
    assert await db.fetchval("SELECT count(*) FROM escalation_parts") == 0
    assert await violations(db) == []


async def test_two_parts_finishing_at_once_fire_the_step_once(
    env: Env, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first part to finish has counted the parts left (the other one, still reminding) and
    not committed; the other's last chunk then waits for it before counting, so it finds none
    left and fires the step: once, not never (nor twice)."""
    deps = in_parts(env[0])
    nid = await split_step(deps, db, monkeypatch)
    second: list[asyncio.Task[int]] = []

    async def hook(call: int, done: bool) -> None:
        if done and not second:  # the first job's part (m00000-m00010) is done: start the other
            second.append(asyncio.create_task(remind_parts(deps, nid)))
            for _ in range(500):
                if await db.fetchval(
                    "SELECT count(*) > 0 FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ):
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the second part did not wait for the first to commit")

    hook_advance(monkeypatch, hook, after=True)
    assert await remind_parts(deps, nid) == 4  # chunks of 3
    assert await second[0] == 4  # m00011-m00019 in 3, and an empty last (as serial chunks do)
    assert len(await fired(db, nid)) == 1
    assert (await timer(db, nid))["state"] == "done"
    assert await violations(db) == []


async def test_a_part_that_crashes_mid_way_is_woken_again_and_resumes(
    env: Env, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = in_parts(env[0])
    nid = await split_step(deps, db, monkeypatch)

    async def hook(call: int, done: bool) -> None:
        if call == 3:
            raise ConnectionResetError("worker killed")

    hook_advance(monkeypatch, hook)
    with pytest.raises(ConnectionResetError):
        await remind_parts(deps, nid)
    monkeypatch.undo()
    partly = await reminded(db, nid)
    assert len(partly["inapp"]) == 6  # two chunks committed, the third rolled back
    await deps.queue.delete(deps.settings.queue_name)  # the jobs are lost too
    assert await advance_escalations(deps) == 0  # not due yet: the parts may still be running
    assert await part_jobs(deps) == 0
    await advance_clock(db, deps.settings.reconcile_stall_seconds + 1)
    assert await advance_escalations(deps) == 0  # due again, parts unfinished: woken again
    assert await part_jobs(deps) == 2
    assert (await timer(db, nid))["later"]
    await remind_parts(deps, nid)
    everyone = [f"m{i:05d}" for i in range(MEMBERS)]
    assert await reminded(db, nid) == {"inapp": everyone, "scripted": everyone}
    assert len(await fired(db, nid)) == 1
    assert (await timer(db, nid))["sends"] == 40
    assert await violations(db) == []


async def test_a_recall_while_parts_remind_stops_the_step(
    env: Env, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recall waits for the chunk under way (it holds the timer FOR KEY SHARE), then cancels
    its queued reminders too; no part goes on, the step never fires, the parts are removed."""
    deps = in_parts(env[0])
    nid = await split_step(deps, db, monkeypatch)
    recall: list[asyncio.Task[list[str]]] = []

    async def recall_now() -> list[str]:
        async with deps.pool.acquire() as conn, conn.transaction():
            return await recall_db.recall(conn, nid, "admin")

    async def hook(call: int, done: bool) -> None:
        if call == 1:
            recall.append(asyncio.create_task(recall_now()))
            await wait_until(
                lambda: db.fetchval(
                    "SELECT count(*) > 0 FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ),
                within=10,
                every=0.01,
            )

    hook_advance(monkeypatch, hook)
    assert await remind_parts(deps, nid) == 1
    assert await recall[0] == [nid]
    assert await remind_parts(deps, nid) == 0
    assert await reminded(db, nid) == {c: ["m00000", "m00001", "m00002"] for c in ("inapp", "scripted")}
    queued = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND step > 0 AND state = 'queued'", nid
    )
    assert queued == 0
    assert await fired(db, nid) == []
    assert (await timer(db, nid))["state"] == "stopped"
    assert (await timer(db, nid))["sends"] == 6  # the reservation not sent is counted back
    assert await db.fetchval("SELECT count(*) FROM escalation_parts") == 0
    assert await violations(db) == []


async def test_a_ceiling_below_every_unread_keeps_the_step_serial(env: Env, db: asyncpg.Connection) -> None:
    """Parts run at once and cannot share what is left of the ceiling: a step that may reach it
    runs chunk by chunk, and stops where it is reached."""
    deps = in_parts(env[0], escalation_max_sends=39)
    await make_members(db, MEMBERS)
    nid = await make_notice(deps, db, ["inapp"], escalation=POLICY)
    await advance_clock(db, 61)
    assert await advance_escalations(deps) == 1
    assert await db.fetchval("SELECT count(*) FROM escalation_parts") == 0
    assert (await timer(db, nid))["sends"] == 39
    assert await violations(db) == []


async def test_a_worker_runs_a_step_in_parts(env: Env, db: asyncpg.Connection) -> None:
    """End to end: the worker's tick splits the step and its part jobs remind and fire it."""
    deps = in_parts(env[0])
    await make_members(db, MEMBERS)
    nid = await make_notice(deps, db, ["inapp"], escalation={"steps": [{"after": 60, "remind": ["inapp"]}]})
    await advance_clock(db, 61)
    async with running_worker(deps.settings):
        await wait_until(lambda: has_fired(db, nid), within=20)
    assert await reminded(db, nid) == {"inapp": [f"m{i:05d}" for i in range(MEMBERS)]}
    assert await fired(db, nid) == [{"round": 0, "step": 0, "unread": 20, "reminded": {"inapp": 20}}]
    assert await violations(db) == []


async def test_a_step_in_parts_that_also_notifies_sends_one_summary(
    env: Env, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part that fires the step notifies its roles, as the serial last chunk would: one
    summary, counted in the ceiling once the reservation is counted back."""
    deps = in_parts(env[0])
    policy = {"steps": [{"after": 60, "remind": ["inapp"], "notify": ["secretary"], "channels": ["inapp"]}]}
    nid = await split_step(deps, db, monkeypatch, policy)
    await db.execute("INSERT INTO members (id, name) VALUES ('sec', 'S')")  # not a recipient
    await db.execute("INSERT INTO unit_secretaries VALUES ('u', 'sec')")
    await asyncio.gather(remind_parts(deps, nid), remind_parts(deps, nid))
    (detail,) = await fired(db, nid)
    summaries = await db.fetch("SELECT id FROM notices WHERE parent_notice_id = $1", nid)
    assert len(summaries) == 1
    assert detail["reminded"] == {"inapp": MEMBERS}
    assert detail["notified"] == {"secretary": ["sec"], "summary": str(summaries[0]["id"])}
    assert (await timer(db, nid))["sends"] == MEMBERS + 1
    assert await violations(db) == []


async def test_the_tick_that_splits_a_step_reminds_a_part_itself_at_once(
    env: Env, db: asyncpg.Connection
) -> None:
    """No trip through Redis before the first reminders: the tick runs a part itself (here all
    of them, as no job runs), and the job woken for the other part finds nothing left to do."""
    deps = in_parts(env[0])
    await make_members(db, MEMBERS)
    nid = await make_notice(deps, db, ["inapp"], escalation=POLICY)
    await advance_clock(db, 61)
    await advance_escalations(deps)
    everyone = [f"m{i:05d}" for i in range(MEMBERS)]
    assert await reminded(db, nid) == {"inapp": everyone, "scripted": everyone}
    assert len(await fired(db, nid)) == 1
    assert await part_jobs(deps) == 1
    assert await remind_parts(deps, nid) == 0
    assert (await timer(db, nid))["state"] == "done"
    assert await violations(db) == []
