"""One member's notice history: what they received, when, and whether and when they read it,
newest first in keyset pages over recipients_member_idx."""

from __future__ import annotations

from datetime import datetime

from notifier.db.pool import Connection, Record

# Only what the caller may see of them (db/visibility.py): for a caller bound to unit $8, the
# notices listed under it in notice_reach -- everything that reached its subtree, but of escalation
# summaries (about someone else's notice, listed only under their creating unit and those above)
# only its own; $8 NULL (an admin, the member's own key): all.
#   $1 member  $2 kind (NULL: any)  $3 from  $4 to (received in [from, to))  $5 limit  $6, $7 cursor
#   $8 the caller's unit (NULL: no bound)
_PAGE = """
SELECT r.notice_id, n.kind, n.title, n.state, n.parent_notice_id IS NOT NULL AS summary,
       r.created_at AS received_at, r.dstatus, r.delivered_at, r.read_at, r.read_via,
       (SELECT count(*) FROM deliveries d
        WHERE d.notice_id = r.notice_id AND d.member_id = r.member_id AND d.step > 0) AS reminders
FROM recipients r JOIN notices n ON n.id = r.notice_id
WHERE r.member_id = $1 AND ($2::text IS NULL OR n.kind = $2)
  AND ($3::timestamptz IS NULL OR r.created_at >= $3) AND ($4::timestamptz IS NULL OR r.created_at < $4)
  AND {after}
  AND ($8::text IS NULL OR EXISTS (SELECT 1 FROM notice_reach nr WHERE nr.notice_id = n.id AND nr.unit_id = $8))
ORDER BY r.created_at DESC, r.notice_id DESC
LIMIT $5"""
PAGE_FIRST = _PAGE.format(after="$6::timestamptz IS NULL AND $7::uuid IS NULL")
PAGE_AFTER = _PAGE.format(after="(r.created_at, r.notice_id) < ($6::timestamptz, $7::uuid)")


async def page(
    conn: Connection,
    member_id: str,
    *,
    kind: str | None,
    received_from: datetime | None,
    received_to: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
    root: str | None,
) -> list[Record]:
    statement, cursor = (PAGE_FIRST, (None, None)) if after is None else (PAGE_AFTER, after)
    return list(
        await conn.fetch(statement, member_id, kind, received_from, received_to, limit, *cursor, root)
    )
