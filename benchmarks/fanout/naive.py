"""The baseline case: the naive design, measured in the same run. One arq job per recipient
(enqueued by the benchmark acting as the fan-out, after one audience query); each job POSTs one
signed webhook (webhook only) and INSERTs one delivery row. Its workers (``python -m
benchmarks.fanout --naive-worker``) use the same queue tuning as ours: only the job design differs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from arq.worker import Worker, func

from benchmarks.fanout import WARMUP_MEMBERS, Options
from benchmarks.harness.cpu import cpu_delta
from benchmarks.harness.measure import Bench, CaseResult, each_case, poll_until, with_workers
from notifier.channels.webhook import decode_secret, sign
from notifier.db.units import subtree
from notifier.settings import Settings
from notifier.workers.settings import queue_settings

NAIVE_JOB = "naive_deliver"

NAIVE_INSERT = """
INSERT INTO deliveries (notice_id, member_id, channel, state, attempts, error)
VALUES ($1, $2, $3, $4, 1, $5)"""


async def naive_deliver(
    ctx: dict[str, Any], notice_id: str, member_id: str, channel: str, url: str | None, title: str, body: str
) -> str:
    """arq job (naive baseline): deliver one notice to one member, then record it with one INSERT."""
    state, error = "delivered", None
    if channel == "webhook":
        if url is None:
            state, error = "failed", "no contact"
        else:
            payload = json.dumps(
                {
                    "notice_id": notice_id,
                    "member_id": member_id,
                    "kind": "notice",
                    "title": title,
                    "body": body,
                },
                separators=(",", ":"),
            ).encode()
            msg_id = f"naive_{notice_id}_{member_id}"
            now = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": sign(ctx["naive_key"], msg_id, now, payload),
            }
            session: aiohttp.ClientSession = ctx["naive_session"]
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    await resp.read()
                    if not 200 <= resp.status < 300:
                        state, error = "failed", f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                state, error = "failed", type(exc).__name__
    pool: asyncpg.Pool[asyncpg.Record] = ctx["naive_pool"]
    await pool.execute(NAIVE_INSERT, notice_id, member_id, channel, state, error)
    return state


def naive_worker_settings(settings: Settings) -> dict[str, Any]:
    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["naive_pool"] = await asyncpg.create_pool(
            settings.database_url, min_size=2, max_size=max(4, settings.db_pool_max)
        )
        ctx["naive_session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.delivery_concurrency),
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
        )
        ctx["naive_key"] = decode_secret(settings.webhook_secret.get_secret_value())

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "naive_session" in ctx:
            await ctx["naive_session"].close()
        if "naive_pool" in ctx:
            await ctx["naive_pool"].close()

    return {
        "functions": [func(naive_deliver, name=NAIVE_JOB, timeout=60, keep_result=0, max_tries=3)],
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        **queue_settings(settings),  # the same queue tuning as ours: only the job design differs
    }


async def _run_naive_worker(settings: Settings) -> None:
    worker = Worker(**naive_worker_settings(settings))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    task = asyncio.ensure_future(worker.async_run())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        # Until told to stop, the worker fails, or the benchmark that started us is gone.
        while not stopped.done() and not task.done() and os.getppid() == parent:
            await asyncio.wait({task, stopped}, timeout=1.0)
    finally:
        stopped.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


NAIVE_AUDIENCE = (
    "WITH RECURSIVE "
    + subtree("$1")
    + """
SELECT a.member_id, k.target->>'url' AS url
FROM (SELECT DISTINCT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id) a
LEFT JOIN LATERAL (
    SELECT target FROM contacts
    WHERE contacts.member_id = a.member_id AND contacts.channel = 'webhook' AND contacts.disabled_at IS NULL
    ORDER BY created_at DESC LIMIT 1
) k ON true
ORDER BY a.member_id LIMIT $2"""
)


async def run_naive(bench: Bench, case: str, channel: str, root: str, n: int, cap_note: str) -> CaseResult:
    title, body = f"Benchmark {case}", "Fan-out benchmark notice."
    notice_id = str(
        await bench.pool.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels, state) "
            "VALUES ('notice', $1, $2, $3, $4, 'active') RETURNING id",
            title,
            body,
            {"units": [root]},
            [channel],
        )
    )
    start = time.perf_counter()
    cpu0 = bench.meter.snapshot()
    hooks0 = bench.receiver.distinct()
    # The naive fan-out: one audience query, then one job per recipient.
    rows = await bench.pool.fetch(NAIVE_AUDIENCE, [root], n)
    limit = asyncio.Semaphore(64)

    async def enqueue(member: str, url: str | None) -> None:
        async with limit:
            await bench.queue.enqueue_job(
                NAIVE_JOB,
                notice_id,
                member,
                channel,
                url,
                title,
                body,
                _job_id=f"naive:{notice_id}:{member}",
                _queue_name=bench.settings.queue_name,
            )

    enqueuing = asyncio.ensure_future(asyncio.gather(*(enqueue(r["member_id"], r["url"]) for r in rows)))
    want_hooks = n if channel == "webhook" else 0
    counts: dict[str, int] = {}

    async def check() -> tuple[bool, str]:
        if enqueuing.done():
            enqueuing.result()  # surface enqueue errors
        r = await bench.pool.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE state = 'failed') AS failed "
            "FROM deliveries WHERE notice_id = $1",
            notice_id,
        )
        assert r is not None
        counts.update(total=r["total"], failed=r["failed"])
        hooks = bench.receiver.distinct() - hooks0
        return r["total"] >= n and hooks >= want_hooks, f"rows={r['total']} webhooks={hooks}"

    try:
        seconds = await poll_until(bench, case, start, check)
    finally:
        if not enqueuing.done():
            enqueuing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await enqueuing
    return CaseResult(
        case,
        channel,
        n,
        seconds,
        counts["total"] - counts["failed"],
        counts["failed"],
        cpu=cpu_delta(cpu0, bench.meter.snapshot()),
        note=cap_note,
    )


async def phase(bench: Bench, opts: Options, root: str, log_dir: Path) -> list[CaseResult]:
    settings = bench.settings.model_copy(update={"queue_name": bench.settings.queue_name + ":naive"})
    argv = [sys.executable, "-m", "benchmarks.fanout", "--naive-worker"]
    n = min(opts.members, opts.naive_cap)
    note = f"capped at {n:,} of {opts.members:,}" if n < opts.members else ""
    async with with_workers(bench, "naive worker", argv, opts.workers, log_dir, settings) as bench:
        await run_naive(bench, "naive warm-up", "webhook", root, min(WARMUP_MEMBERS, n), "")
        return await each_case(
            opts.repeat,
            {
                f"naive {c}": functools.partial(run_naive, bench, f"naive {c}", c, root, n, note)
                for c in opts.channels
            },
        )


def run_worker() -> None:
    """The ``--naive-worker`` process: settings from the NOTIFIER_* environment the benchmark set."""
    asyncio.run(_run_naive_worker(Settings()))
