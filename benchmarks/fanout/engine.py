"""The case under test: a notice inserted as the API does, then our fan-out and delivery workers
until every recipient is final (and, for webhook, the receiver counted every one)."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.fanout import CHANNELS, WARMUP_MEMBERS, Options
from benchmarks.fanout.org import member_id
from benchmarks.harness.cpu import cpu_delta
from benchmarks.harness.measure import Bench, CaseResult, each_case, poll_until, with_workers
from notifier.db import notices
from notifier.workers.queue import enqueue_fanout

PROGRESS = """
SELECT n.state, n.fanned_out_at - n.created_at AS fanout,
       coalesce(sum(c.recipients), 0)::bigint AS recipients, coalesce(sum(c.queued), 0)::bigint AS queued,
       coalesce(sum(c.sent), 0)::bigint AS sent, coalesce(sum(c.delivered), 0)::bigint AS delivered,
       coalesce(sum(c.failed), 0)::bigint AS failed
FROM notices n LEFT JOIN notice_counts c ON c.notice_id = n.id
WHERE n.id = $1 GROUP BY n.id"""


async def run_ours(
    bench: Bench, case: str, channels: list[str], audience: dict[str, Any], n: int
) -> CaseResult:
    async with bench.pool.acquire() as conn, conn.transaction():
        row = await notices.insert(
            conn,
            kind="notice",
            title=f"Benchmark {case}",
            body="Fan-out benchmark notice.",
            audience=audience,
            channels=channels,
            scope_unit_id=None,
            created_by=None,
        )
    start = time.perf_counter()  # committed: the API would answer 202 now
    cpu0 = bench.meter.snapshot()
    notice_id = str(row["id"])
    hooks0 = bench.receiver.distinct()
    await enqueue_fanout(bench.queue, notice_id)
    want_hooks = n if "webhook" in channels else 0
    last: dict[str, Any] = {}

    async def check() -> tuple[bool, str]:
        r = await bench.pool.fetchrow(PROGRESS, notice_id)
        assert r is not None
        last.update(r)
        hooks = bench.receiver.distinct() - hooks0
        final = r["delivered"] + r["failed"]
        done = r["state"] == "active" and r["recipients"] == n and final == n and hooks >= want_hooks
        return done, (
            f"state={r['state']} recipients={r['recipients']} final={final} queued={r['queued']} "
            f"failed={r['failed']} webhooks={hooks}"
        )

    seconds = await poll_until(bench, case, start, check)
    fanout = last.get("fanout")
    return CaseResult(
        case,
        "+".join(channels),
        n,
        seconds,
        int(last["delivered"]),
        int(last["failed"]),
        fanout.total_seconds() if fanout is not None else None,
        cpu_delta(cpu0, bench.meter.snapshot()),
    )


async def phase(bench: Bench, opts: Options, root: str, log_dir: Path) -> list[CaseResult]:
    argv = [sys.executable, "-m", "notifier", "worker", "--processes", "1"]
    async with with_workers(bench, "notifier worker", argv, opts.workers, log_dir) as bench:
        warm = min(WARMUP_MEMBERS, opts.members)
        audience = {"members": [member_id(bench.prefix, i) for i in range(warm)]}
        await run_ours(bench, "warm-up", list(CHANNELS), audience, warm)
        everyone = {"units": [root]}
        return await each_case(
            opts.repeat,
            {c: functools.partial(run_ours, bench, c, [c], everyone, opts.members) for c in opts.channels},
        )
