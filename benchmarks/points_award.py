"""What the lesson_read hook adds to a read receipt: ``points.award`` inside the receipt's
transaction, for an organisation without rules and for one with them, against the receipt's own
``mark_read`` measured in the same run on the same connection.

Run::

    .venv/bin/python -m benchmarks.points_award [--members 2000] [--rounds 3]

For each of ``--members`` recipients of four lessons (committee -> 3 branches -> 15 groups), one
transaction per variant, interleaved: ``mark_read`` alone (baseline), + ``SELECT 1`` (what one
more round trip costs), + ``award`` of a code without any rule (a deployment without points), +
``award`` of a ``lesson_read`` rule (cap 6, no dwell). Prints the median and p99 per transaction
and the hook's median cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from benchmarks.harness.servers import code_version, connected, servers
from notifier.db import points, receipts
from notifier.db.pool import Pool
from notifier.settings import Settings


async def setup(pool: Pool, members: int) -> list[str]:
    """Four lessons to ``members`` members (one per kind of round); their ids."""
    async with pool.acquire() as conn:
        await conn.execute(
            "TRUNCATE point_rules, point_awards, notice_views, recipients, notices,"
            " member_units, members, units CASCADE"
        )
        await conn.execute("INSERT INTO units (id, name) VALUES ('c', 'C')")
        await conn.execute("INSERT INTO units SELECT 'b' || i, 'B', 'c' FROM generate_series(0, 2) i")
        await conn.execute(
            "INSERT INTO units SELECT 'g' || i, 'G', 'b' || (i % 3) FROM generate_series(0, 14) i"
        )
        await conn.execute(
            "INSERT INTO members (id, name) SELECT 'm' || i, 'M' FROM generate_series(0, $1 - 1) i", members
        )
        await conn.execute(
            "INSERT INTO member_units SELECT 'm' || i, 'g' || (i % 15) FROM generate_series(0, $1 - 1) i",
            members,
        )
        ids = []
        for _ in range(4):
            nid = await conn.fetchval(
                "INSERT INTO notices (kind, title, body, audience, channels, state)"
                " VALUES ('lesson', 't', 'b', '{}', '{inapp}', 'active') RETURNING id"
            )
            await conn.execute(
                "INSERT INTO recipients (notice_id, member_id, dstatus, units, direct_units)"
                " SELECT $1, id, 'delivered', ARRAY['c'], ARRAY[]::text[] FROM members",
                nid,
            )
            ids.append(str(nid))
    return ids


VARIANTS = (
    "mark_read alone",
    "mark_read + SELECT 1",
    "mark_read + award, no rules",
    "mark_read + award, a rule",
)


async def run(pool: Pool, notices: list[str], members: int) -> list[list[float]]:
    """Per member, one transaction of each variant in turn (interleaved, so a neighbour's load
    falls on all four alike): mark_read alone; + ``SELECT 1`` (one more round trip); + award of a
    code no organisation has a rule for; + award of ``lesson_read``, which organisation c has."""
    out: list[list[float]] = [[] for _ in VARIANTS]
    async with pool.acquire() as conn:
        for i in range(members):
            for v, notice_id in enumerate(notices):
                t = time.perf_counter()
                async with conn.transaction():
                    await receipts.mark_read(conn, notice_id, f"m{i}", "api")
                    if v == 1:
                        await conn.fetchval("SELECT 1")
                    elif v >= 2:
                        code = "lesson_read" if v == 3 else "no_such_rule"
                        await points.award(conn, f"m{i}", code, f"notice:{notice_id}")
                out[v].append((time.perf_counter() - t) * 1000)
    return out


def figures(label: str, ms: list[float]) -> float:
    median = statistics.median(ms)
    p99 = sorted(ms)[int(len(ms) * 0.99) - 1]
    print(f"  {label:<30} median {median:6.3f} ms   p99 {p99:6.3f} ms")
    return median


async def main(members: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as (db_url, redis_url):
        settings = Settings(
            database_url=db_url, redis_url=redis_url, admin_token=SecretStr("bench-token-0123")
        )
        async with connected(settings) as (pool, _):
            print(f"points.award on the receipt path ({code_version()}), {members} reads per variant")
            for r in range(rounds):
                notices = await setup(pool, members)
                async with pool.acquire() as conn:
                    await conn.execute(
                        "INSERT INTO point_rules (root_unit_id, code, points, daily_cap)"
                        " VALUES ('c', 'lesson_read', 1, 6)"
                    )
                print(f"round {r + 1}")
                base, trip, none, ruled = (
                    figures(label, ms)
                    for label, ms in zip(VARIANTS, await run(pool, notices, members), strict=True)
                )
                print(
                    f"  added (median): one round trip +{trip - base:.3f} ms, award without rules"
                    f" +{none - base:.3f} ms, with a rule +{ruled - base:.3f} ms"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.members, args.rounds))
