"""A unit's counts of a big notice, read from the per-unit counters, against counting the rows.

    .venv/bin/python -m benchmarks.unit_counts [--members 100000] [--samples 400]

Builds 200 units five levels deep (1 root, 4, 12, 36, 147 leaves), ``--members`` members in the
leaves (one in twenty also in a second leaf), and fans a notice out to the root. Then, while
other notices to everyone fan out and batches of reads land on the measured notice, it times the
status read (``notices.counts`` for a random unit: the root, a branch, a leaf) and, in the same
run under the same load, the baseline: the same distinct-member counts computed by counting the
recipients in the unit's subtree. Prints p50 / p99 of each. Uses embedded PostgreSQL and Redis
unless NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL are set. Bounded: every loop has a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness.measure import against
from benchmarks.harness.servers import code_version, connected, servers
from notifier.channels.registry import build_registry
from notifier.db import notices, receipts
from notifier.db.pool import Pool
from notifier.db.units import subtree
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.fanout import fanout_notice

# 1 + 4 + 12 + 36 + 147 = 200 units, depths 0..4.
FANOUTS = (4, 3, 3)
LEAVES = 147

# The baseline: what the counters answer, counted from the rows (distinct members in the subtree).
COUNT_ROWS = (
    "WITH RECURSIVE "
    + subtree("$2")
    + """
SELECT count(*) AS recipients, count(*) FILTER (WHERE r.dstatus = 'delivered') AS delivered,
       count(r.read_at) AS read
FROM recipients r
WHERE r.notice_id = $1
  AND EXISTS (SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id
              WHERE mu.member_id = r.member_id)"""
)


async def seed(pool: Pool, members: int) -> tuple[list[str], list[str]]:
    """The tree and its members; returns (every unit, the leaves)."""
    levels: list[list[str]] = [["root"]]
    parents: dict[str, str | None] = {"root": None}
    for depth, fan in enumerate(FANOUTS, start=1):
        level = [f"u{depth}-{i}" for i in range(len(levels[-1]) * fan)]
        for i, unit in enumerate(level):
            parents[unit] = levels[-1][i // fan]
        levels.append(level)
    leaves = [f"leaf-{i}" for i in range(LEAVES)]
    for i, unit in enumerate(leaves):
        parents[unit] = levels[-1][i % len(levels[-1])]
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO units (id, name, parent_id) VALUES ($1, $1, $2)",
            [(u, parents[u]) for level in levels for u in level] + [(u, parents[u]) for u in leaves],
        )
        await conn.execute(
            "INSERT INTO members (id, name) "
            "SELECT 'm' || lpad(i::text, 7, '0'), 'M' FROM generate_series(1, $1) i",
            members,
        )
        await conn.execute(
            "INSERT INTO member_units (member_id, unit_id) "
            "SELECT 'm' || lpad(i::text, 7, '0'), ($2::text[])[1 + i % cardinality($2::text[])] "
            "FROM generate_series(1, $1) i",
            members,
            leaves,
        )
        await conn.execute(
            "INSERT INTO member_units (member_id, unit_id) "
            "SELECT 'm' || lpad(i::text, 7, '0'), ($2::text[])[1 + (i * 7 + 3) % cardinality($2::text[])] "
            "FROM generate_series(1, $1, 20) i ON CONFLICT DO NOTHING",
            members,
            leaves,
        )
        await conn.execute("ANALYZE")
    return [u for level in levels for u in level] + leaves, leaves


async def new_notice(deps: WorkerDeps, title: str) -> str:
    async with deps.pool.acquire() as conn:
        row = await notices.insert(
            conn,
            kind="notice",
            title=title,
            body="b",
            audience={"units": ["root"], "members": []},
            channels=["inapp"],
            scope_unit_id="root",
            created_by=None,
        )
    return str(row["id"])


async def keep_fanning_out(deps: WorkerDeps, stop: asyncio.Event, done: list[int]) -> None:
    for i in range(50):
        if stop.is_set():
            return
        await fanout_notice(deps, await new_notice(deps, f"load {i}"))
        done.append(1)


async def keep_reading(
    deps: WorkerDeps, notice_id: str, members: int, stop: asyncio.Event, done: list[int]
) -> None:
    ids = [f"m{i:07d}" for i in range(1, members + 1)]
    random.Random(1).shuffle(ids)
    for start in range(0, len(ids), 200):
        if stop.is_set():
            return
        batch = ids[start : start + 200]
        async with deps.pool.acquire() as conn, conn.transaction():
            await receipts.mark_read_many(conn, [notice_id] * len(batch), batch, "api")
        done.append(len(batch))
        await asyncio.sleep(0.01)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def run(settings: Settings, members: int, samples: int) -> None:
    async with connected(settings, min_size=4, max_size=8) as (pool, queue):
        deps = WorkerDeps(settings, pool, queue, build_registry(settings))
        t0 = time.perf_counter()
        all_units, leaves = await seed(pool, members)
        nid = await new_notice(deps, "measured")
        await fanout_notice(deps, nid)
        seeded = time.perf_counter() - t0
        rng = random.Random(7)
        stop = asyncio.Event()
        fanned: list[int] = []
        read: list[int] = []
        load = [
            asyncio.create_task(keep_fanning_out(deps, stop, fanned)),
            asyncio.create_task(keep_reading(deps, nid, members, stop, read)),
        ]
        counters: list[float] = []
        rows: list[float] = []
        agree = True
        try:
            async with pool.acquire() as conn:
                for i in range(samples):
                    unit = rng.choice(["root", rng.choice(all_units[:17]), rng.choice(leaves)])
                    t = time.perf_counter()
                    await notices.counts(conn, nid, unit)
                    counters.append(time.perf_counter() - t)
                    if i % 10 == 0:  # the baseline is slow: one in ten, same units, same load
                        async with conn.transaction(isolation="repeatable_read", readonly=True):
                            t = time.perf_counter()
                            slow = await conn.fetchrow(COUNT_ROWS, nid, [unit])
                            rows.append(time.perf_counter() - t)
                            snap = await notices.counts(conn, nid, unit)
                        assert slow is not None
                        agree = agree and all(
                            int(slow[k]) == snap[k] for k in ("recipients", "delivered", "read")
                        )
                    await asyncio.sleep(0.005)
        finally:
            stop.set()
            for task in load:
                task.cancel()
            for task in load:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    base = statistics.median(rows)
    print(
        f"\nunit counts  ({members:,} recipients in {len(all_units)} units, 5 levels; "
        f"seeded in {seeded:.1f} s;"
    )
    print(
        f"  code {code_version()}; during the run {len(fanned)} fan-outs of {members:,} finished, "
        f"{sum(read):,} reads)"
    )
    print(
        f"  counters (notices.counts)   n={len(counters):4d}  p50 {pct(counters, 0.5):8.2f} ms  "
        f"p99 {pct(counters, 0.99):8.2f} ms   "
        f"{against(statistics.median(counters), base, 'x{:.3f}')} of baseline"
    )
    print(
        f"  baseline (count the rows)   n={len(rows):4d}  p50 {pct(rows, 0.5):8.2f} ms  "
        f"p99 {pct(rows, 0.99):8.2f} ms"
    )
    print(f"  counters equal the counted rows in every baseline sample: {agree}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp, servers(Path(tmp)) as (db, redis):
        settings = Settings().model_copy(update={"database_url": db, "redis_url": redis})
        asyncio.run(run(settings, args.members, args.samples))


if __name__ == "__main__":
    main()
