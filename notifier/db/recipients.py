"""recipients: fan-out (audience -> recipients + deliveries, in SQL), the per-recipient roll-up,
read receipts and the status listing."""

from __future__ import annotations

from notifier.db.pool import Connection, Record
from notifier.db.units import SUBTREE_CTE

# One fan-out chunk, entirely inside PostgreSQL: resolve the audience (unit subtrees + named
# members, deduplicated, next `limit` member ids after the cursor), plan one delivery per
# (member, channel) with the member's newest working contact, insert deliveries and recipients
# (ON CONFLICT DO NOTHING makes a re-run harmless) and add the new recipients to the counters.
#   $1 notice  $2 audience units  $3 audience members  $4 cursor  $5 limit
#   $6 channels  $7 needs_contact  $8 delivers_on_insert  $9 counter shard  $10 fallback
FANOUT_CHUNK = (
    SUBTREE_CTE.replace("$1", "$2")
    + """,
clock AS (SELECT notifier_now() AS now),
aud AS (
    SELECT member_id FROM (
        SELECT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id
        UNION
        SELECT m.id FROM members m WHERE m.id = ANY($3::text[])
    ) a
    WHERE $4::text IS NULL OR member_id > $4
    ORDER BY member_id LIMIT $5
),
ch AS (
    SELECT * FROM unnest($6::text[], $7::bool[], $8::bool[]) WITH ORDINALITY AS c(channel, needs_contact, on_insert, ord)
),
plan_all AS (
    SELECT a.member_id, ch.channel, ch.ord, k.id AS contact_id,
           CASE WHEN ch.on_insert THEN 'delivered'
                WHEN ch.needs_contact AND k.id IS NULL THEN 'failed'
                ELSE 'queued' END AS state
    FROM aud a CROSS JOIN ch
    LEFT JOIN LATERAL (
        SELECT id FROM contacts
        WHERE ch.needs_contact AND contacts.member_id = a.member_id AND contacts.channel = ch.channel
          AND contacts.disabled_at IS NULL
        ORDER BY created_at DESC LIMIT 1
    ) k ON true
),
-- Without fallback every listed channel is used; with it, each member gets the first channel
-- (in the notice's order) they can be reached on, or a failed first channel when none works.
plan AS (
    SELECT member_id, channel, contact_id, state FROM plan_all WHERE NOT $10::bool
    UNION ALL
    (SELECT DISTINCT ON (member_id) member_id, channel, contact_id, state FROM plan_all WHERE $10::bool
     ORDER BY member_id, state = 'failed', ord)
),
ins_d AS (
    -- Timestamps set explicitly from one reading of the engine clock: column defaults would call
    -- notifier_now() once per row.
    INSERT INTO deliveries (notice_id, member_id, channel, contact_id, state, attempts, error,
                            next_attempt_at, created_at, updated_at)
    SELECT $1, member_id, channel, contact_id, state, (state = 'delivered')::int,
           CASE WHEN state = 'failed' THEN 'no working contact for this channel' END,
           clock.now, clock.now, clock.now
    FROM plan CROSS JOIN clock
    ON CONFLICT (notice_id, member_id, channel, step) DO NOTHING
),
roll AS (
    SELECT member_id,
           CASE WHEN bool_or(state = 'delivered') THEN 'delivered'
                WHEN bool_or(state = 'queued') THEN 'queued' ELSE 'failed' END AS dstatus
    FROM plan GROUP BY member_id
),
ins_r AS (
    INSERT INTO recipients (notice_id, member_id, dstatus, delivered_at, created_at)
    SELECT $1, member_id, dstatus, CASE WHEN dstatus = 'delivered' THEN clock.now END, clock.now
    FROM roll CROSS JOIN clock
    ON CONFLICT DO NOTHING
    RETURNING dstatus
),
cnt AS (
    INSERT INTO notice_counts (notice_id, shard, recipients, queued, delivered, failed)
    SELECT $1, $9, count(*), count(*) FILTER (WHERE dstatus = 'queued'),
           count(*) FILTER (WHERE dstatus = 'delivered'), count(*) FILTER (WHERE dstatus = 'failed')
    FROM ins_r
    ON CONFLICT (notice_id, shard) DO UPDATE SET
        recipients = notice_counts.recipients + excluded.recipients,
        queued = notice_counts.queued + excluded.queued,
        delivered = notice_counts.delivered + excluded.delivered,
        failed = notice_counts.failed + excluded.failed
)
SELECT (SELECT count(*) FROM aud) AS n, (SELECT max(member_id) FROM aud) AS last_member,
       coalesce((SELECT array_agg(DISTINCT channel) FROM plan WHERE state = 'queued'), '{}') AS queued_channels
"""
)

