"""A notice whose channel list repeats a channel (an escalation summary: a policy step's
``channels`` may repeat one, domain/escalation.py checks only ``remind`` and ``notify``) still
fans out: one delivery per member and channel. The chunk statement inserts without ON CONFLICT
when its range holds no rows of the notice (db/fanout.py RANGE_HAS_ROWS), so a plan holding the
same (member, channel) twice must not reach it. Real PostgreSQL."""

from __future__ import annotations

import asyncpg

from notifier.domain.escalation import PolicyRules
from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import advance_escalations
from notifier.workers.fanout import fanout_notice
from tests.conftest import advance_clock
from tests.workers.test_counters import violations
from tests.workers.test_delivery_layer import ScriptedChannel, make_members, make_notice

POLICY = {
    "steps": [{"after": 60, "notify": ["secretary"], "channels": ["inapp", "inapp"]}],
    "repeat": 0,
}


async def test_a_summary_on_a_repeated_channel_fans_out_once_per_member(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, _ = env
    assert PolicyRules.model_validate(POLICY).steps[0].channels == ["inapp", "inapp"]  # accepted
    await make_members(db, 3)
    await db.execute("INSERT INTO members (id, name) VALUES ('sec', 'S')")
    await db.execute("INSERT INTO unit_secretaries VALUES ('u', 'sec')")
    nid = await make_notice(deps, db, ["inapp"], escalation=POLICY)
    await advance_clock(db, 61)
    assert await advance_escalations(deps) == 1
    summary = await db.fetchval("SELECT id FROM notices WHERE parent_notice_id = $1", nid)
    assert summary is not None
    await fanout_notice(deps, str(summary))
    rows = await db.fetch(
        "SELECT member_id, channel FROM deliveries WHERE notice_id = $1 ORDER BY member_id", summary
    )
    assert [tuple(r) for r in rows] == [("sec", "inapp")]
    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", summary) == "active"
    assert await violations(db) == []
