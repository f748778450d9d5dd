"""A member's in-app inbox: every notice that reached them in-app, newest first.

A notice is listed once, at its newest in-app delivery, under that delivery's ``listed_at``
(schemas/0029): the notice's time for the first delivery -- not when the fan-out reached the
member, which depends on worker timing -- and the reminder's time for an escalation step that
reminds in-app, which brings the notice back to the top, marked with ``reminded_at``. Ties break
on the notice id, so the order is total and the keyset cursor exact.
"""

from __future__ import annotations

from datetime import datetime

from notifier.db.pool import Connection, Record

#   $1 member  $2 unread only  $3, $4 keyset (shown_at, notice id)  $5 limit  $6 visible units (NULL: all)
PAGE = """
SELECT n.id, n.kind, n.title, n.body, n.created_at, n.state, r.read_at, d.listed_at AS shown_at,
       CASE WHEN d.step > 0 THEN d.created_at END AS reminded_at
FROM deliveries d
JOIN notices n ON n.id = d.notice_id
JOIN recipients r ON r.notice_id = d.notice_id AND r.member_id = d.member_id
WHERE d.member_id = $1 AND d.channel = 'inapp' AND d.state = 'delivered'
  AND NOT EXISTS (  -- the newest in-app delivery of the notice stands for it
      SELECT 1 FROM deliveries later
      WHERE later.notice_id = d.notice_id AND later.member_id = d.member_id AND later.channel = 'inapp'
        AND later.step > d.step AND later.state = 'delivered')
  AND (NOT $2::bool OR r.read_at IS NULL)
  AND ($3::timestamptz IS NULL OR (d.listed_at, d.notice_id) < ($3, $4::uuid))
  AND ($6::text[] IS NULL OR n.scope_unit_id = ANY($6::text[]))  -- a unit-bound key sees its units' notices
ORDER BY d.listed_at DESC, d.notice_id DESC
LIMIT $5"""


async def page(
    conn: Connection,
    member_id: str,
    *,
    unread_only: bool,
    after: tuple[datetime, str] | None,
    limit: int,
    units: list[str] | None,
) -> list[Record]:
    after_ts, after_id = after if after is not None else (None, None)
    return list(await conn.fetch(PAGE, member_id, unread_only, after_ts, after_id, limit, units))
