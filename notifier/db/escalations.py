"""escalation_policies, escalations (the timers), notice_events, scheduled sends and recall."""

from __future__ import annotations

from typing import Any

from notifier.db.contacts import newest_working
from notifier.db.pool import Connection, Pool, Record

# --- policies ---------------------------------------------------------------------------------

POLICY_COLUMNS = "id, unit_id, name, steps, repeat, created_at, updated_at"
POLICY_INSERT = f"""
INSERT INTO escalation_policies (unit_id, name, steps, repeat) VALUES ($1, $2, $3, $4)
RETURNING {POLICY_COLUMNS}"""
POLICY_UPDATE = f"""
UPDATE escalation_policies SET name = $2, steps = $3, repeat = $4, updated_at = (SELECT notifier_now())
WHERE id = $1 RETURNING {POLICY_COLUMNS}"""
POLICY_GET = f"SELECT {POLICY_COLUMNS} FROM escalation_policies WHERE id = $1"
POLICY_DELETE = "DELETE FROM escalation_policies WHERE id = $1 RETURNING id"
# A name resolves to the caller's own unit's policy first, then to a global (admin) one.
POLICY_BY_NAME = f"""
SELECT {POLICY_COLUMNS} FROM escalation_policies
WHERE name = $1 AND (unit_id IS NOT DISTINCT FROM $2 OR unit_id IS NULL)
ORDER BY unit_id IS NULL LIMIT 1"""
POLICY_LIST = f"""
SELECT {POLICY_COLUMNS} FROM escalation_policies
WHERE ($1::text[] IS NULL OR unit_id = ANY($1::text[]) OR unit_id IS NULL)
ORDER BY name, unit_id NULLS FIRST"""
UNIT_DEFAULT_POLICY = "SELECT default_policy FROM units WHERE id = $1"

# --- timers -----------------------------------------------------------------------------------

START = """
INSERT INTO escalations (notice_id, started_at, due_at)
VALUES ($1, $2::timestamptz, $2::timestamptz + make_interval(secs => $3))
ON CONFLICT (notice_id) DO NOTHING"""

# Claim one due escalation; a second worker skips it instead of waiting.
CLAIM_DUE = """
SELECT e.notice_id, e.started_at, e.round, e.next_step, e.due_at,
       n.state AS notice_state, n.escalation, n.expires_at, n.title, n.kind, n.scope_unit_id,
       n.expires_at IS NOT NULL AND n.expires_at <= (SELECT notifier_now()) AS expired,
       extract(epoch FROM (SELECT notifier_now()) - e.started_at) AS elapsed
FROM escalations e JOIN notices n ON n.id = e.notice_id
WHERE e.state = 'active' AND e.due_at <= (SELECT notifier_now())
ORDER BY e.due_at
LIMIT 1
FOR UPDATE OF e SKIP LOCKED"""

ADVANCE = """
UPDATE escalations SET round = $2, next_step = $3, due_at = started_at + make_interval(secs => $4),
    updated_at = (SELECT notifier_now())
WHERE notice_id = $1"""
POSTPONE = """
UPDATE escalations SET due_at = (SELECT notifier_now()) + make_interval(secs => $2), updated_at = (SELECT notifier_now())
WHERE notice_id = $1"""
FINISH = "UPDATE escalations SET state = $2, updated_at = (SELECT notifier_now()) WHERE notice_id = $1 AND state = 'active'"
NEXT_DUE = "SELECT min(due_at) FROM escalations WHERE state = 'active'"

# Unread recipients, locked against a read committing while this step decides (the read waits
# for the step's commit, or the step sees the read: one consistent outcome).
LOCK_UNREAD = """
SELECT member_id FROM recipients WHERE notice_id = $1 AND read_at IS NULL
ORDER BY member_id FOR UPDATE"""
COUNTS = """
SELECT count(*) AS recipients, count(*) FILTER (WHERE read_at IS NULL) AS unread
FROM recipients WHERE notice_id = $1"""

