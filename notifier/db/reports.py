"""Provider reports (delivery receipts, call results, "pressed 1"): idempotent and order-tolerant.

A report moves a delivery forward only: sending < unknown < sent < delivered | failed (both
final), so a late "sent" never overwrites "delivered" and a repeated report changes nothing.
A report for a message whose provider id we have not recorded yet is parked in
``provider_events`` and applied when the id is written.
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record

RANK = "CASE {col} WHEN 'queued' THEN 0 WHEN 'sending' THEN 1 WHEN 'unknown' THEN 2 WHEN 'sent' THEN 3 ELSE 4 END"

APPLY = f"""
UPDATE deliveries d SET state = $3, error = coalesce($4, d.error), lease_until = NULL, wait_reason = NULL,
    updated_at = (SELECT notifier_now())
WHERE d.channel = $1 AND d.provider_ref = $2 AND $3::text IS NOT NULL
  AND {RANK.format(col="$3::text")} > {RANK.format(col="d.state")}
RETURNING d.id, d.notice_id, d.member_id"""

FIND = "SELECT id, notice_id, member_id, state FROM deliveries WHERE channel = $1 AND provider_ref = $2"

PARK = """
INSERT INTO provider_events (channel, provider_ref, state, error, read) VALUES ($1, $2, $3, $4, $5)"""

PENDING = """
UPDATE provider_events SET applied_at = (SELECT notifier_now())
WHERE channel = $1 AND provider_ref = ANY($2::text[]) AND applied_at IS NULL
RETURNING provider_ref, state, error, read"""


async def apply(
    conn: Connection, channel: str, provider_ref: str, state: str | None, error: str | None
) -> list[Record]:
    """Apply one report; returns the deliveries it moved (empty when stale or unknown)."""
    return list(await conn.fetch(APPLY, channel, provider_ref, state, error))


async def find(conn: Connection, channel: str, provider_ref: str) -> Record | None:
    return await conn.fetchrow(FIND, channel, provider_ref)


async def park(
    conn: Connection, channel: str, provider_ref: str, state: str | None, error: str | None, read: bool
) -> None:
    await conn.execute(PARK, channel, provider_ref, state, error, read)


async def take_pending(conn: Connection, channel: str, refs: list[str]) -> list[Record]:
    if not refs:
        return []
    return list(await conn.fetch(PENDING, channel, refs))
