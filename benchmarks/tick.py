"""How long a tick of the time engine takes with many pending timers.

    .venv/bin/python -m benchmarks.tick [--timers 100000] [--due 2000]

Creates N escalating notices (each with one unread recipient and a one-step policy that reminds
in-app), all pending in the ``escalations`` table. Measures, in the same run:

  baseline    a tick with no timers at all
  idle        a tick with N pending timers, none due (the cost of *having* them)
  busy        ticks while ``--due`` of them are due (timers advanced per second)

and prints each against the baseline. Uses embedded PostgreSQL and Redis unless
NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL are set. Bounded: every loop has a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness.measure import against
from benchmarks.harness.servers import code_version, connected, servers
from notifier.channels.registry import build_registry
from notifier.db.pool import Connection
from notifier.domain.escalation import PolicyRules
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.tick import tick_once

SNAPSHOT = PolicyRules.model_validate({"steps": [{"after": "PT1M", "remind": ["inapp"]}]}).snapshot("bench")


async def seed(conn: Connection, n: int) -> None:
    await conn.execute("INSERT INTO units (id, name) VALUES ('u', 'U') ON CONFLICT DO NOTHING")
    await conn.execute(
        "INSERT INTO members (id, name) SELECT 'b' || i, 'M' FROM generate_series(1, $1) i "
        "ON CONFLICT DO NOTHING",
        n,
    )
    await conn.execute(
        """
        WITH n AS (
            INSERT INTO notices (kind, title, body, audience, channels, escalation, state)
            SELECT 'ding', 'bench ' || i, 'b', '{"members": []}', '{inapp}', $2::jsonb, 'active'
            FROM generate_series(1, $1) i
            RETURNING id, title
        ),
        r AS (
            INSERT INTO recipients (notice_id, member_id, dstatus)
            SELECT id, 'b' || split_part(title, ' ', 2), 'delivered' FROM n
        )
        INSERT INTO escalations (notice_id, started_at, due_at)
        SELECT id, notifier_now(), notifier_now() + interval '1 hour' FROM n
        """,
        n,
        SNAPSHOT,
    )
    await conn.execute("ANALYZE")


async def timed_ticks(deps: WorkerDeps, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        await tick_once(deps)
        out.append(time.perf_counter() - started)
    return out


def summary(samples: list[float]) -> str:
    p90 = sorted(samples)[int(len(samples) * 0.9)]
    return f"median {statistics.median(samples) * 1000:8.2f} ms   p90 {p90 * 1000:8.2f} ms"


async def run(settings: Settings, timers: int, due: int) -> None:
    async with connected(settings, min_size=2, max_size=8) as (pool, queue):
        deps = WorkerDeps(settings, pool, queue, build_registry(settings))
        async with pool.acquire() as conn:
            await conn.execute("TRUNCATE escalations, notice_events, recipients, deliveries, notices CASCADE")
        baseline = await timed_ticks(deps, 30)
        async with pool.acquire() as conn:
            t0 = time.perf_counter()
            await seed(conn, timers)
            seeded = time.perf_counter() - t0
        idle = await timed_ticks(deps, 30)
        # Make `due` timers due now; ticks work them off, at most 200 steps per tick.
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE escalations SET due_at = notifier_now() - interval '1 second' WHERE notice_id IN "
                "(SELECT notice_id FROM escalations ORDER BY notice_id LIMIT $1)",
                due,
            )
        busy: list[float] = []
        started = time.perf_counter()
        for _ in range(10_000):
            t = time.perf_counter()
            result = await tick_once(deps)
            busy.append(time.perf_counter() - t)
            if result["escalations"] == 0:
                break
        drained = time.perf_counter() - started
        async with pool.acquire() as conn:
            pending = await conn.fetchval("SELECT count(*) FROM escalations WHERE state = 'active'")
            fired = await conn.fetchval(
                "SELECT count(*) FROM notice_events WHERE kind = 'everyone_read' OR kind = 'step_fired'"
            )
    base = statistics.median(baseline)
    print(f"\ntime-engine tick  ({timers:,} pending timers; seeded in {seeded:.1f} s; code {code_version()})")
    print(f"  baseline (no timers)        {summary(baseline)}")
    idle_x = against(statistics.median(idle), base, "x{:5.2f}")
    print(f"  idle ({timers:,} pending, 0 due) {summary(idle)}   {idle_x} of baseline")
    busy_ticks = busy[:-1] or busy
    busy_x = against(statistics.median(busy_ticks), base, "x{:5.2f}")
    print(f"  busy ({due:,} due)              {summary(busy_ticks)}   {busy_x} of baseline")
    print(
        f"  {fired:,} steps fired in {drained:.2f} s over {len(busy)} ticks "
        f"= {fired / drained:,.0f} steps/s; "
        f"{pending:,} timers still pending"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=2_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp, servers(Path(tmp)) as (db, redis):
        settings = Settings().model_copy(update={"database_url": db, "redis_url": redis})
        asyncio.run(run(settings, args.timers, args.due))


if __name__ == "__main__":
    main()
