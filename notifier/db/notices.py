"""notices, notice_counts (and the per-unit notice_unit_counts) and idempotency_keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.db.pool import Connection, Pool, Record

NOTICE_COLUMNS = """id, kind, title, body, audience, channels, optional_channels, fallback, scope_unit_id, state, created_at,
    updated_at, fanned_out_at, send_at, expires_at, recalled_at, escalation"""

# A notice whose send_at lies ahead waits as 'scheduled' (the row is the timer); else it is
# queued for fan-out at once.
INSERT = f"""
INSERT INTO notices (kind, title, body, audience, channels, scope_unit_id, created_by, fallback, escalation,
                     send_at, expires_at, optional_channels, state)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
        CASE WHEN $10::timestamptz > (SELECT notifier_now()) THEN 'scheduled' ELSE 'queued' END)
RETURNING {NOTICE_COLUMNS}"""

GET = f"SELECT {NOTICE_COLUMNS} FROM notices WHERE id = $1"

# The sharded counters (written by the fan-out, the read receipt and the deliveries triggers of
# schemas/0006, each in the statement that changes what they count). Per recipient: the delivery
# outcomes partition the recipients, read is counted apart.
COUNTS = """
SELECT coalesce(sum(recipients), 0)::bigint AS recipients, coalesce(sum(queued), 0)::bigint AS queued,
       coalesce(sum(sent), 0)::bigint AS sent, coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(failed), 0)::bigint AS failed, coalesce(sum(cancelled), 0)::bigint AS cancelled,
       coalesce(sum(read), 0)::bigint AS read
FROM notice_counts WHERE notice_id = $1"""
# The same counts for one unit's subtree (schemas/0010: distinct members, summed over shards).
UNIT_COUNTS = """
SELECT coalesce(sum(recipients), 0)::bigint AS recipients, coalesce(sum(queued), 0)::bigint AS queued,
       coalesce(sum(sent), 0)::bigint AS sent, coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(failed), 0)::bigint AS failed, coalesce(sum(cancelled), 0)::bigint AS cancelled,
       coalesce(sum(read), 0)::bigint AS read
FROM notice_unit_counts WHERE notice_id = $1 AND unit_id = $2 AND NOT direct"""

# Claim a notice for one fan-out chunk; a second worker skips it instead of waiting. Once split
# into parts (schemas/0032) the parts are claimed instead: a split committed before this
# statement is in its snapshot, one under way holds the row (skipped).
CLAIM_FANOUT = """
SELECT id, audience, channels, optional_channels, fallback, fanout_cursor, state, escalation,
       coalesce(send_at, created_at) AS went_out_at
FROM notices
WHERE id = $1 AND state IN ('queued', 'fanning_out')
  AND NOT EXISTS (SELECT 1 FROM fanout_parts p WHERE p.notice_id = notices.id)
FOR UPDATE SKIP LOCKED"""

# A part of a notice fanned out in parts (schemas/0032) holds the notice row FOR SHARE while its
# chunk runs: the parts run together, and a recall (which UPDATEs the row) waits for the chunks
# under way and cancels their deliveries too; a part claimed after it sees the notice recalled.
SHARE_FANOUT = """
SELECT id, audience, channels, optional_channels, fallback, fanout_cursor, state, escalation,
       coalesce(send_at, created_at) AS went_out_at
FROM notices
WHERE id = $1 AND state IN ('queued', 'fanning_out') FOR SHARE"""

ADVANCE_FANOUT = """
UPDATE notices SET fanout_cursor = $2, state = $3, updated_at = (SELECT notifier_now()),
    fanned_out_at = CASE WHEN $3 = 'active' THEN (SELECT notifier_now()) END
WHERE id = $1"""

MARK_FAILED = "UPDATE notices SET state = 'failed', updated_at = (SELECT notifier_now()) WHERE id = $1"

# A notice fanned out in parts is stalled when none of its parts moved either.
STALLED_FANOUTS = """
SELECT n.id FROM notices n WHERE n.state IN ('queued', 'fanning_out')
  AND n.updated_at < (SELECT notifier_now()) - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM fanout_parts p WHERE p.notice_id = n.id
                  AND p.updated_at >= (SELECT notifier_now()) - make_interval(secs => $1))
ORDER BY n.updated_at LIMIT $2"""

IDEMPOTENCY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || ':' || $2, 727003))"
IDEMPOTENCY_GET = """
SELECT request_hash, response_status, response_body FROM idempotency_keys
WHERE key_owner = $1 AND key = $2 AND created_at > (SELECT notifier_now()) - make_interval(secs => $3)"""
IDEMPOTENCY_PUT = """
INSERT INTO idempotency_keys (key_owner, key, request_hash, notice_id, response_status, response_body)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (key_owner, key) DO UPDATE SET request_hash = excluded.request_hash,
    notice_id = excluded.notice_id, response_status = excluded.response_status,
    response_body = excluded.response_body, created_at = (SELECT notifier_now())"""
IDEMPOTENCY_PURGE = (
    "DELETE FROM idempotency_keys WHERE created_at < (SELECT notifier_now()) - make_interval(secs => $1)"
)


async def insert(
    conn: Connection,
    *,
    kind: str,
    title: str,
    body: str,
    audience: dict[str, Any],
    channels: list[str],
    scope_unit_id: str | None,
    created_by: str | None,
    fallback: bool = False,
    escalation: dict[str, Any] | None = None,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    optional_channels: list[str] | None = None,
) -> Record:
    row = await conn.fetchrow(
        INSERT,
        kind,
        title,
        body,
        audience,
        channels,
        scope_unit_id,
        created_by,
        fallback,
        escalation,
        send_at,
        expires_at,
        optional_channels or [],
    )
    assert row is not None
    return row


async def get(conn: Connection | Pool, notice_id: str) -> Record | None:
    return await conn.fetchrow(GET, notice_id)


COUNT_KEYS = ("recipients", "queued", "sent", "delivered", "failed", "cancelled", "read")


def counts_of(row: Record) -> dict[str, int]:
    """The counts of a row with COUNTS' columns (and maybe others), with ``unread``."""
    result = {k: int(row[k]) for k in COUNT_KEYS}
    result["unread"] = result["recipients"] - result["read"]
    return result


async def counts(conn: Connection | Pool, notice_id: str, unit_id: str | None = None) -> dict[str, int]:
    """The notice's counts: of every recipient, or (``unit_id``) of those in that unit's subtree."""
    row = await (
        conn.fetchrow(COUNTS, notice_id)
        if unit_id is None
        else conn.fetchrow(UNIT_COUNTS, notice_id, unit_id)
    )
    assert row is not None
    return counts_of(row)


async def stalled_fanouts(conn: Connection | Pool, older_than: float, limit: int = 100) -> list[str]:
    return [str(r["id"]) for r in await conn.fetch(STALLED_FANOUTS, older_than, limit)]


def as_dict(row: Record, counts: dict[str, int] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(row["id"]),
        "kind": row["kind"],
        "title": row["title"],
        "body": row["body"],
        "audience": row["audience"],
        "channels": list(row["channels"]),
        "optional_channels": list(row["optional_channels"]),
        "fallback": row["fallback"],
        "state": row["state"],
        "created_at": row["created_at"].isoformat(),
        "fanned_out_at": row["fanned_out_at"].isoformat() if row["fanned_out_at"] else None,
        "send_at": row["send_at"].isoformat() if row["send_at"] else None,
        "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
        "recalled_at": row["recalled_at"].isoformat() if row["recalled_at"] else None,
        "escalation": row["escalation"],
    }
    if counts is not None:
        data["counts"] = counts
    return data
