"""deliveries: claiming batches under a lease, writing results back in bulk, reconciling."""

from __future__ import annotations

from dataclasses import dataclass

from notifier.db.pool import Connection, Pool, Record

# Claim up to $3 due deliveries of one notice on one channel. SKIP LOCKED lets any number of
# workers share a notice; the lease says how long the claim holds; attempts is the fencing token.
CLAIM = """
WITH c AS (
    SELECT id FROM deliveries
    WHERE notice_id = $1 AND channel = $2 AND state = 'queued' AND next_attempt_at <= notifier_now()
    ORDER BY id LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
SET state = 'sending', attempts = d.attempts + 1, lease_until = notifier_now() + make_interval(secs => $4),
    updated_at = notifier_now()
FROM c WHERE d.id = c.id
RETURNING d.id, d.member_id, d.attempts, d.contact_id,
    (SELECT CASE WHEN k.disabled_at IS NULL THEN k.target END FROM contacts k WHERE k.id = d.contact_id) AS target"""

# Write a batch of outcomes. A row is only written by the attempt that claimed it and only while
# it is still 'sending': a late writer from an expired lease changes nothing.
RECORD = """
WITH r AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::float8[], $6::text[])
        AS r(id, attempt, state, error, retry_in, provider_ref)
)
UPDATE deliveries d SET
    state = r.state,
    next_attempt_at = CASE WHEN r.state = 'queued' THEN notifier_now() + make_interval(secs => r.retry_in)
                           ELSE d.next_attempt_at END,
    error = r.error,
    provider_ref = coalesce(r.provider_ref, d.provider_ref),
    lease_until = NULL,
    updated_at = notifier_now()
FROM r
WHERE d.id = r.id AND d.attempts = r.attempt AND d.state = 'sending'
RETURNING d.notice_id, d.member_id"""

# Leases that ran out (the worker died or hung): hand the rows back to the queue.
REQUEUE_EXPIRED = """
UPDATE deliveries SET state = 'queued', lease_until = NULL, updated_at = notifier_now(),
    error = 'lease expired (worker lost)'
WHERE id IN (
    SELECT id FROM deliveries WHERE state = 'sending' AND lease_until < notifier_now()
    ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING notice_id, channel"""

# (notice, channel) groups with due work nobody has claimed, and how much.
DUE_GROUPS = """
SELECT notice_id, channel, count(*) AS n FROM deliveries
WHERE state = 'queued' AND next_attempt_at <= notifier_now() - make_interval(secs => $2)
GROUP BY notice_id, channel ORDER BY min(next_attempt_at) LIMIT $1"""


@dataclass(slots=True)
class Claimed:
    id: int
    member_id: str
    attempt: int
    contact_id: object | None
    target: object | None


@dataclass(slots=True)
class Written:
    id: int
    attempt: int
    state: str  # queued (retry) | sent | delivered | failed
    error: str | None
    retry_in: float
    provider_ref: str | None


async def claim(pool: Pool, notice_id: str, channel: str, limit: int, lease_seconds: float) -> list[Claimed]:
    rows = await pool.fetch(CLAIM, notice_id, channel, limit, lease_seconds)
    return [Claimed(r["id"], r["member_id"], r["attempts"], r["contact_id"], r["target"]) for r in rows]


async def record(conn: Connection, results: list[Written]) -> list[Record]:
    return list(
        await conn.fetch(
            RECORD,
            [w.id for w in results],
            [w.attempt for w in results],
            [w.state for w in results],
            [w.error for w in results],
            [w.retry_in for w in results],
            [w.provider_ref for w in results],
        )
    )


async def requeue_expired(conn: Connection | Pool, limit: int = 10_000) -> list[Record]:
    return list(await conn.fetch(REQUEUE_EXPIRED, limit))


async def due_groups(conn: Connection | Pool, stalled_for: float, limit: int = 200) -> list[Record]:
    return list(await conn.fetch(DUE_GROUPS, limit, stalled_for))
