"""unit_report_slots read back: a unit's report over time, for itself and each child unit.

The slots are kept by the statements that move the per-unit counters (schemas/0011: a trigger on
notice_unit_counts), one row per (unit, quarter hour of a notice, kind, shard); a report sums
them into days, weeks or months of the unit's effective time zone (db/lessons.py
``effective_cte``), so it costs O(units x slots in range), never a scan of recipients or
deliveries. ``COMPACT`` folds the shards of slots older than two days into shard 0, so a year of
history is read as one row per unit and slot.

``REPORT`` answers with the whole JSON document (api/unit_reports.py ``UnitReport`` documents its
shape) as one value: two years of days over a unit and its children are thousands of points, and
building them as Python objects cost more than the statement. ``SUMS`` is the same sums as rows
(for the benchmark's and tests' checks against other ways of counting).
"""

from __future__ import annotations

from datetime import date

from notifier.db.lessons import effective_cte
from notifier.db.pool import Connection, Record
from notifier.db.unit_counts import BUCKETS

_TIMES = tuple(c for c, _ in BUCKETS)
_COLUMNS = ("notices", "recipients", "read", *_TIMES)
_FIGURES = (*_COLUMNS, "lesson_recipients", "lesson_read")
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
# rows: the unit itself (own = true), then its children; agg: one row per (unit, bucket) with
# data. The range is [from, to) in the report unit's time zone; every row is bucketed in that
# zone, so the children's series line up with it. One index range scan per unit.
_HEAD = (
    effective_cte("SELECT $1::text AS unit_id")
    + f""",
win AS (SELECT tz, ($2::text::date::timestamp AT TIME ZONE tz) AS lo, ($3::text::date::timestamp AT TIME ZONE tz) AS hi FROM eff),
rows AS (
    SELECT u.id AS unit_id, u.name, true AS own FROM units u WHERE u.id = $1
    UNION ALL
    SELECT u.id, u.name, false FROM units u WHERE u.parent_id = $1
),
agg AS MATERIALIZED (
    SELECT rows.unit_id, a.*
    FROM rows CROSS JOIN win w CROSS JOIN LATERAL (
        SELECT date_trunc($4, s.slot AT TIME ZONE w.tz)::date AS bucket, {_SUMS}
        FROM unit_report_slots s
        WHERE s.unit_id = rows.unit_id AND s.slot >= w.lo AND s.slot < w.hi
          AND ($5::text IS NULL OR s.kind IN ($5, 'lesson'))
        GROUP BY 1
    ) a
),
totals AS (
    SELECT rows.unit_id, rows.name, rows.own, t.*
    FROM rows CROSS JOIN LATERAL (
        SELECT {", ".join(f"coalesce(sum(x.{c}), 0)::bigint AS {c}" for c in _FIGURES)}
        FROM agg x WHERE x.unit_id = rows.unit_id
    ) t
)"""
)

# The same sums as rows: one per (unit, bucket) with data and one per unit with its totals
# (bucket NULL), the unit itself first.
SUMS = (
    _HEAD
    + f"""
SELECT unit_id, bucket, {", ".join(_FIGURES)} FROM agg
UNION ALL
SELECT unit_id, NULL, {", ".join(_FIGURES)} FROM totals
ORDER BY 1, 2 NULLS FIRST"""
)


def _rate(part: str, whole: str) -> str:
    """JSON text of part / whole to four places, half up (null when whole is 0): an integer
    ten-thousandth, then shown as Python shows a float (0.0, 0.5, 0.6667, 1.0)."""
    tenths = f"(({part}) * 20000 + {whole}) / (2 * {whole})"
    return (
        f"CASE WHEN {whole} > 0 THEN CASE {tenths} WHEN 0 THEN '0.0' WHEN 10000 THEN '1.0'"
        f" ELSE ({tenths} / 10000.0::float8)::text END ELSE 'null' END"
    )


def _median(x: str) -> str:
    """JSON text of the time-to-read bucket by which half of x's recipients had read (null while
    fewer have): unit_counts.median_bucket in SQL."""
    cases, seen = [], []
    for column, name in BUCKETS:
        seen.append(f"{x}.{column}")
        cases.append(f"WHEN 2 * ({' + '.join(seen)}) >= {x}.recipients THEN '\"{name}\"'")
    return f"CASE WHEN {x}.recipients > 0 THEN CASE {' '.join(cases)} ELSE 'null' END ELSE 'null' END"


