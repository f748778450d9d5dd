"""How long a read on DingTalk takes to become our receipt.

    .venv/bin/python -m benchmarks.dingtalk_reads [--members 300] [--horizon 7200] [--pushes 200]

Real PostgreSQL and Redis (embedded unless NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL are set),
the real engine and API, the fake DingTalk (tests.fakes.dingtalk) on 127.0.0.1. Measured in the
same run:

  poll  work notifications with the default read-poll schedule (10 s, 30 s, 1 min, 5 min, then
        every 15 min; schemas/0012 dingtalk_poll_delay): a DING to --members members (tasks of
        100); each member reads it on DingTalk at a moment drawn (seeded) uniformly from the first
        --horizon seconds after the send. The engine clock (notifier_now) is moved from event to
        event -- the next read on the fake, the next due poll -- and the tick runs at each, so the
        figure is the schedule's on the real engine, in engine seconds (not slept through).
        Latency = our receipt's read_at - the moment the fake marked the read.
  push  the baseline: robot one-to-one messages (robot_messages on) and the encrypted
        robot_msg_read event DingTalk pushes; wall-clock time from the fake marking a read and
        starting the push to our API's answer (the receipt is committed before it answers), for
        --pushes reads one after another.

Printed: median, p90 and max of each, and poll / push (x baseline). Bounded: every loop has a
limit; everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from benchmarks.harness.measure import against
from benchmarks.harness.servers import code_version, connected, servers
from notifier.app import create_app
from notifier.channels.registry import build_registry
from notifier.db.pool import Pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from notifier.workers.tick import tick_once
from tests.fakes.dingtalk import FakeDingTalk

MAX_STEPS = 100_000
ADMIN = "bench-admin-token-" + "x" * 16


async def seed(pool: Pool, unit: str, members: list[str]) -> str:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO units (id, name) VALUES ($1, 'U') ON CONFLICT DO NOTHING", unit)
        await conn.execute("INSERT INTO members (id, name) SELECT unnest($1::text[]), 'M'", members)
        await conn.execute("INSERT INTO member_units SELECT unnest($1::text[]), $2", members, unit)
        await conn.execute(
            "INSERT INTO contacts (member_id, channel, target) SELECT m, 'dingtalk', to_jsonb('ding' || m) "
            "FROM unnest($1::text[]) m",
            members,
        )
        return str(
            await conn.fetchval(
                "INSERT INTO notices (kind, title, body, audience, channels) VALUES ('ding', $1, 'b', "
                "jsonb_build_object('units', jsonb_build_array($2::text)), '{dingtalk}') RETURNING id",
                f"read latency {unit}",
                unit,
            )
        )


async def send(deps: WorkerDeps, nid: str) -> None:
    await fanout_notice(deps, nid)
    await deliver_notice_channel(deps, nid, "dingtalk")


async def poll_latencies(deps: WorkerDeps, fake: FakeDingTalk, n: int, horizon: float) -> list[float]:
    members = [f"p{i:05d}" for i in range(n)]
    nid = await seed(deps.pool, "poll", members)
    await send(deps, nid)
    rng = random.Random(7)
    reads = sorted((rng.uniform(0, horizon), m) for m in members)
    async with deps.pool.acquire() as conn:
        t0 = await conn.fetchval("SELECT min(sent_at) FROM dingtalk_read_polls WHERE notice_id = $1", nid)
        marked: dict[str, float] = {}
        for _ in range(MAX_STEPS):
            now = float(
                await conn.fetchval("SELECT extract(epoch FROM notifier_now() - $1::timestamptz)", t0)
            )
            due = await conn.fetchval(
                "SELECT extract(epoch FROM min(next_poll_at) - $1::timestamptz) FROM dingtalk_read_polls "
                "WHERE notice_id = $2 AND done_at IS NULL",
                t0,
                nid,
            )
            upcoming = [t for t, m in reads if m not in marked]
            candidates = [float(due)] if due is not None else []
            candidates += upcoming[:1]
            if not candidates:
                break
            target = max(min(candidates), now)
            await conn.execute(
                "INSERT INTO engine_clock (id, offset_interval) VALUES (true, make_interval(secs => $1)) "
                "ON CONFLICT (id) DO UPDATE "
                "SET offset_interval = engine_clock.offset_interval + excluded.offset_interval",
                target - now,
            )
            newly = [m for t, m in reads if t <= target and m not in marked]
            fake.mark_read({"ding" + m for m in newly})
            marked.update({m: target for m in newly})  # the fake's moment of the read: this instant
            await tick_once(deps)
        else:
            raise RuntimeError("the poll simulation did not end")
        rows = await conn.fetch(
            "SELECT member_id, extract(epoch FROM read_at - $2::timestamptz) AS at FROM recipients "
            "WHERE notice_id = $1 AND read_at IS NOT NULL",
            nid,
            t0,
        )
        await conn.execute("DELETE FROM engine_clock")
    if len(rows) != n:
        raise RuntimeError(f"only {len(rows)} of {n} reads arrived by polling")
    return [float(r["at"]) - marked[r["member_id"]] for r in rows]


async def push_latencies(deps: WorkerDeps, fake: FakeDingTalk, n: int) -> list[float]:
    members = [f"q{i:05d}" for i in range(n)]
    nid = await seed(deps.pool, "push", members)
    await send(deps, nid)
    runner = web.AppRunner(create_app(deps.settings, deps.channels), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/v1/providers/dingtalk/callbacks"
    took: list[float] = []
    try:
        for m in members:
            send_ = next(s for s in fake.robot_sends if "ding" + m in s.user_ids)
            started = time.perf_counter()
            fake.mark_read({"ding" + m})
            status, ok = await fake.push_event(url, fake.read_event(send_, "ding" + m))
            took.append(time.perf_counter() - started)
            if status != 200 or not ok:
                raise RuntimeError(f"push answered {status}")
    finally:
        await runner.cleanup()
    async with deps.pool.acquire() as conn:
        read = await conn.fetchval(
            "SELECT count(*) FROM recipients WHERE notice_id = $1 AND read_at IS NOT NULL", nid
        )
    if read != n:
        raise RuntimeError(f"only {read} of {n} pushed reads were counted")
    return took


def summary(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))], ordered[-1]


async def run(
    settings: Settings, members: int, horizon: float, pushes: int
) -> tuple[list[float], list[float]]:
    async with connected(settings, min_size=2, max_size=8) as (pool, queue):
        fake = await FakeDingTalk().start()
        try:
            fake.app_minute_limit = 10**9
            poll_settings = settings.model_copy(update=fake.settings_overrides())
            registry = build_registry(poll_settings)
            try:
                poll = await poll_latencies(
                    WorkerDeps(poll_settings, pool, queue, registry), fake, members, horizon
                )
            finally:
                await registry.close()
            push_settings = settings.model_copy(update=fake.settings_overrides(robot_messages=True))
            registry = build_registry(push_settings)
            try:
                push = await push_latencies(WorkerDeps(push_settings, pool, queue, registry), fake, pushes)
            finally:
                await registry.close()
        finally:
            await fake.stop()
    return poll, push


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dingtalk_reads", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--members", type=int, default=300, help="members of the polled DING")
    parser.add_argument("--horizon", type=float, default=7200.0, help="reads happen in the first N seconds")
    parser.add_argument("--pushes", type=int, default=200, help="pushed reads, one after another")
    args = parser.parse_args(argv)
    if args.members < 1 or args.pushes < 1 or not 0 < args.horizon <= 23 * 3600:
        parser.error("--members and --pushes at least 1, --horizon within 23 hours")
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp, servers(Path(tmp)) as (db, redis):
        values: dict[str, Any] = {
            "database_url": db,
            "redis_url": redis,
            "admin_token": SecretStr(ADMIN),
            "delivery_idle_wait_seconds": 0.0,
        }
        settings = Settings().model_copy(update=values)
        poll, push = asyncio.run(run(settings, args.members, args.horizon, args.pushes))
    p_med, p90, p_max = summary(poll)
    b_med, b90, b_max = summary(push)
    print(f"DingTalk read latency: from a read on the fake DingTalk to our receipt (code {code_version()})")
    print(
        f"  poll: {len(poll)} reads uniformly in the first {args.horizon:g} s after the send,"
        " default schedule"
    )
    print("        (engine seconds: the clock moved event to event, the real tick at each)")
    print(
        f"  push: {len(push)} robot_msg_read events, encrypted and signed, one after another (wall seconds)"
    )
    print(f"{'':6}{'median':>12}{'p90':>12}{'max':>12}")
    print(f"{'poll':6}{p_med:>11.1f}s{p90:>11.1f}s{p_max:>11.1f}s")
    print(f"{'push':6}{b_med * 1000:>10.1f}ms{b90 * 1000:>10.1f}ms{b_max * 1000:>10.1f}ms")
    print(
        f"poll / push (median): {against(p_med, b_med, '{:,.0f}x')}   (p90: {against(p90, b90, '{:,.0f}x')})"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