# Serialise roll-ups of the same recipients (sorted, so batches never deadlock).
LOCK_RECIPIENTS = """
SELECT 1 FROM recipients r JOIN unnest($1::uuid[], $2::text[]) AS p(notice_id, member_id)
  ON r.notice_id = p.notice_id AND r.member_id = p.member_id
ORDER BY r.notice_id, r.member_id FOR UPDATE OF r"""

# Recompute each recipient's best delivery state from its deliveries and move the counters by
# the difference. Runs after LOCK_RECIPIENTS in the same transaction, so it sees every
# delivery committed before the lock was granted.
ROLL_UP = """
WITH pairs AS (SELECT DISTINCT * FROM unnest($1::uuid[], $2::text[]) AS p(notice_id, member_id)),
best AS (
    SELECT d.notice_id, d.member_id,
           CASE WHEN bool_or(d.state = 'delivered') THEN 'delivered'
                WHEN bool_or(d.state IN ('sent', 'unknown')) THEN 'sent'
                WHEN bool_or(d.state IN ('queued', 'sending')) THEN 'queued' ELSE 'failed' END AS dstatus
    FROM deliveries d JOIN pairs p ON p.notice_id = d.notice_id AND p.member_id = d.member_id
    GROUP BY d.notice_id, d.member_id
),
old AS (
    SELECT r.notice_id, r.member_id, r.dstatus AS old_status, b.dstatus AS new_status
    FROM recipients r JOIN best b ON b.notice_id = r.notice_id AND b.member_id = r.member_id
    WHERE r.dstatus <> b.dstatus
),
upd AS (
    UPDATE recipients r SET dstatus = o.new_status,
        delivered_at = CASE WHEN o.new_status = 'delivered' THEN coalesce(r.delivered_at, (SELECT notifier_now()))
                            ELSE r.delivered_at END
    FROM old o WHERE r.notice_id = o.notice_id AND r.member_id = o.member_id
    RETURNING r.notice_id, o.old_status, o.new_status
)
INSERT INTO notice_counts AS c (notice_id, shard, queued, sent, delivered, failed)
SELECT notice_id, $3,
       sum((new_status = 'queued')::int - (old_status = 'queued')::int),
       sum((new_status = 'sent')::int - (old_status = 'sent')::int),
       sum((new_status = 'delivered')::int - (old_status = 'delivered')::int),
       sum((new_status = 'failed')::int - (old_status = 'failed')::int)
FROM upd GROUP BY notice_id
ON CONFLICT (notice_id, shard) DO UPDATE SET
    queued = c.queued + excluded.queued, sent = c.sent + excluded.sent,
    delivered = c.delivered + excluded.delivered, failed = c.failed + excluded.failed"""

