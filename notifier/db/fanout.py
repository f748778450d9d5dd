"""The fan-out statements: a notice's audience becomes recipients and deliveries, in SQL.

The recipients' statuses it writes are the ones the deliveries trigger would compute (inserted
deliveries only raise a recipient's status: schemas/0006), so the trigger has nothing to move and
the statement tells it so (schemas/0028); the recipients themselves are counted in the same
transaction, in the notice's counters and in every unit whose subtree holds them (their snapshot
of counted units: schemas/0010).

A big notice fans out in parts at once (schemas/0032): each part is a range of member ids, each
chunk statement resolves only its own range, and the counting statement after it runs under
a per-notice lock, so that the report slots' "first recipients of this notice in this unit"
check (schemas/0011) sees the other parts' committed counts.
"""

from __future__ import annotations

from notifier.db.contacts import newest_working
from notifier.db.pool import Connection, Record
from notifier.db.units import ancestors, audience_members, subtree

# One fan-out chunk, entirely inside PostgreSQL: resolve the audience (unit subtrees + named
# members, deduplicated), plan one delivery per (member, channel) with the member's newest
# working contact, insert deliveries and recipients (the _RERUN variants skip those that exist:
# a re-run is harmless) and return what the inserted recipients add to the counters, per unit already
# summed: members with the same direct units share their units (the ancestors are walked once
# per unit of the chunk, their union taken once per distinct set of direct units), and the
# per-unit counts are summed over those groups before they are expanded to units, not per
# member. Two ways to find the chunk's members (CTEs aud, direct and the walk's starts):
#
# FANOUT_CHUNK, a notice's first chunks: the next `limit` audience members above the cursor,
# found through the audience's units (a small audience in a big organisation reads only its own).
#   $1 notice  $2 audience units  $3 audience members  $4 cursor  $5 limit
#   $6 channels  $7 needs_contact  $8 delivers_on_insert  $9 fallback  $10 optional
_FIRST = f"""
aud AS (
    SELECT member_id FROM {audience_members("$3")} a
    WHERE $4::text IS NULL OR member_id > $4
    ORDER BY member_id LIMIT $5
),
aud_mu AS (SELECT mu.member_id, mu.unit_id FROM member_units mu JOIN aud a ON a.member_id = mu.member_id),
{ancestors("SELECT DISTINCT unit_id, unit_id FROM aud_mu", "start")},
direct AS (
    SELECT member_id, array_agg(unit_id ORDER BY unit_id) AS direct_units FROM aud_mu GROUP BY member_id
),"""
# FANOUT_PART_CHUNK, a chunk of a part (schemas/0032): the audience members in the member-id
# range ($4, $5] (bounded by PART_BOUND; NULL: no end), read in one pass over that range of
# member_units -- every membership of a member in range at once (their direct units), the
# audience those with one in the audience's subtree or named -- and the named members of that
# range who belong to no unit. No sort of the audience, no second look-up of memberships.
#   $1 notice  $2 audience units  $3 audience members  $4 cursor  $5 upper bound or NULL
#   $6 channels  $7 needs_contact  $8 delivers_on_insert  $9 fallback  $10 optional
_PART = f"""
mu_range AS (
    SELECT mu.member_id, mu.unit_id, mu.unit_id IN (SELECT id FROM sub) AS in_aud FROM member_units mu
    WHERE mu.member_id > $4 AND ($5::text IS NULL OR mu.member_id <= $5)
),
direct AS (
    SELECT member_id, array_agg(unit_id ORDER BY unit_id) AS direct_units FROM mu_range
    GROUP BY member_id HAVING bool_or(in_aud) OR member_id = ANY($3::text[])
),
aud AS (
    SELECT member_id FROM direct
    UNION ALL
    SELECT m.id FROM members m
    WHERE m.id = ANY($3::text[]) AND m.id > $4 AND ($5::text IS NULL OR m.id <= $5)
      AND NOT EXISTS (SELECT 1 FROM member_units mu WHERE mu.member_id = m.id)
),
{ancestors("SELECT DISTINCT unit_id, unit_id FROM mu_range", "start")},"""
_COMMON_HEAD = (
    "WITH RECURSIVE "
    + subtree("$2")
    + """,
-- The deliveries insert trigger has nothing to move (the docstring): this statement tells it so
-- (schemas/0028); the trigger clears the setting again.
clock AS (SELECT notifier_now() AS now, set_config('notifier.fanout_statement', 'on', true) AS fanout),
notice AS (
    -- listed_at: the inbox lists the notice at its own time, not the fan-out's (schemas/0029).
    SELECT coalesce(send_at, created_at) AS listed_at FROM notices WHERE id = $1
),"""
)
_COMMON_UNITS = """
unit_up AS (SELECT start AS unit_id, array_agg(DISTINCT id) AS ups FROM up GROUP BY start),
combo AS (
    SELECT c.direct_units, array_agg(DISTINCT x.id ORDER BY x.id) AS units
    FROM (SELECT DISTINCT direct_units FROM direct) c
    CROSS JOIN LATERAL unnest(c.direct_units) AS d (unit_id)
    JOIN unit_up uu ON uu.unit_id = d.unit_id
    CROSS JOIN LATERAL unnest(uu.ups) AS x (id)
    GROUP BY c.direct_units
),
counted AS (
    SELECT d.member_id, c.units, d.direct_units FROM direct d JOIN combo c ON c.direct_units = d.direct_units
),
"""


