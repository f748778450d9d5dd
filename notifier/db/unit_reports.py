"""unit_report_slots read back: a unit's report over time, for itself and each child unit.

The slots are kept by the statements that move the per-unit counters (schemas/0011: a trigger on
notice_unit_counts), one row per (unit, quarter hour of a notice, kind, shard); a report sums
them into days, weeks or months of the unit's effective time zone (db/lessons.py
``effective_cte``), so it costs O(units x slots in range), never a scan of recipients or
deliveries. ``COMPACT`` folds the shards of slots older than two days into shard 0, so a year of
history is read as one row per unit and slot.
"""

from __future__ import annotations

from datetime import date

from notifier.db.lessons import effective_cte
from notifier.db.pool import Connection, Record
from notifier.db.unit_counts import BUCKETS

_COLUMNS = ("notices", "recipients", "read") + tuple(c for c, _ in BUCKETS)
# Every sum twice: over the notices of the requested kind (all kinds when none), and over the lessons.
_SUMS = ",\n       ".join(
    [
        f"coalesce(sum(s.{c}) FILTER (WHERE $5::text IS NULL OR s.kind = $5), 0)::bigint AS {c}"
        for c in _COLUMNS
    ]
    + [
        f"coalesce(sum(s.{c}) FILTER (WHERE s.kind = 'lesson'), 0)::bigint AS lesson_{c}"
        for c in ("recipients", "read")
    ]
)

# $1 unit  $2 from (local date)  $3 to (local date, exclusive)  $4 'day' | 'week' | 'month'  $5 kind
# One row per (unit, bucket) with data, and one per unit with its totals (bucket NULL); the unit
# itself first (own = true), then its children. The range is [from, to) in the report unit's
# time zone; every row is bucketed in that zone, so the children's series line up with it.
REPORT = (
    effective_cte("SELECT $1::text AS unit_id")
    + f""",
win AS (SELECT tz, ($2::date::timestamp AT TIME ZONE tz) AS lo, ($3::date::timestamp AT TIME ZONE tz) AS hi FROM eff),
rows AS (
    SELECT u.id AS unit_id, u.name, true AS own FROM units u WHERE u.id = $1
    UNION ALL
    SELECT u.id, u.name, false FROM units u WHERE u.parent_id = $1
)
SELECT rows.unit_id, rows.name, rows.own, (SELECT tz FROM win) AS tz, c.*
FROM rows
LEFT JOIN LATERAL (
    SELECT s.bucket, {_SUMS}
    FROM (SELECT date_trunc($4, s.slot AT TIME ZONE w.tz)::date AS bucket, s.*
          FROM unit_report_slots s CROSS JOIN win w
          WHERE s.unit_id = rows.unit_id AND s.slot >= w.lo AND s.slot < w.hi
            AND ($5::text IS NULL OR s.kind IN ($5, 'lesson'))) s
    GROUP BY GROUPING SETS ((s.bucket), ())
) c ON true
ORDER BY rows.own DESC, rows.unit_id, c.bucket NULLS FIRST"""
)

# Shards of slots older than two days (no longer hot) folded into shard 0, a batch at a time.
COMPACT = """
WITH moved AS (
    DELETE FROM unit_report_slots s
    WHERE (s.unit_id, s.slot, s.kind, s.shard) IN (
        SELECT unit_id, slot, kind, shard FROM unit_report_slots
        WHERE shard <> 0 AND slot < (SELECT notifier_now()) - interval '2 days'
        ORDER BY slot LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING s.*
)
INSERT INTO unit_report_slots AS s (unit_id, slot, kind, shard, notices, recipients, read, read_1m, read_5m,
                                    read_15m, read_30m, read_60m, read_later)
SELECT unit_id, slot, kind, 0, sum(notices), sum(recipients), sum(read), sum(read_1m), sum(read_5m),
       sum(read_15m), sum(read_30m), sum(read_60m), sum(read_later)
FROM moved GROUP BY unit_id, slot, kind ORDER BY unit_id, slot, kind
ON CONFLICT (unit_id, slot, kind, shard) DO UPDATE SET
    notices = s.notices + excluded.notices, recipients = s.recipients + excluded.recipients,
    read = s.read + excluded.read, read_1m = s.read_1m + excluded.read_1m, read_5m = s.read_5m + excluded.read_5m,
    read_15m = s.read_15m + excluded.read_15m, read_30m = s.read_30m + excluded.read_30m,
    read_60m = s.read_60m + excluded.read_60m, read_later = s.read_later + excluded.read_later"""


async def report(
    conn: Connection, unit_id: str, start: date, end: date, bucket: str, kind: str | None
) -> list[Record]:
    return list(await conn.fetch(REPORT, unit_id, start, end, bucket, kind))


async def compact(conn: Connection, limit: int = 10_000) -> str:
    return str(await conn.execute(COMPACT, limit))
