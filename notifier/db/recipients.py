"""recipients: one row per (notice, member), the status API's view of who got and read a notice.

The fan-out (db/fanout.py) creates the rows; reads are recorded by db/receipts.py; a recipient's
``dstatus`` and the notice's counters follow its deliveries by themselves (the triggers of
schemas/0006). This module reads them: one recipient, and the keyset-paged listing.
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record
from notifier.db.units import subtree

GET = (
    "SELECT notice_id, member_id, dstatus, delivered_at, read_at, read_via FROM recipients "
    "WHERE notice_id = $1 AND member_id = $2"
)

# Keyset page of recipients. status: read | unread filter on the read receipt; queued | sent |
# delivered | failed | cancelled on the delivery outcome, read or not -- the same partition the
# counters count, so a listing and its count always agree.
# One statement per (status, first page or not), with the predicates written out, so that even a
# cached generic plan walks the matching partial index (recipients_unread_idx / _read_idx) in
# member order from the cursor instead of filtering every recipient of the notice.
#   $1 notice  $2 limit  $3 units (empty: any)  $4 cursor  $5 delivery status
_PAGE = (
    "WITH RECURSIVE "
    + subtree("$3")
    + """
SELECT r.member_id, m.name, r.dstatus, r.delivered_at, r.read_at,
       coalesce((SELECT array_agg(unit_id ORDER BY unit_id) FROM member_units WHERE member_id = r.member_id),
                '{{}}') AS units
FROM recipients r JOIN members m ON m.id = r.member_id
WHERE r.notice_id = $1 AND {after} AND {status}
  AND (cardinality($3::text[]) = 0 OR EXISTS (
        SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id WHERE mu.member_id = r.member_id))
ORDER BY r.member_id
LIMIT $2"""
)
_STATUS = {
    "": "true",
    "read": "r.read_at IS NOT NULL",
    "unread": "r.read_at IS NULL",
    "dstatus": "r.dstatus = $5",
}
PAGES = {
    (status, after): _PAGE.format(status=cond, after="r.member_id > $4" if after else "$4::text IS NULL")
    for status, cond in _STATUS.items()
    for after in (False, True)
}

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
    kind = status if status in ("", "read", "unread") else "dstatus"
    args: list[object] = [notice_id, limit, [unit_id] if unit_id else [], after]
    if kind == "dstatus":
        args.append(status)
    return list(await conn.fetch(PAGES[kind, after is not None], *args))


async def deliveries_for(conn: Connection, notice_id: str, member_ids: list[str]) -> list[Record]:
    return list(await conn.fetch(DELIVERIES_FOR, notice_id, member_ids))