def _tail(rerun: bool) -> str:
    """The plan, the inserts and the counts; ``rerun``: rows of the chunk's range may exist."""
    # ON CONFLICT probes the unique index once per row before inserting it (a tenth of a chunk's
    # CPU); a chunk's range of members is fanned out once, by one writer at a time, so the probe
    # is paid only when rows of it already exist (RANGE_HAS_ROWS), never on the hot path. A
    # duplicate that slipped past that check would still fail on the unique index: never a
    # second delivery.
    skip_d = "ON CONFLICT (notice_id, member_id, channel, step) DO NOTHING" if rerun else ""
    skip_r = "ON CONFLICT DO NOTHING" if rerun else ""
    return f"""ch AS (
    SELECT * FROM unnest($6::text[], $7::bool[], $8::bool[], $10::bool[])
        WITH ORDINALITY AS c(channel, needs_contact, on_insert, optional, ord)
),
-- An optional channel (schemas/0038) plans nothing for a member it cannot reach; the notice
-- keeps a required one, so every member of the audience has a row here.
plan_all AS (
    SELECT a.member_id, ch.channel, ch.ord, k.id AS contact_id,
           CASE WHEN ch.on_insert THEN 'delivered'
                WHEN ch.needs_contact AND k.id IS NULL THEN 'failed'
                ELSE 'queued' END AS state
    FROM aud a CROSS JOIN ch
    LEFT JOIN LATERAL ({newest_working("a.member_id", "ch.channel", when="ch.needs_contact")}) k ON true
    WHERE NOT (ch.optional AND ch.needs_contact AND k.id IS NULL)
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
    {skip_d}
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
    {skip_r}
    RETURNING dstatus, units, direct_units
),
grp AS (
    SELECT units, direct_units, count(*) AS n, count(*) FILTER (WHERE dstatus = 'queued') AS queued,
           count(*) FILTER (WHERE dstatus = 'delivered') AS delivered,
           count(*) FILTER (WHERE dstatus = 'failed') AS failed
    FROM ins_r GROUP BY units, direct_units
),
per_unit AS (
    SELECT unit_id, direct, sum(n)::bigint AS n, sum(queued)::bigint AS queued,
           sum(delivered)::bigint AS delivered, sum(failed)::bigint AS failed
    FROM (SELECT unnest(units) AS unit_id, false AS direct, n, queued, delivered, failed FROM grp
          UNION ALL SELECT unnest(direct_units), true, n, queued, delivered, failed FROM grp) x
    GROUP BY unit_id, direct
)
SELECT (SELECT count(*) FROM aud) AS n, (SELECT max(member_id) FROM aud) AS last_member,
       coalesce((SELECT array_agg(DISTINCT channel) FROM plan WHERE state = 'queued'), '{{}}') AS queued_channels,
       (SELECT coalesce(sum(n), 0)::bigint FROM grp) AS recipients,
       (SELECT coalesce(sum(queued), 0)::bigint FROM grp) AS queued,
       (SELECT coalesce(sum(delivered), 0)::bigint FROM grp) AS delivered,
       (SELECT coalesce(sum(failed), 0)::bigint FROM grp) AS failed,
       coalesce(u.unit_ids, '{{}}') AS unit_ids, coalesce(u.directs, '{{}}') AS directs,
       coalesce(u.ns, '{{}}') AS unit_n, coalesce(u.queueds, '{{}}') AS unit_queued,
       coalesce(u.delivereds, '{{}}') AS unit_delivered, coalesce(u.faileds, '{{}}') AS unit_failed
FROM (SELECT array_agg(unit_id ORDER BY unit_id, direct) AS unit_ids, array_agg(direct ORDER BY unit_id, direct) AS directs,
             array_agg(n ORDER BY unit_id, direct) AS ns, array_agg(queued ORDER BY unit_id, direct) AS queueds,
             array_agg(delivered ORDER BY unit_id, direct) AS delivereds,
             array_agg(failed ORDER BY unit_id, direct) AS faileds
      FROM per_unit) u
"""