# The first read wins, and is counted with it; reminders still waiting for that member are
# cancelled. Set-based: one statement for any number of (notice, member) pairs.
MARK_READ = """
WITH p AS (SELECT DISTINCT * FROM unnest($1::uuid[], $2::text[]) AS p(notice_id, member_id)),
r AS (
    UPDATE recipients t SET read_at = (SELECT notifier_now()), read_via = $3
    FROM p WHERE t.notice_id = p.notice_id AND t.member_id = p.member_id AND t.read_at IS NULL
    RETURNING t.notice_id, t.member_id
),
c AS (
    UPDATE deliveries d SET state = 'cancelled', error = 'read before it went out', wait_reason = NULL,
        updated_at = (SELECT notifier_now())
    FROM r WHERE d.notice_id = r.notice_id AND d.member_id = r.member_id AND d.step > 0 AND d.state = 'queued'
),
k AS (
    INSERT INTO notice_counts AS k (notice_id, shard, read)
    SELECT notice_id, $4, count(*) FROM r GROUP BY notice_id
    ON CONFLICT (notice_id, shard) DO UPDATE SET read = k.read + excluded.read
)
SELECT notice_id, member_id FROM r"""
GET = (
    "SELECT notice_id, member_id, dstatus, delivered_at, read_at, read_via FROM recipients "
    "WHERE notice_id = $1 AND member_id = $2"
)

# Keyset page of recipients; status: read | unread | queued | sent | delivered | failed.
# One statement per (status, first page or not), with the predicates written out, so that even a
# cached generic plan walks the matching partial index (recipients_unread_idx / _read_idx) in
# member order from the cursor instead of filtering every recipient of the notice.
#   $1 notice  $2 limit  $3 units (empty: any)  $4 cursor  $5 delivery status
_PAGE = (
    SUBTREE_CTE.replace("$1", "$3")
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
    "dstatus": "r.read_at IS NULL AND r.dstatus = $5",
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

INBOX = """
SELECT n.id, n.kind, n.title, n.body, n.created_at, n.state, r.read_at, d.created_at AS delivered_at
FROM deliveries d
JOIN notices n ON n.id = d.notice_id
JOIN recipients r ON r.notice_id = d.notice_id AND r.member_id = d.member_id
WHERE d.member_id = $1 AND d.channel = 'inapp' AND d.step = 0
  AND (NOT $2::bool OR r.read_at IS NULL)
  AND ($3::timestamptz IS NULL OR (d.created_at, d.notice_id) < ($3, $4::uuid))
  AND ($6::text[] IS NULL OR n.scope_unit_id = ANY($6::text[]))  -- a unit-bound key sees its units' notices
ORDER BY d.created_at DESC, d.notice_id DESC
LIMIT $5"""


async def fanout_chunk(
    conn: Connection,
    notice_id: str,
    units: list[str],
    members: list[str],
    cursor: str | None,
    limit: int,
    channels: list[str],
    needs_contact: list[bool],
    on_insert: list[bool],
    shard: int,
    fallback: bool = False,
) -> Record:
    row = await conn.fetchrow(
        FANOUT_CHUNK,
        notice_id,
        units,
        members,
        cursor,
        limit,
        channels,
        needs_contact,
        on_insert,
        shard,
        fallback,
    )
    assert row is not None
    return row


async def roll_up(conn: Connection, notice_ids: list[str], member_ids: list[str], shard: int) -> None:
    if not notice_ids:
        return
    await conn.execute(LOCK_RECIPIENTS, notice_ids, member_ids)
    await conn.execute(ROLL_UP, notice_ids, member_ids, shard)


async def mark_read(conn: Connection, notice_id: str, member_id: str, via: str, shard: int) -> bool:
    """Record (and count) the first read; True when this call recorded it."""
    return bool(await mark_read_many(conn, [notice_id], [member_id], via, shard))


async def mark_read_many(
    conn: Connection, notice_ids: list[str], member_ids: list[str], via: str, shard: int
) -> list[Record]:
    """Record (and count) first reads; returns the pairs this call recorded."""
    if len(notice_ids) > 1:
        await conn.execute(LOCK_RECIPIENTS, notice_ids, member_ids)  # sorted: no deadlocks
    return list(await conn.fetch(MARK_READ, notice_ids, member_ids, via, shard))


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
