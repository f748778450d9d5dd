"""Scheduled sends: a notice with a future ``send_at`` waits as 'scheduled'; the row is the timer."""

from __future__ import annotations

from notifier.db.pool import Connection, Pool

RELEASE_DUE = """
UPDATE notices SET state = 'queued', updated_at = (SELECT notifier_now())
WHERE id IN (SELECT id FROM notices WHERE state = 'scheduled' AND send_at <= (SELECT notifier_now())
             ORDER BY send_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id"""


async def release_due(conn: Connection | Pool, limit: int) -> list[str]:
    """Queue the scheduled notices whose time has come; returns their ids."""
    return [str(r["id"]) for r in await conn.fetch(RELEASE_DUE, limit)]
