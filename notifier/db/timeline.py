"""notice_events, and one recipient's timeline: what happened to a notice that is not a delivery
or a receipt (steps fired, steps that reached nobody, recall, expiry), never silent.

An event concerns the whole notice (``member_id`` NULL), one member, or -- aggregated, one row
per step however many members it names -- the members listed in ``members``. Lists are keyset
pages in ``(at, id)`` order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.db.pool import Connection, Pool, Record

EVENT = "INSERT INTO notice_events (notice_id, member_id, kind, detail) VALUES ($1, $2, $3, $4)"
EVENT_FOR_MEMBERS = "INSERT INTO notice_events (notice_id, kind, detail, members) VALUES ($1, $2, $3, $4)"

_PAGE_COLUMNS = "id, member_id, kind, detail, at, coalesce(cardinality(members), 0) AS members"
PAGE_FIRST = f"""
SELECT {_PAGE_COLUMNS} FROM notice_events WHERE notice_id = $1 ORDER BY at, id LIMIT $2"""
PAGE_AFTER = f"""
SELECT {_PAGE_COLUMNS} FROM notice_events WHERE notice_id = $1 AND (at, id) > ($3, $4)
ORDER BY at, id LIMIT $2"""

# One member's events and the notice's own, as two index scans (an OR of both would read the
# whole notice's events); an aggregated event counts when it names the member.
FOR_RECIPIENT = """
(SELECT id, member_id, kind, detail, at FROM notice_events
 WHERE notice_id = $1 AND member_id = $2 ORDER BY at, id LIMIT $3)
UNION ALL
(SELECT id, member_id, kind, detail, at FROM notice_events
 WHERE notice_id = $1 AND member_id IS NULL AND (members IS NULL OR $2 = ANY(members))
 ORDER BY at, id LIMIT $3)
ORDER BY at, id LIMIT $3"""

RECIPIENT_DELIVERIES = """
SELECT channel, step, state, wait_reason, attempts, error, created_at, updated_at, sent_at, next_attempt_at
FROM deliveries WHERE notice_id = $1 AND member_id = $2 ORDER BY created_at, step, channel"""


async def record(
    conn: Connection, notice_id: str, kind: str, detail: dict[str, Any], member_id: str | None = None
) -> None:
    await conn.execute(EVENT, notice_id, member_id, kind, detail)


async def record_for_members(
    conn: Connection, notice_id: str, member_ids: list[str], kind: str, detail: dict[str, Any]
) -> None:
    """One event naming many members (``detail`` gains their count); nothing when none."""
    if member_ids:
        await conn.execute(
            EVENT_FOR_MEMBERS, notice_id, kind, {**detail, "members": len(member_ids)}, member_ids
        )


async def page(
    conn: Connection | Pool, notice_id: str, after: tuple[datetime, int] | None, limit: int
) -> list[Record]:
    """Events after the ``(at, id)`` cursor; ``members`` is how many members an event names."""
    if after is None:
        return list(await conn.fetch(PAGE_FIRST, notice_id, limit))
    return list(await conn.fetch(PAGE_AFTER, notice_id, limit, after[0], after[1]))


async def for_recipient(
    conn: Connection | Pool, notice_id: str, member_id: str, limit: int = 1000
) -> list[Record]:
    return list(await conn.fetch(FOR_RECIPIENT, notice_id, member_id, limit))


async def recipient_deliveries(conn: Connection | Pool, notice_id: str, member_id: str) -> list[Record]:
    return list(await conn.fetch(RECIPIENT_DELIVERIES, notice_id, member_id))
