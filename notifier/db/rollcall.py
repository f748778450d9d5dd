"""The roll-call of a notice: its unread recipients inside a set of unit subtrees, one row per
(unit, member) in (unit id, member id) order, each with what its deliveries and the escalation
have done so far -- all in one statement per keyset page (no query per recipient).

A member sits under each of their units inside the roots' subtrees (and only those: units
elsewhere are never named). Roots NULL: an admin, every unit.
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record
from notifier.db.units import subtree

# $1 notice  $2 roots (NULL: every unit)  $3 limit  $4, $5 cursor (unit id, member id)
# The page walks member_units in (unit_id, member_id) order and probes each member's recipient
# row; names are looked up per row of the page (a join would let the planner hash every member),
# and the LATERALs read that member's deliveries through the (notice, member, ...) unique index.
# Per channel the best delivery stands (the precedence of schemas/0006, newest first among
# equals): what reached the member furthest says why they have not read.
_PAGE = (
    "WITH RECURSIVE "
    + subtree("$2")
    + """,
page AS (
    SELECT mu.unit_id, r.member_id, r.dstatus, r.delivered_at
    FROM member_units mu
    JOIN recipients r ON r.notice_id = $1 AND r.member_id = mu.member_id AND r.read_at IS NULL
    WHERE ($2::text[] IS NULL OR mu.unit_id IN (SELECT id FROM sub)) AND {after}
    ORDER BY mu.unit_id, mu.member_id
    LIMIT $3
)
SELECT p.unit_id, (SELECT u.name FROM units u WHERE u.id = p.unit_id) AS unit_name,
       p.member_id, (SELECT m.name FROM members m WHERE m.id = p.member_id) AS name, p.dstatus, p.delivered_at,
       coalesce(ch.channels, '[]') AS channels, coalesce(esc.reminders, '[]') AS reminders
FROM page p
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
               'channel', b.channel, 'state', b.state, 'wait_reason', b.wait_reason, 'error', b.error,
               'no_contact', b.state = 'failed' AND b.contact_id IS NULL, 'attempts', b.attempts,
               'step', b.step, 'sent_at', b.sent_at, 'updated_at', b.updated_at,
               'next_attempt_at', b.next_attempt_at) ORDER BY b.channel) AS channels
    FROM (SELECT DISTINCT ON (d.channel) d.channel, d.state, d.wait_reason, d.error, d.contact_id,
                 d.attempts, d.step, d.sent_at, d.updated_at, d.next_attempt_at
          FROM deliveries d WHERE d.notice_id = $1 AND d.member_id = p.member_id
          ORDER BY d.channel, delivery_rank(d.state) DESC, d.updated_at DESC, d.id DESC) b
) ch ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
               'channel', d.channel, 'step', d.step, 'state', d.state, 'wait_reason', d.wait_reason,
               'error', d.error, 'no_contact', d.state = 'failed' AND d.contact_id IS NULL,
               'attempts', d.attempts, 'at', d.created_at, 'sent_at', d.sent_at, 'updated_at', d.updated_at,
               'next_attempt_at', d.next_attempt_at) ORDER BY d.created_at, d.step, d.channel) AS reminders
    FROM deliveries d WHERE d.notice_id = $1 AND d.member_id = p.member_id AND d.step > 0
) esc ON true
ORDER BY p.unit_id, p.member_id"""
)
PAGE_FIRST = _PAGE.format(after="$4::text IS NULL AND $5::text IS NULL")
PAGE_AFTER = _PAGE.format(after="(mu.unit_id, mu.member_id) > ($4::text, $5::text)")

# What the escalation did that concerns these members and is not a delivery to them: steps that
# told the secretaries or the officer on duty (notice-wide), and steps that could not reach them.
# A not_reached event names every member a step missed (100,000 of them, maybe): only the page's
# are returned (a hashed INTERSECT), so a page costs O(its members + the event's), not their product.
ESCALATION_EVENTS = """
SELECT at, kind, detail,
       CASE WHEN kind = 'not_reached'
            THEN ARRAY(SELECT unnest(members) INTERSECT SELECT unnest($2::text[])) END AS members
FROM notice_events
WHERE notice_id = $1 AND member_id IS NULL
  AND (kind = 'step_fired' AND detail ? 'notified'
       OR kind = 'not_reached' AND members && $2::text[])
ORDER BY at, id LIMIT 1000"""


async def page(
    conn: Connection, notice_id: str, roots: list[str] | None, after: tuple[str, str] | None, limit: int
) -> list[Record]:
    """Unread recipients after the ``(unit id, member id)`` cursor, with their deliveries."""
    if after is None:
        return list(await conn.fetch(PAGE_FIRST, notice_id, roots, limit, None, None))
    return list(await conn.fetch(PAGE_AFTER, notice_id, roots, limit, after[0], after[1]))


async def escalation_events(conn: Connection, notice_id: str, member_ids: list[str]) -> list[Record]:
    return list(await conn.fetch(ESCALATION_EVENTS, notice_id, member_ids))
