"""A unit's report over a year, read from the report slots, against computing it from the rows.

    .venv/bin/python -m benchmarks.reports [--members 100000] [--days 365] [--row-days 14] [--samples 300]

Builds the 200-unit tree of benchmarks/unit_counts.py (5 levels, ``--members`` members in the
leaves, one in twenty in a second leaf) and a year of history, set-based in SQL (no notice is
fanned out): a lesson at 08:00 and a DING at 10:00 local time every day, to everyone. For the
last ``--row-days`` days the recipients rows themselves are generated (read or not, after 0 to 96
minutes) and their per-unit counters counted from them; for the days before, per-(notice, unit)
counters are generated directly. Either way the report slots are written by schemas/0011's
trigger as the counters are inserted; the slots of the last two days are spread over the 16
counter shards, as live reads leave them (older ones are compacted).

Measured, in one run: GET /v1/units/{id}/report through the HTTP app (a random unit -- the root,
one of the 16 upper units, a leaf; a random bucket -- day, week, month -- over the whole year),
the report statement alone (it answers with the whole JSON document), its sums as rows, and two
baselines: the same sums from the per-(notice, unit) counters over the year, and from the
recipients rows over the last ``--row-days`` days (the year of rows, 73 million of them, is not
generated; that baseline's window is said). Prints p50 / p99, the ratio of medians to the
baseline, whether each baseline's figures equal the slots' and whether the HTTP answer is the
statement's, with the sums' totals. Embedded PostgreSQL and Redis unless
NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL are set. Bounded: every loop has a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from benchmarks.harness.measure import against
from benchmarks.harness.servers import code_version, connected, servers
from benchmarks.unit_counts import pct, seed
from notifier.app import create_app
from notifier.channels.registry import build_registry
from notifier.db import unit_reports
from notifier.db.lessons import effective_cte
from notifier.db.pool import Connection, Pool
from notifier.settings import Settings

TZ = "Asia/Shanghai"
TOKEN = "bench-admin-token"

COUNTED = """
CREATE TEMP TABLE counted AS
WITH RECURSIVE up (start, id, parent_id, depth) AS (
    SELECT u.id, u.id, u.parent_id, 0 FROM units u
    UNION ALL
    SELECT up.start, p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id
    WHERE up.depth < 1000
)
SELECT mu.member_id, array_agg(DISTINCT up.id ORDER BY up.id) AS units,
       array_agg(DISTINCT mu.unit_id ORDER BY mu.unit_id) AS direct_units
FROM member_units mu JOIN up ON up.start = mu.unit_id GROUP BY mu.member_id"""

# $1 days  $2 row days: a lesson at 08:00 and a DING at 10:00 local, every day up to today.
NOTICES = f"""
CREATE TEMP TABLE history AS
WITH made AS (
    INSERT INTO notices (kind, title, body, audience, channels, scope_unit_id, state, created_at, send_at,
                         updated_at)
    SELECT k.kind, k.kind || ' ' || d, 'b', '{{"units": ["root"]}}', '{{inapp}}', 'root', 'active',
           t.at, t.at, t.at
    FROM generate_series(0, $1 - 1) d
    CROSS JOIN (VALUES ('lesson', time '08:00'), ('ding', time '10:00')) k (kind, at)
    CROSS JOIN LATERAL (SELECT ((((SELECT notifier_now()) AT TIME ZONE '{TZ}')::date - d) + k.at)
                               AT TIME ZONE '{TZ}' AS at) t
    RETURNING id, created_at
)
SELECT id, created_at, created_at >= (SELECT max(created_at) FROM made) - make_interval(days => $2) AS rows
FROM made"""

# Before the row days: per (notice, unit) counters, generated (35..95 % read, in fixed shares).
SYNTHETIC_COUNTERS = """
INSERT INTO notice_unit_counts (notice_id, unit_id, direct, shard, recipients, delivered, read, read_1m,
                                read_5m, read_15m, read_30m, read_60m, read_later)
SELECT id, unit_id, false, 0, n, n, rd, rd * 30 / 100, rd * 25 / 100, rd * 15 / 100, rd * 10 / 100,
       rd * 10 / 100,
       rd - rd * 30 / 100 - rd * 25 / 100 - rd * 15 / 100 - rd * 10 / 100 - rd * 10 / 100