# Remind the unread on one channel: one delivery per member with a working contact (or none
# needed). Returns who was reached; the caller records an event for who was not.
REMIND = f"""
WITH unread AS (
    SELECT member_id FROM recipients WHERE notice_id = $1 AND read_at IS NULL
),
plan AS (
    SELECT u.member_id, k.id AS contact_id
    FROM unread u
    LEFT JOIN LATERAL ({newest_working("u.member_id", "$2", when="$4")}) k ON true
),
ins AS (
    INSERT INTO deliveries (notice_id, member_id, channel, step, contact_id, state, attempts,
                            next_attempt_at, created_at, updated_at)
    SELECT $1, member_id, $2, $3, contact_id, CASE WHEN $5 THEN 'delivered' ELSE 'queued' END, $5::int,
           clock.now, clock.now, clock.now
    FROM plan CROSS JOIN (SELECT notifier_now() AS now) AS clock
    WHERE contact_id IS NOT NULL OR NOT $4
    ON CONFLICT (notice_id, member_id, channel, step) DO NOTHING
    RETURNING member_id
)
SELECT (SELECT count(*) FROM ins) AS reached,
       coalesce((SELECT array_agg(member_id ORDER BY member_id) FROM plan WHERE contact_id IS NULL AND $4),
                '{{}}') AS unreachable"""

UNREAD_UNITS = """
SELECT mu.unit_id, count(DISTINCT r.member_id) AS n
FROM recipients r JOIN member_units mu ON mu.member_id = r.member_id
WHERE r.notice_id = $1 AND r.read_at IS NULL
GROUP BY mu.unit_id ORDER BY n DESC, mu.unit_id"""

# Has anyone acknowledged (read) a summary sent for this step index in an earlier round?
ACKNOWLEDGED = """
SELECT EXISTS (
    SELECT 1 FROM notices s JOIN recipients r ON r.notice_id = s.id
    WHERE s.parent_notice_id = $1 AND s.parent_step % 100 = $2 AND r.read_at IS NOT NULL)"""

SUMMARY_INSERT = """
INSERT INTO notices (kind, title, body, audience, channels, scope_unit_id, parent_notice_id, parent_step, state)
VALUES ('ding', $1, $2, $3, $4, $5, $6, $7, 'queued')
ON CONFLICT DO NOTHING
RETURNING id"""
SUMMARY_EXISTS = "SELECT id FROM notices WHERE parent_notice_id = $1 AND parent_step = $2"

EVENT = "INSERT INTO notice_events (notice_id, member_id, kind, detail) VALUES ($1, $2, $3, $4)"
EVENTS_MANY = """
INSERT INTO notice_events (notice_id, member_id, kind, detail)
SELECT $1, m, $3, $4 FROM unnest($2::text[]) AS m"""
EVENTS_FOR = """
SELECT id, member_id, kind, detail, at FROM notice_events WHERE notice_id = $1
  AND ($2::text IS NULL OR member_id = $2 OR member_id IS NULL) ORDER BY at, id LIMIT $3"""

# --- scheduled sends and recall ------------------------------------------------------------

RELEASE_SCHEDULED = """
UPDATE notices SET state = 'queued', updated_at = (SELECT notifier_now())
WHERE id IN (SELECT id FROM notices WHERE state = 'scheduled' AND send_at <= (SELECT notifier_now())
             ORDER BY send_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id"""

RECALL = """
UPDATE notices SET state = 'recalled', recalled_at = (SELECT notifier_now()), updated_at = (SELECT notifier_now())
WHERE (id = $1 OR parent_notice_id = $1) AND state <> 'recalled'
RETURNING id"""
CANCEL_PENDING = """
UPDATE deliveries SET state = 'cancelled', error = 'recalled', lease_until = NULL, wait_reason = NULL,
    updated_at = (SELECT notifier_now())
WHERE notice_id = ANY($1::uuid[]) AND state = 'queued'"""
STOP_TIMERS = "UPDATE escalations SET state = 'stopped', updated_at = (SELECT notifier_now()) WHERE notice_id = ANY($1::uuid[]) AND state = 'active'"


async def event(
    conn: Connection, notice_id: str, kind: str, detail: dict[str, Any], member_id: str | None = None
) -> None:
    await conn.execute(EVENT, notice_id, member_id, kind, detail)


async def events_many(
    conn: Connection, notice_id: str, member_ids: list[str], kind: str, detail: dict[str, Any]
) -> None:
    if member_ids:
        await conn.execute(EVENTS_MANY, notice_id, member_ids, kind, detail)


async def events_for(
    conn: Connection | Pool, notice_id: str, member_id: str | None, limit: int = 1000
) -> list[Record]:
    return list(await conn.fetch(EVENTS_FOR, notice_id, member_id, limit))
