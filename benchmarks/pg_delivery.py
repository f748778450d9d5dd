"""PostgreSQL CPU per webhook delivery, statement by statement, against the same statements with
the triggers switched off, in the same run.

Run::

    .venv/bin/python -m benchmarks.pg_delivery [--members 20000] [--repeat 3]

One connection does what the workers do for one notice to the whole tree, on webhook: the
fan-out chunk (notifier/db/fanout.py), then claim 500 / write back 500 as ``delivered``
(``deliveries.claim``, and ``deliveries.record`` + ``reports.take_pending`` in one transaction, as
``workers/deliver.py``), until nothing is left. The CPU is the backend's own (``/proc/<pid>/stat``),
so other load on the machine shows up only as noise, not as time spent waiting; no network,
no HTTP. The baseline runs the same statements with ``session_replication_role = replica``
(no triggers: the counters of schemas/0006, 0010, 0011 and the DingTalk poll timer of 0012 are
not kept), so the difference is what keeping them costs per delivery. Rounds alternate
(triggers, baseline, triggers, ...); min and median are printed.

Target (issue 13): everything per webhook delivery <= 25 us of PostgreSQL CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.fanout.org import create_org
from benchmarks.harness.cpu import _cpu_of
from benchmarks.harness.servers import code_version, connected, servers
from notifier.db import deliveries, notices, reports
from notifier.db import fanout as fanout_db
from notifier.db.deliveries import Written
from notifier.db.pool import WORKER_SESSION, Connection
from notifier.settings import Settings

PHASES = ("fanout", "claim", "write-back")


async def one_notice(conn: Connection, root: str, n: int, batch: int) -> dict[str, float]:
    """Backend CPU seconds per phase for one notice fanned out and delivered."""
    pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
    cpu = dict.fromkeys(PHASES, 0.0)
    row = await notices.insert(
        conn,
        kind="ding",
        title="Benchmark",
        body="PostgreSQL per delivery",
        audience={"units": [root]},
        channels=["webhook"],
        scope_unit_id=None,
        created_by=None,
    )
    notice_id = str(row["id"])
    c0 = _cpu_of(pid)
    async with conn.transaction():
        got = await fanout_db.fanout_chunk(
            conn, notice_id, [root], [], None, max(n, 100), ["webhook"], [True], [False]
        )
    cpu["fanout"] += _cpu_of(pid) - c0
    assert got["n"] == n, got["n"]
    done = 0
    after = 0  # as a delivery job: each claim looks above the last id it claimed
    while True:
        c0 = _cpu_of(pid)
        rows = await conn.fetch(deliveries.CLAIM, notice_id, "webhook", batch, 180.0, after)
        c1 = _cpu_of(pid)
        cpu["claim"] += c1 - c0
        if not rows and after:
            after = 0
            continue
        if not rows:
            break
        after = max(int(r["id"]) for r in rows)
        written = [Written(r["id"], r["attempts"], "delivered", None, 0.0, None) for r in rows]
        async with conn.transaction():
            changed = await deliveries.record(conn, written)
            await reports.take_pending(
                conn, "webhook", [r["provider_ref"] for r in changed if r["provider_ref"]]
            )
        cpu["write-back"] += _cpu_of(pid) - c1
        done += len(rows)
    assert done == n, done
    return cpu


async def run(opts: argparse.Namespace, settings: Settings) -> list[tuple[str, dict[str, float]]]:
    results: list[tuple[str, dict[str, float]]] = []
    async with connected(settings) as (pool, _queue):
        root = await create_org(pool, "pg" + secrets.token_hex(3), opts.members, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            for name, value in WORKER_SESSION.items():  # the workers' session settings
                await conn.execute("SELECT set_config($1, $2, false)", name, value)
            await one_notice(conn, root, opts.members, opts.batch)  # warm-up
            for i in range(opts.repeat):
                for case in ("triggers", "baseline"):
                    role = "replica" if case == "baseline" else "origin"
                    await conn.execute(f"SET session_replication_role = {role}")
                    cpu = await one_notice(conn, root, opts.members, opts.batch)
                    await conn.execute("SET session_replication_role = origin")
                    results.append((case, cpu))
                    per = " ".join(f"{k}={v / opts.members * 1e6:.1f}us" for k, v in cpu.items())
                    print(f"  round {i + 1} {case:<9} {per}", file=sys.stderr, flush=True)
                # What autovacuum would do between notices (dead row versions, statistics).
                await conn.execute(
                    "VACUUM (ANALYZE) deliveries, recipients, notice_unit_counts, notice_counts"
                )
    return results


def report(results: list[tuple[str, dict[str, float]]], opts: argparse.Namespace) -> str:
    n = opts.members
    lines = [
        "",
        f"PostgreSQL CPU per webhook delivery: {n:,} recipients, batches of {opts.batch}, "
        f"{opts.repeat} alternating rounds, code {code_version()}",
        f"{'phase':<12} {'with triggers (min/median)':>28} {'baseline: no triggers':>24} {'ratio':>7}",
    ]

    def us(case: str, phase: str) -> list[float]:
        return [c[phase] / n * 1e6 for k, c in results if k == case]

    for phase in (*PHASES, "total"):
        if phase == "total":
            ours = [sum(c.values()) / n * 1e6 for k, c in results if k == "triggers"]
            base = [sum(c.values()) / n * 1e6 for k, c in results if k == "baseline"]
        else:
            ours, base = us("triggers", phase), us("baseline", phase)
        ratio = statistics.median(ours) / statistics.median(base) if statistics.median(base) else float("nan")
        lines.append(
            f"{phase:<12} {min(ours):>12.1f} / {statistics.median(ours):>6.1f} us "
            f"{min(base):>10.1f} / {statistics.median(base):>6.1f} us {ratio:>6.2f}x"
        )
    total = statistics.median([sum(c.values()) / n * 1e6 for k, c in results if k == "triggers"])
    lines.append(f"target: PostgreSQL <= 25 us per delivery (with triggers, median): {total:.1f} us")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pg_delivery", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-pgdelivery-")))
        db_url, redis_url = stack.enter_context(servers(tmp))
        settings = Settings(
            database_url=db_url, redis_url=redis_url, queue_name=f"notifier:pg:{secrets.token_hex(4)}"
        )
        t = time.perf_counter()
        results = asyncio.run(run(opts, settings))
        print(report(results, opts), flush=True)
        print(f"({time.perf_counter() - t:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
