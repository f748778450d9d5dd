"""Provider reports (delivery receipts, call results, "pressed 1"): idempotent and order-tolerant.

A report moves a delivery forward only: sending < unknown < sent < delivered | failed (both
final), so a late "sent" never overwrites "delivered" and a repeated report changes nothing.
A report for a message whose provider id we have not recorded yet is parked in
``provider_events`` and applied when the id is written.
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record

RANK = "CASE {col} WHEN 'queued' THEN 0 WHEN 'sending' THEN 1 WHEN 'unknown' THEN 2 WHEN 'sent' THEN 3 ELSE 4 END"

# Apply a batch of reports in one statement. Several reports for one message in one batch:
# the furthest state wins and any "read" counts. Reports for messages we cannot match yet are
# parked. Returns the deliveries that moved and those whose member confirmed reading.
#   $1 channel  $2 provider refs  $3 states  $4 errors  $5 read flags
APPLY_MANY = f"""
WITH r AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[]) AS r(ref, state, error, read)
),
best AS (
    SELECT ref,
           (array_agg(state ORDER BY {RANK.format(col="state")} DESC) FILTER (WHERE state IS NOT NULL))[1] AS state,
           (array_agg(error ORDER BY {RANK.format(col="state")} DESC) FILTER (WHERE state IS NOT NULL))[1] AS error,
           bool_or(read) AS read
    FROM r GROUP BY ref
),
found AS (
    SELECT d.id, d.notice_id, d.member_id, b.ref, b.state, b.error, b.read
    FROM deliveries d JOIN best b ON d.channel = $1 AND d.provider_ref = b.ref
),
moved AS (
    UPDATE deliveries d SET state = f.state, error = coalesce(f.error, d.error), lease_until = NULL,
        wait_reason = NULL, updated_at = (SELECT notifier_now())
    FROM found f
    WHERE d.id = f.id AND f.state IS NOT NULL AND {RANK.format(col="f.state")} > {RANK.format(col="d.state")}
    RETURNING d.notice_id, d.member_id
),
parked AS (
    INSERT INTO provider_events (channel, provider_ref, state, error, read)
    SELECT $1, b.ref, b.state, b.error, b.read FROM best b WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.ref = b.ref)
)
SELECT 'moved' AS what, notice_id, member_id FROM moved
UNION ALL
SELECT 'read', notice_id, member_id FROM found WHERE read"""

PENDING = """
UPDATE provider_events SET applied_at = (SELECT notifier_now())
WHERE channel = $1 AND provider_ref = ANY($2::text[]) AND applied_at IS NULL
RETURNING provider_ref, state, error, read"""


async def apply_many(
    conn: Connection,
    channel: str,
    refs: list[str],
    states: list[str | None],
    errors: list[str | None],
    reads: list[bool],
) -> list[Record]:
    return list(await conn.fetch(APPLY_MANY, channel, refs, states, errors, reads))


async def take_pending(conn: Connection, channel: str, refs: list[str]) -> list[Record]:
    if not refs:
        return []
    return list(await conn.fetch(PENDING, channel, refs))
