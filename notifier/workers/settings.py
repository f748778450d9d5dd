"""arq worker configuration, built from ``Settings`` (JSON jobs, fast polling, coarse jobs)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq import cron
from arq.worker import Worker, func

from notifier.channels.registry import build_registry
from notifier.db.pool import create_pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver
from notifier.workers.fanout import fanout
from notifier.workers.queue import (
    DELIVER,
    FANOUT,
    TICK_NOW,
    create_queue,
    deserialize,
    redis_settings,
    serialize,
)
from notifier.workers.reconcile import reconcile
from notifier.workers.tick import TICK, tick


def worker_settings(settings: Settings, *, with_cron: bool = True) -> dict[str, Any]:
    async def on_startup(ctx: dict[str, Any]) -> None:
        pool = await create_pool(settings, min_size=2, max_size=max(4, settings.db_pool_max))
        queue = await create_queue(settings)
        ctx["deps"] = WorkerDeps(settings, pool, queue, build_registry(settings))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        deps: WorkerDeps | None = ctx.get("deps")
        if deps is not None:
            await deps.channels.close()
            await deps.queue.aclose()
            await deps.pool.close()

    interval = settings.reconcile_interval_seconds
    cron_jobs = (
        [
            cron(
                reconcile,
                name="reconcile",
                second=set(range(0, 60, interval)),
                unique=True,
                run_at_startup=True,
                timeout=60,
                keep_result=0,
            )
        ]
        + [
            cron(
                tick,
                name=TICK,
                second=set(range(60)),
                unique=True,
                run_at_startup=True,
                timeout=60,
                keep_result=0,
            )
        ]
        if with_cron
        else []
    )
    return {
        "functions": [
            func(fanout, name=FANOUT, timeout=3600, keep_result=0, max_tries=1000),
            func(deliver, name=DELIVER, timeout=3600, keep_result=0, max_tries=1000),
            func(tick, name=TICK_NOW, timeout=60, keep_result=0, max_tries=3),
        ],
        "cron_jobs": cron_jobs,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        **queue_settings(settings),
    }


def queue_settings(settings: Settings) -> dict[str, Any]:
    """How a worker talks to the queue: JSON jobs, fast polling, many concurrent coarse jobs."""
    return {
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay,
        "keep_result": 0,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "handle_signals": False,
        "health_check_interval": 30,
    }


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    return Worker(**{**worker_settings(settings), **overrides})


async def stop_worker(worker: Worker, task: asyncio.Future[Any]) -> None:
    """Stop a worker started with ``async_run()`` and release everything it holds.

    arq's ``close()`` waits for the job tasks and only then runs ``on_shutdown``; a job cancelled
    mid-flight would make it raise first and leak the pools. Jobs are safe to cut short (rows
    and leases, not the queue, hold the truth), so cancel them, wait, then close.
    """
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    jobs = list(worker.tasks.values())
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    worker.tasks.clear()
    await worker.close()
