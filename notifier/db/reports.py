"""Provider reports (delivery receipts, call results, "pressed 1"): idempotent and order-tolerant.

A report moves a delivery forward only: sending < unknown < sent < delivered | failed (both
final), so a late "sent" never overwrites "delivered" and a repeated report changes nothing.
A report is matched by our own delivery id where the provider echoes it, else by the provider's
id; one whose provider id we have not recorded yet is parked in ``provider_events`` and applied
when the id is written (by the write-back, or by the reconciler's sweep if the two raced).
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record

RANK = "CASE {col} WHEN 'queued' THEN 0 WHEN 'sending' THEN 1 WHEN 'unknown' THEN 2 WHEN 'sent' THEN 3 ELSE 4 END"

# Apply a batch of reports in one statement. A report names its message by our delivery id where
# the provider echoes it (it must then agree with the provider id we recorded, if any), else by
# the provider's id. Several reports for one message in one batch: the furthest state wins and
# any "read" counts. Reports we cannot match yet are parked (by provider id) for the write-back
# or the reconciler. Returns the deliveries that moved and those whose member confirmed reading.
#   $1 channel  $2 provider refs  $3 states  $4 errors  $5 read flags  $6 echoed delivery ids
APPLY_MANY = f"""
WITH r AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[], $6::bigint[])
        AS r(ref, state, error, read, delivery_id)
),
best AS (
    SELECT row_number() OVER () AS k, delivery_id, ref,
           (array_agg(state ORDER BY {RANK.format(col="state")} DESC) FILTER (WHERE state IS NOT NULL))[1] AS state,
           (array_agg(error ORDER BY {RANK.format(col="state")} DESC) FILTER (WHERE state IS NOT NULL))[1] AS error,
           bool_or(read) AS read
    FROM r GROUP BY delivery_id, ref
),
by_id AS (
    SELECT b.k, d.id, d.notice_id, d.member_id, b.state, b.error, b.read
    FROM best b JOIN deliveries d ON d.id = b.delivery_id AND d.channel = $1
        AND (d.provider_ref IS NULL OR b.ref IS NULL OR d.provider_ref = b.ref)
),
found AS (
    SELECT * FROM by_id
    UNION ALL
    SELECT b.k, d.id, d.notice_id, d.member_id, b.state, b.error, b.read
    FROM best b JOIN deliveries d ON d.channel = $1 AND d.provider_ref = b.ref
    WHERE NOT EXISTS (SELECT 1 FROM by_id WHERE by_id.k = b.k)
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
    SELECT $1, b.ref, b.state, b.error, b.read FROM best b
    WHERE b.ref IS NOT NULL AND NOT EXISTS (SELECT 1 FROM found f WHERE f.k = b.k)
)
SELECT 'moved' AS what, notice_id, member_id FROM moved
UNION ALL
SELECT 'read', notice_id, member_id FROM found WHERE read"""

PENDING = """
UPDATE provider_events SET applied_at = (SELECT notifier_now())
WHERE channel = $1 AND provider_ref = ANY($2::text[]) AND applied_at IS NULL
RETURNING provider_ref, state, error, read"""


# Parked reports whose message has a provider id by now (the report raced the write-back that
# recorded it), taken for applying: the reconciler's sweep, so no report waits for a write-back
# that already happened.
TAKE_MATCHED = """
UPDATE provider_events e SET applied_at = (SELECT notifier_now())
WHERE e.id IN (
    SELECT p.id FROM provider_events p
    WHERE p.applied_at IS NULL
      AND EXISTS (SELECT 1 FROM deliveries d WHERE d.channel = p.channel AND d.provider_ref = p.provider_ref)
    ORDER BY p.id LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING e.channel, e.provider_ref, e.state, e.error, e.read"""

# Reports parked longer than the retention (never matched: another system's messages on a shared
# account, or ids we could not store) and applied ones past it are deleted, a bounded batch a time.
PURGE = """
DELETE FROM provider_events WHERE id IN (
    SELECT id FROM provider_events
    WHERE received_at < (SELECT notifier_now()) - make_interval(secs => $1)
    ORDER BY id LIMIT $2)"""


async def apply_many(
    conn: Connection,
    channel: str,
    refs: list[str | None],
    states: list[str | None],
    errors: list[str | None],
    reads: list[bool],
    delivery_ids: list[int | None],
) -> list[Record]:
    return list(await conn.fetch(APPLY_MANY, channel, refs, states, errors, reads, delivery_ids))


async def take_matched(conn: Connection, limit: int = 5000) -> list[Record]:
    return list(await conn.fetch(TAKE_MATCHED, limit))


async def purge(conn: Connection, older_than_seconds: float, limit: int = 10_000) -> int:
    status: str = await conn.execute(PURGE, float(older_than_seconds), limit)
    return int(status.split()[-1])


async def take_pending(conn: Connection, channel: str, refs: list[str]) -> list[Record]:
    if not refs:
        return []
    return list(await conn.fetch(PENDING, channel, refs))
