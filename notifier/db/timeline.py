"""notice_events, and one recipient's timeline: what happened to a notice that is not a delivery
or a receipt (steps fired, steps that reached nobody, recall, expiry), never silent.

An event concerns the whole notice (``member_id`` NULL), one member, or -- aggregated, one row
per step however many members it names -- the members listed in ``members``. Lists are keyset
pages in ``(at, id)`` order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.db.pool import Connection, Pool, Record
from notifier.db.units import subtree

EVENT = "INSERT INTO notice_events (notice_id, member_id, kind, detail) VALUES ($1, $2, $3, $4)"
EVENT_FOR_MEMBERS = "INSERT INTO notice_events (notice_id, kind, detail, members) VALUES ($1, $2, $3, $4)"

_PAGE_COLUMNS = "id, member_id, kind, detail, at, coalesce(cardinality(members), 0) AS members"
PAGE_FIRST = f"""
SELECT {_PAGE_COLUMNS} FROM notice_events WHERE notice_id = $1 ORDER BY at, id LIMIT $2"""
PAGE_AFTER = f"""
SELECT {_PAGE_COLUMNS} FROM notice_events WHERE notice_id = $1 AND (at, id) > ($3, $4)
ORDER BY at, id LIMIT $2"""

# A unit's slice of a notice it did not create (db/visibility.py): only the events naming members
# of its subtree; an aggregated event counts (in ``members`` and its detail) only those.
#   $1 notice  $2 limit  $3, $4 cursor (at, id)  $5 the unit, as a one-element text[]
_SLICE = (
    "WITH RECURSIVE "
    + subtree("$5")
    + """,
mine AS MATERIALIZED (SELECT DISTINCT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id)
SELECT e.id, e.member_id, e.kind, e.at, s.n AS members,
       CASE WHEN e.detail ? 'members' THEN jsonb_set(e.detail, '{{members}}', to_jsonb(s.n)) ELSE e.detail END
           AS detail
FROM notice_events e
CROSS JOIN LATERAL (SELECT count(*)::int AS n FROM mine WHERE mine.member_id = ANY(e.members)) s
WHERE e.notice_id = $1 AND {after}
  AND CASE WHEN e.member_id IS NOT NULL THEN e.member_id IN (SELECT member_id FROM mine) ELSE s.n > 0 END
ORDER BY e.at, e.id LIMIT $2"""
)
SLICE_FIRST = _SLICE.format(after="$3::timestamptz IS NULL AND $4::bigint IS NULL")
SLICE_AFTER = _SLICE.format(after="(e.at, e.id) > ($3, $4)")

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

# The same for a caller who sees only a slice: no notice-wide event, and an aggregated event
# without the count of everyone it names.
FOR_RECIPIENT_SLICE = """
(SELECT id, member_id, kind, detail, at FROM notice_events
 WHERE notice_id = $1 AND member_id = $2 ORDER BY at, id LIMIT $3)
UNION ALL
(SELECT id, member_id, kind, detail - 'members', at FROM notice_events
 WHERE notice_id = $1 AND member_id IS NULL AND $2 = ANY(members)
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
    conn: Connection | Pool,
    notice_id: str,
    after: tuple[datetime, int] | None,
    limit: int,
    slice_root: str | None = None,
) -> list[Record]:
    """Events after the ``(at, id)`` cursor; ``members`` is how many members an event names.
    With ``slice_root``: only those naming members of that unit's subtree (and only they counted)."""
    if slice_root is not None:
        at, event_id = after if after is not None else (None, None)
        return list(
            await conn.fetch(
                SLICE_FIRST if after is None else SLICE_AFTER, notice_id, limit, at, event_id, [slice_root]
            )
        )
    if after is None:
        return list(await conn.fetch(PAGE_FIRST, notice_id, limit))
    return list(await conn.fetch(PAGE_AFTER, notice_id, limit, after[0], after[1]))


async def for_recipient(
    conn: Connection | Pool, notice_id: str, member_id: str, limit: int = 1000, *, whole: bool = True
) -> list[Record]:
    """The member's events and (``whole``: the caller sees the whole notice) the notice's own."""
    return list(
        await conn.fetch(FOR_RECIPIENT if whole else FOR_RECIPIENT_SLICE, notice_id, member_id, limit)
    )


async def recipient_deliveries(conn: Connection | Pool, notice_id: str, member_id: str) -> list[Record]:
    return list(await conn.fetch(RECIPIENT_DELIVERIES, notice_id, member_id))