def _figures(x: str) -> dict[str, str]:
    """The report's figures of a row of sums ``x``, as JSON text per key (api Figures)."""
    times = [f"{x}.{c}" for c in _TIMES]
    return {
        "notices": f"{x}.notices",
        "recipients": f"{x}.recipients",
        "read": f"{x}.read",
        "read_rate": _rate(f"{x}.read", f"{x}.recipients"),
        "median_read": _median(x),
        "read_within_5m": _rate(" + ".join(times[:2]), f"{x}.recipients"),
        "read_within_30m": _rate(" + ".join(times[:4]), f"{x}.recipients"),
        "read_within_60m": _rate(" + ".join(times[:5]), f"{x}.recipients"),
        "lessons_read_rate": _rate(f"{x}.lesson_read", f"{x}.lesson_recipients"),
    }


def _object(fields: dict[str, str]) -> str:
    """SQL concatenating a JSON object from JSON texts (keys are ours: plain names)."""
    parts = [
        f"""'{"{" if i == 0 else ","}"{key}":' || {value}""" for i, (key, value) in enumerate(fields.items())
    ]
    return " || ".join(parts) + " || '}'"


def _text(value: str) -> str:
    return f"coalesce(to_json({value})::text, 'null')"


# The whole answer as UTF-8 JSON (bytea, written to the response as it is): every bucket of
# [from, to) (empty ones too, for charts; the first may start before from), for the unit and each
# child. Keys in the order the OpenAPI document lists them.
REPORT = (
    _HEAD
    + f""",
starts AS (
    SELECT s::date AS start, to_json(s::date)::text AS start_json
    FROM generate_series(date_trunc($4, $2::text::date::timestamp), ($3::text::date - 1)::timestamp, ('1 ' || $4)::interval) s
    LIMIT 1000  -- bounded whatever the dates (the API allows at most 732 buckets)
),
series AS (
    SELECT rows.unit_id,
           string_agg({_object({"start": "st.start_json", **_figures("p")})}, ',' ORDER BY st.start) AS points
    FROM rows CROSS JOIN starts st
    LEFT JOIN agg x ON x.unit_id = rows.unit_id AND x.bucket = st.start
    CROSS JOIN LATERAL (SELECT {", ".join(f"coalesce(x.{c}, 0) AS {c}" for c in _FIGURES)}) p
    GROUP BY rows.unit_id
)
SELECT convert_to({
        _object(
            {
                "unit_id": _text("$1::text"),
                "timezone": f"(SELECT {_text('tz')} FROM win)",
                "from": _text("$2::text::date"),
                "to": _text("$3::text::date"),
                "bucket": _text("$4::text"),
                "kind": _text("$5::text"),
                "units": "'[' || coalesce(string_agg("
                + _object(
                    {
                        "unit_id": _text("t.unit_id"),
                        "name": _text("t.name"),
                        "own": "t.own::text",
                        **_figures("t"),
                        "series": "'[' || coalesce(p.points, '') || ']'",
                    }
                )
                + ", ',' ORDER BY t.own DESC, t.unit_id), '') || ']'",
            }
        )
    }, 'UTF8')
FROM totals t JOIN series p ON p.unit_id = t.unit_id"""
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


def _args(unit_id: str, start: date, end: date, bucket: str, kind: str | None) -> tuple[str | None, ...]:
    # Dates as text: asyncpg sends date.min and date.max as -infinity and infinity, and a series
    # of buckets from -infinity never ends.
    return unit_id, start.isoformat(), end.isoformat(), bucket, kind


async def report(
    conn: Connection, unit_id: str, start: date, end: date, bucket: str, kind: str | None
) -> bytes:
    """The report as UTF-8 JSON, ready to send."""
    body: bytes = await conn.fetchval(REPORT, *_args(unit_id, start, end, bucket, kind))
    return body


async def sums(
    conn: Connection, unit_id: str, start: date, end: date, bucket: str, kind: str | None
) -> list[Record]:
    return list(await conn.fetch(SUMS, *_args(unit_id, start, end, bucket, kind)))


async def compact(conn: Connection, limit: int = 10_000) -> str:
    return str(await conn.execute(COMPACT, limit))
