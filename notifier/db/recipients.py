"""recipients: one row per (notice, member), the status API's view of who got and read a notice.

The fan-out (db/fanout.py) creates the rows; reads are recorded by db/receipts.py; a recipient's
``dstatus`` and the notice's counters follow its deliveries by themselves (the triggers of
schemas/0006). This module reads them: one recipient, and the keyset-paged listing.
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record
from notifier.db.units import SUBTREE_CTE

GET = (
    "SELECT notice_id, member_id, dstatus, delivered_at, read_at, read_via FROM recipients "
    "WHERE notice_id = $1 AND member_id = $2"
)

# Keyset page of recipients. status: read | unread filter on the read receipt; queued | sent |
# delivered | failed | cancelled on the delivery outcome, read or not -- the same partition the
# counters count, so a listing and its count always agree.
PAGE = (
    SUBTREE_CTE.replace("$1", "$5")
    + """
SELECT r.member_id, m.name, r.dstatus, r.delivered_at, r.read_at,
       coalesce((SELECT array_agg(unit_id ORDER BY unit_id) FROM member_units WHERE member_id = r.member_id),
                '{}') AS units
FROM recipients r JOIN members m ON m.id = r.member_id
WHERE r.notice_id = $1
  AND ($2::text IS NULL OR r.member_id > $2)
  AND CASE $3::text
        WHEN 'read' THEN r.read_at IS NOT NULL
        WHEN 'unread' THEN r.read_at IS NULL
        WHEN '' THEN true
        ELSE r.dstatus = $3 END
  AND (cardinality($5::text[]) = 0 OR EXISTS (
        SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id WHERE mu.member_id = r.member_id))
ORDER BY r.member_id
LIMIT $4"""
)

DELIVERIES_FOR = """
SELECT member_id, channel, step, state, attempts, error, updated_at, next_attempt_at, wait_reason
FROM deliveries WHERE notice_id = $1 AND member_id = ANY($2::text[])
ORDER BY member_id, step, channel"""


async def get(conn: Connection, notice_id: str, member_id: str) -> Record | None:
    return await conn.fetchrow(GET, notice_id, member_id)


async def page(
    conn: Connection,
    notice_id: str,
    *,
    after: str | None,
    status: str,
    limit: int,
    unit_id: str | None,
) -> list[Record]:
    return list(await conn.fetch(PAGE, notice_id, after, status, limit, [unit_id] if unit_id else []))


async def deliveries_for(conn: Connection, notice_id: str, member_ids: list[str]) -> list[Record]:
    return list(await conn.fetch(DELIVERIES_FOR, notice_id, member_ids))
