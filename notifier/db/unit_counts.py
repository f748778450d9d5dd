"""notice_unit_counts and notice_reach read back: a unit's notices with its slice of the counts,
and a notice's roll-up over the children of a unit.

The counters are written by the statements that change what they count (schemas/0010: the
fan-out, ``set_recipient_status``, the read receipt); here they are only summed over their shards,
so every answer costs O(units), never O(recipients).
"""

from __future__ import annotations

from datetime import datetime

from notifier.db.notices import NOTICE_COLUMNS
from notifier.db.pool import Connection, Pool, Record

# The time-to-read buckets (disjoint: read within 1 minute, within 5 but not 1, ...), as the
# columns hold them and as the API names them.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("read_1m", "1m"),
    ("read_5m", "5m"),
    ("read_15m", "15m"),
    ("read_30m", "30m"),
    ("read_60m", "60m"),
    ("read_later", "later"),
)

_SUMS = """coalesce(sum(k.recipients), 0)::bigint AS recipients, coalesce(sum(k.delivered), 0)::bigint AS delivered,
       coalesce(sum(k.read), 0)::bigint AS read"""
_BUCKET_SUMS = ", ".join(f"coalesce(sum(k.{c}), 0)::bigint AS {c}" for c, _ in BUCKETS)

_N_COLUMNS = ", ".join(f"n.{c.strip()}" for c in NOTICE_COLUMNS.split(","))

# A unit's notices (those created under it or that reached its subtree), newest first, with the
# unit's counts. The filters are optional; the (created_at, id) cursor is an index condition.
#   $1 unit  $2 kind  $3 state  $4 created_after  $5 created_before  $6 ILIKE pattern  $7 limit
#   $8, $9 cursor (created_at, id)
_FOR_UNIT = f"""
SELECT {_N_COLUMNS}, c.*
FROM notice_reach r JOIN notices n ON n.id = r.notice_id
CROSS JOIN LATERAL (
    SELECT {_SUMS} FROM notice_unit_counts k WHERE k.notice_id = r.notice_id AND k.unit_id = $1 AND NOT k.direct
) c
WHERE r.unit_id = $1 AND {{after}}
  AND ($2::text IS NULL OR n.kind = $2) AND ($3::text IS NULL OR n.state = $3)
  AND ($4::timestamptz IS NULL OR r.created_at >= $4) AND ($5::timestamptz IS NULL OR r.created_at < $5)
  AND ($6::text IS NULL OR n.title ILIKE $6 OR n.body ILIKE $6)
ORDER BY r.created_at DESC, r.notice_id DESC
LIMIT $7"""
# Every notice (an admin not naming a unit), with the notice's own counters.
_ALL = f"""
SELECT {_N_COLUMNS}, c.*
FROM notices n
CROSS JOIN LATERAL (SELECT {_SUMS} FROM notice_counts k WHERE k.notice_id = n.id) c
WHERE {{after}} AND $1::text IS NULL
  AND ($2::text IS NULL OR n.kind = $2) AND ($3::text IS NULL OR n.state = $3)
  AND ($4::timestamptz IS NULL OR n.created_at >= $4) AND ($5::timestamptz IS NULL OR n.created_at < $5)
  AND ($6::text IS NULL OR n.title ILIKE $6 OR n.body ILIKE $6)
ORDER BY n.created_at DESC, n.id DESC
LIMIT $7"""
LIST = {
    (scoped, after is not None): sql.format(
        after=f"({col}created_at, {col}{idcol}) < ($8, $9)"
        if after
        else "$8::timestamptz IS NULL AND $9::uuid IS NULL"
    )
    for scoped, sql, col, idcol in ((True, _FOR_UNIT, "r.", "notice_id"), (False, _ALL, "n.", "id"))
    for after in (None, True)
}

# One notice over the children of unit $2, and $2's own members as a row of their own (direct):
# worst read rate first (a row nobody was sent to last).
ROLLUP = f"""
WITH rows AS (
    SELECT u.id AS unit_id, u.name, false AS direct FROM units u WHERE u.parent_id = $2
    UNION ALL
    SELECT u.id, u.name, true FROM units u WHERE u.id = $2
)
SELECT rows.unit_id, rows.name, rows.direct, c.*
FROM rows CROSS JOIN LATERAL (
    SELECT {_SUMS}, {_BUCKET_SUMS}, max(k.last_read_at) AS last_read_at
    FROM notice_unit_counts k WHERE k.notice_id = $1 AND k.unit_id = rows.unit_id AND k.direct = rows.direct
) c
ORDER BY c.read::float8 / nullif(c.recipients, 0) ASC NULLS LAST, rows.direct, rows.unit_id"""


