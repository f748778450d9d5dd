"""Scheduled sends: a notice with a future ``send_at`` waits as 'scheduled'; the row is the timer."""

from __future__ import annotations

from notifier.db.pool import Connection, Pool

RELEASE_DUE = """
UPDATE notices SET state = 'queued', updated_at = (SELECT notifier_now())
WHERE id IN (SELECT id FROM notices WHERE state = 'scheduled' AND send_at <= (SELECT notifier_now())
             ORDER BY send_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id"""

# Seconds until the soonest scheduled notice is due (NULL: none waits), for the tick's look-ahead.
NEXT_DUE = """
SELECT extract(epoch FROM min(send_at) - (SELECT notifier_now()))::float8
FROM notices WHERE state = 'scheduled' AND send_at > (SELECT notifier_now())"""


async def release_due(conn: Connection | Pool, limit: int) -> list[str]:
    """Queue the scheduled notices whose time has come; returns their ids."""
    return [str(r["id"]) for r in await conn.fetch(RELEASE_DUE, limit)]


async def seconds_to_next_due(conn: Connection) -> float | None:
    """Seconds until the soonest scheduled notice is due (None: none waits)."""
    seconds = await conn.fetchval(NEXT_DUE)
    return None if seconds is None else float(seconds)