FROM (
    SELECT h.id, s.unit_id, s.n,
           (s.n * (35 + abs(hashtext(s.unit_id || h.id::text)) % 61) / 100)::bigint AS rd
    FROM history h CROSS JOIN (SELECT unnest(units) AS unit_id, count(*) AS n FROM counted GROUP BY 1) s
    WHERE NOT h.rows
) g"""

# The row days: every recipient, read by seven in ten after 0..96 minutes.
RECIPIENTS = """
INSERT INTO recipients (notice_id, member_id, dstatus, delivered_at, read_at, read_via, created_at, units,
                        direct_units)
SELECT h.id, c.member_id, 'delivered', h.created_at,
       CASE WHEN x.v < 7000 THEN h.created_at + make_interval(mins => x.v % 97) END,
       CASE WHEN x.v < 7000 THEN 'api' END, h.created_at, c.units, c.direct_units
FROM history h CROSS JOIN counted c
CROSS JOIN LATERAL (SELECT abs(hashtext(c.member_id || h.id::text)) % 10000 AS v) x
WHERE h.rows"""

# Their counters, counted from them (as 0010's backfill does).
COUNTED_COUNTERS = """
INSERT INTO notice_unit_counts (notice_id, unit_id, direct, shard, recipients, delivered, read, read_1m,
                                read_5m, read_15m, read_30m, read_60m, read_later, last_read_at)
SELECT r.notice_id, u.unit_id, false, 0, count(*), count(*), count(r.read_at),
       count(*) FILTER (WHERE b = 1), count(*) FILTER (WHERE b = 2), count(*) FILTER (WHERE b = 3),
       count(*) FILTER (WHERE b = 4), count(*) FILTER (WHERE b = 5), count(*) FILTER (WHERE b = 6),
       max(r.read_at)
FROM recipients r
CROSS JOIN LATERAL unnest(r.units) u (unit_id)
CROSS JOIN LATERAL (SELECT CASE WHEN r.read_at IS NOT NULL
                           THEN read_bucket(r.read_at - r.created_at) END AS b) k
GROUP BY r.notice_id, u.unit_id"""

# The last two days' slots spread over 16 shards, as reads in many transactions leave them.
SPREAD = """
WITH hot AS (
    DELETE FROM unit_report_slots WHERE slot >= (SELECT notifier_now()) - interval '2 days' RETURNING *
)
INSERT INTO unit_report_slots (unit_id, slot, kind, shard, notices, recipients, read, read_1m, read_5m,
                               read_15m, read_30m, read_60m, read_later)
SELECT unit_id, slot, kind, s, CASE WHEN s = 0 THEN notices ELSE 0 END,
       recipients / 16 + CASE WHEN s = 0 THEN recipients % 16 ELSE 0 END,
       read / 16 + CASE WHEN s = 0 THEN read % 16 ELSE 0 END,
       read_1m / 16 + CASE WHEN s = 0 THEN read_1m % 16 ELSE 0 END,
       read_5m / 16 + CASE WHEN s = 0 THEN read_5m % 16 ELSE 0 END,
       read_15m / 16 + CASE WHEN s = 0 THEN read_15m % 16 ELSE 0 END,
       read_30m / 16 + CASE WHEN s = 0 THEN read_30m % 16 ELSE 0 END,
       read_60m / 16 + CASE WHEN s = 0 THEN read_60m % 16 ELSE 0 END,
       read_later / 16 + CASE WHEN s = 0 THEN read_later % 16 ELSE 0 END
FROM hot CROSS JOIN generate_series(0, 15) s"""

_HEAD = (
    effective_cte("SELECT $1::text AS unit_id")
    + """,
win AS (SELECT tz, ($2::date::timestamp AT TIME ZONE tz) AS lo, ($3::date::timestamp AT TIME ZONE tz) AS hi
        FROM eff),
rows AS (
    SELECT u.id AS unit_id, u.name, true AS own FROM units u WHERE u.id = $1
    UNION ALL
    SELECT u.id, u.name, false FROM units u WHERE u.parent_id = $1
)"""
)
_COLUMNS = ("recipients", "read", "read_1m", "read_5m", "read_15m", "read_30m", "read_60m", "read_later")
_PICK = "coalesce(sum({c}) FILTER (WHERE $5::text IS NULL OR kind = $5), 0)::bigint AS {c}"
_SUMS = ",\n       ".join(
    [
        "count(*) FILTER (WHERE recipients > 0 AND ($5::text IS NULL OR kind = $5))::bigint AS notices",
        *[_PICK.format(c=c) for c in _COLUMNS],
        "coalesce(sum(recipients) FILTER (WHERE kind = 'lesson'), 0)::bigint AS lesson_recipients",
        "coalesce(sum(read) FILTER (WHERE kind = 'lesson'), 0)::bigint AS lesson_read",
    ]
)
# Baseline 1: from the per-(notice, unit) counters of every notice in range (index probes).
FROM_COUNTERS = (
    _HEAD
    + f"""