FANOUT_CHUNK = _COMMON_HEAD + _FIRST + _COMMON_UNITS + _tail(rerun=False)
FANOUT_PART_CHUNK = _COMMON_HEAD + _PART + _COMMON_UNITS + _tail(rerun=False)
# The same, skipping the rows that exist (the chunk's range was fanned out in part already).
FANOUT_CHUNK_RERUN = _COMMON_HEAD + _FIRST + _COMMON_UNITS + _tail(rerun=True)
FANOUT_PART_CHUNK_RERUN = _COMMON_HEAD + _PART + _COMMON_UNITS + _tail(rerun=True)

# Whether a chunk's range (members above $2, up to $3; NULL: no end) holds recipients or first
# deliveries of the notice already: two index range probes per chunk instead of one per row.
RANGE_HAS_ROWS = """
SELECT EXISTS (SELECT 1 FROM recipients WHERE notice_id = $1 AND ($2::text IS NULL OR member_id > $2)
                 AND ($3::text IS NULL OR member_id <= $3))
    OR EXISTS (SELECT 1 FROM deliveries WHERE notice_id = $1 AND ($2::text IS NULL OR member_id > $2)
                 AND ($3::text IS NULL OR member_id <= $3) AND step = 0)"""

# Serialises the counting of one notice's chunks (its own statement, so the counting statement
# after it, and the report-slot trigger it fires, see every other part's committed counts).
LOCK_COUNTING = "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 727032))"

