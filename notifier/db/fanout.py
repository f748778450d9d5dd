"""The fan-out statement: a notice's audience becomes recipients and deliveries, in SQL.

The recipients' statuses it writes are the ones the deliveries trigger would compute (inserted
deliveries only raise a recipient's status: schemas/0006), so the trigger has nothing to move and
the statement tells it so (schemas/0028); the recipients themselves are counted here, in the
notice's counters and in every unit whose subtree holds them (their snapshot of counted units: schemas/0010).
"""

from __future__ import annotations

from notifier.db.contacts import newest_working
from notifier.db.pool import Connection, Record
from notifier.db.units import ancestors, audience_members, subtree

# One fan-out chunk, entirely inside PostgreSQL: resolve the audience (unit subtrees + named
# members, deduplicated, next `limit` member ids after the cursor), plan one delivery per
# (member, channel) with the member's newest working contact, insert deliveries and recipients
# (ON CONFLICT DO NOTHING makes a re-run harmless) and add the new recipients to the counters:
# the notice's, and per unit (walked up once per unit of the chunk, not per member).
#   $1 notice  $2 audience units  $3 audience members  $4 cursor  $5 limit
#   $6 channels  $7 needs_contact  $8 delivers_on_insert  $9 fallback
FANOUT_CHUNK = (
    "WITH RECURSIVE "
    + subtree("$2")
    + f""",
-- The deliveries insert trigger has nothing to move (the docstring): this statement tells it so
-- (schemas/0028); the trigger clears the setting again.
clock AS (SELECT notifier_now() AS now, set_config('notifier.fanout_statement', 'on', true) AS fanout),
notice AS (
    -- listed_at: the inbox lists the notice at its own time, not the fan-out's (schemas/0029).
    -- An escalation summary reaches no unit by fan-out: it is about someone else's notice, so
    -- only its creating unit and those above see it (schemas/0010's trigger), admins always.
    SELECT created_at, coalesce(send_at, created_at) AS listed_at, parent_notice_id IS NOT NULL AS summary
    FROM notices WHERE id = $1
),
aud AS (
    SELECT member_id FROM {audience_members("$3")} a
    WHERE $4::text IS NULL OR member_id > $4
    ORDER BY member_id LIMIT $5
),
aud_mu AS (SELECT mu.member_id, mu.unit_id FROM member_units mu JOIN aud a ON a.member_id = mu.member_id),
{ancestors("SELECT DISTINCT unit_id, unit_id FROM aud_mu", "start")},
counted AS (
    SELECT mu.member_id, array_agg(DISTINCT up.id ORDER BY up.id) AS units,
           array_agg(DISTINCT mu.unit_id ORDER BY mu.unit_id) AS direct_units
    FROM aud_mu mu JOIN up ON up.start = mu.unit_id GROUP BY mu.member_id
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
    LEFT JOIN LATERAL ({newest_working("a.member_id", "ch.channel", when="ch.needs_contact")}) k ON true
),
-- Without fallback every listed channel is used; with it, each member gets the first channel
-- (in the notice's order) they can be reached on, or a failed first channel when none works.
plan AS (
    SELECT member_id, channel, contact_id, state FROM plan_all WHERE NOT $9::bool
    UNION ALL
    (SELECT DISTINCT ON (member_id) member_id, channel, contact_id, state FROM plan_all WHERE $9::bool
     ORDER BY member_id, state = 'failed', ord)
),
ins_d AS (
    -- Timestamps set explicitly from one reading of the engine clock: column defaults would call
    -- notifier_now() once per row.
    INSERT INTO deliveries (notice_id, member_id, channel, contact_id, state, attempts, error,
                            next_attempt_at, created_at, updated_at, listed_at)
    SELECT $1, member_id, channel, contact_id, state, (state = 'delivered')::int,
           CASE WHEN state = 'failed' THEN 'no working contact for this channel' END,
           clock.now, clock.now, clock.now, notice.listed_at
    FROM plan CROSS JOIN clock CROSS JOIN notice
    ON CONFLICT (notice_id, member_id, channel, step) DO NOTHING
),
roll AS (
    -- the precedence of schemas/0006 over what the plan can hold
    SELECT member_id, recipient_status(max(delivery_rank(state))) AS dstatus FROM plan GROUP BY member_id
),
ins_r AS (
    INSERT INTO recipients (notice_id, member_id, dstatus, delivered_at, created_at, units, direct_units)
    SELECT $1, roll.member_id, dstatus, CASE WHEN dstatus = 'delivered' THEN clock.now END, clock.now,
           coalesce(c.units, '{{}}'), coalesce(c.direct_units, '{{}}')
    FROM roll CROSS JOIN clock LEFT JOIN counted c ON c.member_id = roll.member_id
    ON CONFLICT DO NOTHING
    RETURNING dstatus, units, direct_units
),
per_unit AS (
    SELECT unit_id, direct, count(*) AS n, count(*) FILTER (WHERE dstatus = 'queued') AS queued,
           count(*) FILTER (WHERE dstatus = 'delivered') AS delivered,
           count(*) FILTER (WHERE dstatus = 'failed') AS failed
    FROM (SELECT dstatus, unnest(units) AS unit_id, false AS direct FROM ins_r
          UNION ALL SELECT dstatus, unnest(direct_units), true FROM ins_r) x
    GROUP BY unit_id, direct
),
cnt_u AS (
    INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, recipients, queued, delivered, failed)
    SELECT $1, unit_id, direct, notice_count_shard(), n, queued, delivered, failed
    FROM per_unit ORDER BY unit_id, direct
    ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET
        recipients = k.recipients + excluded.recipients, queued = k.queued + excluded.queued,
        delivered = k.delivered + excluded.delivered, failed = k.failed + excluded.failed
),
reach AS (
    INSERT INTO notice_reach (notice_id, unit_id, created_at)
    SELECT $1, unit_id, notice.created_at FROM per_unit CROSS JOIN notice WHERE NOT direct AND NOT notice.summary
    ON CONFLICT DO NOTHING
),
cnt AS (
    INSERT INTO notice_counts (notice_id, shard, recipients, queued, delivered, failed)
    SELECT $1, notice_count_shard(), count(*), count(*) FILTER (WHERE dstatus = 'queued'),
           count(*) FILTER (WHERE dstatus = 'delivered'), count(*) FILTER (WHERE dstatus = 'failed')
    FROM ins_r
    ON CONFLICT (notice_id, shard) DO UPDATE SET
        recipients = notice_counts.recipients + excluded.recipients,
        queued = notice_counts.queued + excluded.queued,
        delivered = notice_counts.delivered + excluded.delivered,
        failed = notice_counts.failed + excluded.failed
)
SELECT (SELECT count(*) FROM aud) AS n, (SELECT max(member_id) FROM aud) AS last_member,
       coalesce((SELECT array_agg(DISTINCT channel) FROM plan WHERE state = 'queued'), '{{}}') AS queued_channels
"""
)


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
    fallback: bool = False,
) -> Record:
    row = await conn.fetchrow(
        FANOUT_CHUNK, notice_id, units, members, cursor, limit, channels, needs_contact, on_insert, fallback
    )
    assert row is not None
    return row