SELECT rows.unit_id, c.* FROM rows LEFT JOIN LATERAL (
    SELECT bucket, {_SUMS}
    FROM (SELECT n.id, n.kind, date_trunc($4, n.created_at AT TIME ZONE w.tz)::date AS bucket,
                 {", ".join(f"sum(k.{c}) AS {c}" for c in _COLUMNS)}
          FROM win w JOIN notices n ON n.created_at >= w.lo AND n.created_at < w.hi
          JOIN notice_unit_counts k ON k.notice_id = n.id AND k.unit_id = rows.unit_id AND NOT k.direct
          GROUP BY n.id, n.kind, bucket) x
    GROUP BY GROUPING SETS ((bucket), ())
) c ON true"""
)
_BY_BUCKET = ", ".join(f"count(*) FILTER (WHERE b = {i + 1}) AS {c}" for i, c in enumerate(_COLUMNS[2:]))
# Baseline 2: from the recipients rows themselves.
FROM_ROWS = (
    _HEAD
    + f"""
SELECT rows.unit_id, c.* FROM rows LEFT JOIN LATERAL (
    SELECT bucket, {_SUMS}
    FROM (SELECT n.id, n.kind, date_trunc($4, n.created_at AT TIME ZONE w.tz)::date AS bucket,
                 count(*) AS recipients, count(r.read_at) AS read,
                 {_BY_BUCKET}
          FROM win w JOIN notices n ON n.created_at >= w.lo AND n.created_at < w.hi
          JOIN recipients r ON r.notice_id = n.id AND rows.unit_id = ANY (r.units)
          CROSS JOIN LATERAL (SELECT CASE WHEN r.read_at IS NOT NULL
                                          THEN read_bucket(r.read_at - r.created_at) END AS b) k
          GROUP BY n.id, n.kind, bucket) x
    GROUP BY GROUPING SETS ((bucket), ())
) c ON true"""
)
FIGURES = ("notices", *_COLUMNS, "lesson_recipients", "lesson_read")


def figures(rows: list[Any]) -> dict[tuple[str, Any], tuple[int, ...]]:
    return {(r["unit_id"], r["bucket"]): tuple(int(r[k]) for k in FIGURES) for r in rows}


def totals(answer: Any) -> dict[str, tuple[int, int, int]]:
    """Per unit (notices, recipients, read): of a report answer, or of its sums rows."""
    if isinstance(answer, dict):
        return {u["unit_id"]: (u["notices"], u["recipients"], u["read"]) for u in answer["units"]}
    return {r["unit_id"]: (r["notices"], r["recipients"], r["read"]) for r in answer if r["bucket"] is None}


async def generate(pool: Pool, days: int, row_days: int) -> dict[str, int]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(COUNTED)
        await conn.execute(NOTICES, days, row_days)
        await conn.execute(SYNTHETIC_COUNTERS)
        await conn.execute(RECIPIENTS)
        await conn.execute(COUNTED_COUNTERS)
        await conn.execute(SPREAD)
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")
        sizes = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM notices) AS notices, "
            "(SELECT count(*) FROM recipients) AS recipients, "
            "(SELECT count(*) FROM notice_unit_counts) AS counters, "
            "(SELECT count(*) FROM unit_report_slots) AS slots"
        )
    assert sizes is not None
    return dict(sizes)


async def timed(conn: Connection, sql: str, *args: Any) -> tuple[float, list[Any]]:
    t = time.perf_counter()
    rows = list(await conn.fetch(sql, *args))
    return time.perf_counter() - t, rows


async def run(settings: Settings, members: int, days: int, row_days: int, samples: int) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    async with connected(settings, min_size=2, max_size=4) as (pool, _queue):
        t0 = time.perf_counter()
        all_units, leaves = await seed(pool, members)
        sizes = await generate(pool, days, row_days)
        generated = time.perf_counter() - t0
        async with pool.acquire() as conn:
            today = await conn.fetchval(f"SELECT ((SELECT notifier_now()) AT TIME ZONE '{TZ}')::date")
        year = (today - dt.timedelta(days=days - 1), today + dt.timedelta(days=1))
        recent = (today - dt.timedelta(days=row_days - 1), today + dt.timedelta(days=1))
        rng = random.Random(11)
        http: list[float] = []
        slots: list[float] = []
        counters: list[float] = []
        rows_window: list[float] = []
        slots_window: list[float] = []
        answers: list[float] = []
        agree_counters = agree_rows = agree_answer = True
        app = create_app(settings, build_registry(settings))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client, pool.acquire() as conn:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for i in range(samples):
                unit = rng.choice(["root", rng.choice(all_units[1:17]), rng.choice(leaves)])
                bucket = rng.choice(["day", "week", "month"])
                kind = rng.choice([None, None, "ding"])
                query = f"from={year[0]}&to={year[1]}&bucket={bucket}" + (f"&kind={kind}" if kind else "")
                t = time.perf_counter()
                resp = await client.get(f"/v1/units/{unit}/report?{query}", headers=headers)
                body = await resp.read()
                http.append(time.perf_counter() - t)
                assert resp.status == 200, await resp.text()
                t = time.perf_counter()
                answer = await unit_reports.report(conn, unit, *year, bucket, kind)
                answers.append(time.perf_counter() - t)
                t = time.perf_counter()
                fast = await unit_reports.sums(conn, unit, *year, bucket, kind)
                slots.append(time.perf_counter() - t)
                agree_answer = agree_answer and answer == body and totals(json.loads(body)) == totals(fast)
                if i % 10 == 0:  # the baselines are slow: one in ten, same unit and query
                    took, slow = await timed(conn, FROM_COUNTERS, unit, *year, bucket, kind)
                    counters.append(took)
                    agree_counters = agree_counters and figures(slow) == figures(fast)
                if i % 15 == 0:
                    t = time.perf_counter()
                    fast = await unit_reports.sums(conn, unit, *recent, bucket, kind)
                    slots_window.append(time.perf_counter() - t)
                    took, slow = await timed(conn, FROM_ROWS, unit, *recent, bucket, kind)
                    rows_window.append(took)
                    agree_rows = agree_rows and figures(slow) == figures(fast)
    base = statistics.median(counters)
    base_rows = statistics.median(rows_window)
    print(
        f"\nunit report  ({members:,} members in {len(all_units)} units, 5 levels; {days} days of a "
        f"lesson and a DING to everyone: {sizes['notices']:,} notices, {sizes['counters']:,} per-unit "
        f"counters, {sizes['slots']:,} report slots, {sizes['recipients']:,} recipients rows for the last "
        f"{row_days} days; generated in {generated:.1f} s; code {code_version()})"
    )

    def line(name: str, xs: list[float], extra: str = "") -> None:
        print(
            f"  {name:44s} n={len(xs):4d}  p50 {pct(xs, 0.5):9.2f} ms  p99 {pct(xs, 0.99):9.2f} ms  {extra}"
        )

    line(
        f"GET /v1/units/{{id}}/report, {days} days (HTTP)",
        http,
        f"{against(statistics.median(http), base, 'x{:.3f}')} of baseline 1",
    )
    line(
        f"report statement (the JSON answer), {days} days",
        answers,
        f"{against(statistics.median(answers), base, 'x{:.3f}')} of baseline 1",
    )
    line(
        f"report sums statement (slots), {days} days",
        slots,
        f"{against(statistics.median(slots), base, 'x{:.3f}')} of baseline 1",
    )
    line(f"baseline 1: per-notice counters, {days} days", counters)
    line(
        f"report sums statement (slots), {row_days} days",
        slots_window,
        f"{against(statistics.median(slots_window), base_rows, 'x{:.4f}')} of baseline 2",
    )
    line(f"baseline 2: recipients rows, {row_days} days", rows_window)
    print(
        f"  slots equal baseline 1 in every sample: {agree_counters}; equal baseline 2: {agree_rows}; "
        f"HTTP answer equals the statement's and its totals the sums: {agree_answer}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--row-days", type=int, default=14)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp, servers(Path(tmp)) as (db, redis):
        settings = Settings().model_copy(update={"database_url": db, "redis_url": redis})
        asyncio.run(run(settings, args.members, args.days, args.row_days, args.samples))


if __name__ == "__main__":
    main()