# What a chunk's new recipients add: the notice's counters, per unit (subtree and direct), and
# the units the notice reaches. An escalation summary reaches no unit by fan-out: it is about
# someone else's notice, so only its creating unit and those above see it (schemas/0010's
# trigger), admins always.
#   $1 notice  $2 recipients  $3 queued  $4 delivered  $5 failed
#   $6 unit ids  $7 direct  $8..$11 per unit: recipients, queued, delivered, failed
COUNT_CHUNK = """
WITH notice AS (SELECT created_at, parent_notice_id IS NOT NULL AS summary FROM notices WHERE id = $1),
per_unit AS (
    SELECT * FROM unnest($6::text[], $7::bool[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
        AS u (unit_id, direct, n, queued, delivered, failed)
),
-- The counter rows in the receipts' order (db/receipts.py MARK): the units' (this statement's
-- own INSERT, run first), then the notice's -- unreferenced CTEs run after it, last to first.
cnt AS (
    INSERT INTO notice_counts AS k (notice_id, shard, recipients, queued, delivered, failed)
    VALUES ($1, notice_count_shard(), $2, $3, $4, $5)
    ON CONFLICT (notice_id, shard) DO UPDATE SET
        recipients = k.recipients + excluded.recipients, queued = k.queued + excluded.queued,
        delivered = k.delivered + excluded.delivered, failed = k.failed + excluded.failed
),
reach AS (
    INSERT INTO notice_reach (notice_id, unit_id, created_at)
    SELECT $1, unit_id, notice.created_at FROM per_unit CROSS JOIN notice WHERE NOT direct AND NOT notice.summary
    ON CONFLICT DO NOTHING
)
INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, recipients, queued, delivered, failed)
SELECT $1, unit_id, direct, notice_count_shard(), n, queued, delivered, failed
FROM per_unit ORDER BY unit_id, direct
ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET
    recipients = k.recipients + excluded.recipients, queued = k.queued + excluded.queued,
    delivered = k.delivered + excluded.delivered, failed = k.failed + excluded.failed"""


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
    *,
    optional: list[bool] | None = None,
    in_part: bool = False,
    upper: str | None = None,
) -> Record:
    """One chunk, counted; call inside a transaction: the next ``limit`` audience members above
    ``cursor`` or, ``in_part``, all of them in (``cursor``, ``upper``]; ``optional``: per channel,
    whether it is used only where it reaches (none by default; at least one must be False). The
    row: ``n``, ``last_member``, ``queued_channels``."""
    row: Record | None
    optional = optional or [False] * len(channels)
    assert len(optional) == len(channels), "one flag per channel"
    assert not (channels and all(optional)), "a required channel keeps every member"
    rerun = bool(await conn.fetchval(RANGE_HAS_ROWS, notice_id, cursor, upper if in_part else None))
    if in_part:
        assert cursor is not None
        row = await conn.fetchrow(
            FANOUT_PART_CHUNK_RERUN if rerun else FANOUT_PART_CHUNK,
            notice_id,
            units,
            members,
            cursor,
            upper,
            channels,
            needs_contact,
            on_insert,
            fallback,
            optional,
        )
    else:
        row = await conn.fetchrow(
            FANOUT_CHUNK_RERUN if rerun else FANOUT_CHUNK,
            notice_id,
            units,
            members,
            cursor,
            limit,
            channels,
            needs_contact,
            on_insert,
            fallback,
            optional,
        )
    assert row is not None
    if in_part:  # a notice's first chunk runs alone (its row locked); its parts run together
        await conn.execute(LOCK_COUNTING, notice_id)
    await conn.execute(
        COUNT_CHUNK,
        notice_id,
        row["recipients"],
        row["queued"],
        row["delivered"],
        row["failed"],
        row["unit_ids"],
        row["directs"],
        row["unit_n"],
        row["unit_queued"],
        row["unit_delivered"],
        row["unit_failed"],
    )
    return row


# fanout_parts (schemas/0032): a big notice's audience above its first chunk, in `parts`
# consecutive ranges of member ids, (cursor, upper], cut where the membership rows above the
# cursor (member_units' primary key: two index walks, not the audience) divide evenly. None when
# no membership row lies above the cursor (the fan-out goes on serially then).
#   $1 notice  $2 parts  $3 cursor (the first chunk's last member, or below the audience's first)
#   $4 the audience's last member id (NULL: unknown)
SPLIT = """
WITH n AS (SELECT count(*) AS c FROM member_units WHERE member_id > $3 AND ($4::text IS NULL OR member_id <= $4)),
cut AS (
    SELECT k, (SELECT member_id FROM member_units WHERE member_id > $3 AND ($4::text IS NULL OR member_id <= $4)
               ORDER BY member_id OFFSET n.c * k / $2 LIMIT 1) AS at
    FROM n CROSS JOIN generate_series(1, $2 - 1) AS k WHERE n.c > 0
)
INSERT INTO fanout_parts (notice_id, part, parts, cursor, upper)
SELECT $1, p, $2, CASE WHEN p = 0 THEN $3 ELSE (SELECT at FROM cut WHERE k = p) END,
       CASE WHEN p = $2 - 1 THEN $4 ELSE (SELECT at FROM cut WHERE k = p + 1) END
FROM n CROSS JOIN generate_series(0, $2 - 1) AS p WHERE n.c > 0
ON CONFLICT DO NOTHING"""
# A part of the notice nobody fans out right now (a second worker skips it instead of waiting).
CLAIM_PART = """
SELECT part, parts, cursor, upper FROM fanout_parts WHERE notice_id = $1 AND NOT done
ORDER BY part LIMIT 1 FOR UPDATE SKIP LOCKED"""
# Advance a part; returns how many OTHER parts are not done. Run after fanout_chunk (which takes
# LOCK_COUNTING for a part) in the same transaction: the statement's snapshot then holds every
# other part's committed state, so exactly one part -- the last to finish -- sees none left.
ADVANCE_PART = """
WITH adv AS (
    UPDATE fanout_parts SET cursor = $3, done = $4, updated_at = (SELECT notifier_now())
    WHERE notice_id = $1 AND part = $2
)
SELECT count(*) FROM fanout_parts WHERE notice_id = $1 AND part <> $2 AND NOT done"""


