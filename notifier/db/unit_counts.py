"""notice_unit_counts and notice_reach read back: a unit's notices with its slice of the counts,
and a notice's roll-up over the children of a unit.

The counters are written by the statements that change what they count (schemas/0010: the
fan-out, ``set_recipient_status``, the read receipt); here they are only summed over their shards,
so every answer costs O(units), never O(recipients).
"""

from __future__ import annotations

from datetime import datetime

from notifier.db.notices import NOTICE_COLUMNS
from notifier.db.pool import Connection, Record

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