def like_pattern(text: str) -> str:
    """An ILIKE pattern matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_notices(
    conn: Connection,
    unit_id: str | None,
    *,
    kind: str | None,
    state: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    text: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[Record]:
    """Notices of ``unit_id`` (None: every notice), newest first, each with recipients,
    delivered and read of that unit's subtree (of the whole notice, for None)."""
    statement = LIST[unit_id is not None, after is not None]
    at, notice_id = after if after is not None else (None, None)
    pattern = None if text is None else like_pattern(text)
    return list(
        await conn.fetch(
            statement, unit_id, kind, state, created_after, created_before, pattern, limit, at, notice_id
        )
    )


async def rollup(conn: Connection, notice_id: str, parent_id: str) -> list[Record]:
    return list(await conn.fetch(ROLLUP, notice_id, parent_id))


def median_bucket(recipients: int, buckets: list[int]) -> str | None:
    """The bucket by which half the recipients had read (None: fewer than half have read)."""
    if recipients <= 0:
        return None
    seen = 0
    for (_, name), n in zip(BUCKETS, buckets, strict=True):
        seen += n
        if 2 * seen >= recipients:
            return name
    return None


# What the live streams show, for every watched (notice, slice unit, roll-up parent) at once: one
# statement per watcher tick however many notices and slices are watched. Per key k: first the
# slice's counts (unit_id NULL; the notice's own counters when the slice unit is NULL, as
# notices.COUNTS / UNIT_COUNTS), then ROLLUP's rows over the parent's children, in ROLLUP's order.
#   $1 notice ids  $2 slice units (NULL: the whole notice)  $3 roll-up parents (NULL: no rows)
_COUNT_COLUMNS = "recipients, queued, sent, delivered, failed, cancelled, read"
_ALL_SUMS = ", ".join(f"coalesce(sum(k.{c}), 0)::bigint AS {c}" for c in _COUNT_COLUMNS.split(", "))
WATCHED = f"""
WITH keys AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS w(notice_id, unit_id, parent_id, k)
), rows AS (
    SELECT keys.k, keys.notice_id, u.id AS unit_id, u.name, false AS direct
    FROM keys JOIN units u ON u.parent_id = keys.parent_id
    UNION ALL
    SELECT keys.k, keys.notice_id, u.id, u.name, true FROM keys JOIN units u ON u.id = keys.parent_id
)
SELECT * FROM (
SELECT keys.k, NULL::text AS unit_id, NULL::text AS name, NULL::boolean AS direct, n.state, c.*
FROM keys JOIN notices n ON n.id = keys.notice_id CROSS JOIN LATERAL (
    SELECT {_ALL_SUMS}, {_BUCKET_SUMS}, NULL::timestamptz AS last_read_at
    FROM (
        SELECT {_COUNT_COLUMNS}, 0 AS read_1m, 0 AS read_5m, 0 AS read_15m, 0 AS read_30m, 0 AS read_60m,
               0 AS read_later
        FROM notice_counts WHERE keys.unit_id IS NULL AND notice_id = keys.notice_id
        UNION ALL
        SELECT {_COUNT_COLUMNS}, 0, 0, 0, 0, 0, 0
        FROM notice_unit_counts
        WHERE keys.unit_id IS NOT NULL AND notice_id = keys.notice_id AND unit_id = keys.unit_id AND NOT direct
    ) k
) c
UNION ALL
SELECT rows.k, rows.unit_id, rows.name, rows.direct, NULL::text, c.*
FROM rows CROSS JOIN LATERAL (
    SELECT {_ALL_SUMS}, {_BUCKET_SUMS}, max(k.last_read_at) AS last_read_at
    FROM notice_unit_counts k
    WHERE k.notice_id = rows.notice_id AND k.unit_id = rows.unit_id AND k.direct = rows.direct
) c
) watched
ORDER BY k, unit_id IS NOT NULL, read::float8 / nullif(recipients, 0) ASC NULLS LAST, direct, unit_id"""


async def watched(
    conn: Connection | Pool, keys: list[tuple[str, str | None, str | None]]
) -> list[list[Record]]:
    """For each (notice, slice unit, roll-up parent): [its counts row (with the notice's state),
    *its roll-up rows]."""
    rows = await conn.fetch(WATCHED, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    out: list[list[Record]] = [[] for _ in keys]
    for r in rows:
        out[int(r["k"]) - 1].append(r)
    return out