# Where a part's next chunk ends: the member id `$2` membership rows above the cursor, or the
# part's own end `$3` when that comes first -- or when less than a quarter chunk would be left
# after it (`$4` rows: no small last chunk of its own); `last`: this chunk finishes the part. One
# walk of the primary key's index, from the cursor to the quarter chunk beyond or the part's end,
# so each chunk resolves only the audience within its own range, never all of it above the
# cursor again (which made a big notice's cost grow with its square).
PART_BOUND = """
SELECT CASE WHEN b.last THEN $3 ELSE b.at END AS upper, b.last
FROM (SELECT w.at, w.beyond IS NULL OR ($3::text IS NOT NULL AND w.beyond >= $3) AS last
      FROM (SELECT min(member_id) AS at, CASE WHEN count(*) = $4 - $2 + 1 THEN max(member_id) END AS beyond
            FROM (SELECT member_id FROM member_units
                  WHERE member_id > $1 AND ($3::text IS NULL OR member_id <= $3)
                  ORDER BY member_id OFFSET $2 LIMIT $4 - $2 + 1) s) w) b"""


async def part_bound(conn: Connection, cursor: str, rows: int, end: str | None) -> tuple[str | None, bool]:
    """(upper bound of the chunk, whether it is the part's last)."""
    row = await conn.fetchrow(PART_BOUND, cursor, rows - 1, end, rows + rows // 4 - 1)
    assert row is not None
    return row["upper"], bool(row["last"])


# At most how many members the audience has (its membership rows, each member counted once per
# unit, plus the named members: an index-only walk, no deduplication), and the span of member
# ids it lies in: `start` below its first (the member id before it, '' for none), `last` its last.
AUDIENCE_ESTIMATE = (
    "WITH RECURSIVE "
    + subtree("$1")
    + """,
a AS (
    SELECT count(*) + cardinality($2::text[]) AS n,
           least(min(member_id), (SELECT min(x) FROM unnest($2::text[]) AS x)) AS first,
           greatest(max(member_id), (SELECT max(x) FROM unnest($2::text[]) AS x)) AS last
    FROM member_units WHERE unit_id IN (SELECT id FROM sub)
)
SELECT a.n, a.last, coalesce((SELECT max(member_id) FROM member_units WHERE member_id < a.first), '') AS start
FROM a"""
)


async def audience_estimate(conn: Connection, units: list[str], members: list[str]) -> Record:
    """The row: ``n``, ``start``, ``last``."""
    row = await conn.fetchrow(AUDIENCE_ESTIMATE, units, members)
    assert row is not None
    return row


async def split(conn: Connection, notice_id: str, parts: int, cursor: str, last: str | None = None) -> bool:
    """Whether the notice is in parts now: ranges of the member ids above ``cursor`` (up to ``last``)."""
    return str(await conn.execute(SPLIT, notice_id, parts, cursor, last)) != "INSERT 0 0"


async def claim_part(conn: Connection, notice_id: str) -> Record | None:
    return await conn.fetchrow(CLAIM_PART, notice_id)


async def advance_part(conn: Connection, notice_id: str, part: int, cursor: str | None, done: bool) -> int:
    """Returns how many other parts are still to finish (0: this part finished the notice)."""
    return int(await conn.fetchval(ADVANCE_PART, notice_id, part, cursor, done))
