"""arq worker configuration, built from ``Settings`` (JSON jobs, fast polling, coarse jobs), and
the supervision that keeps a worker running through Redis outages.

arq's poll loop ends on the first Redis error and its ``close()`` then raises before releasing
anything, so a Redis restart used to stop the worker (and ``notifier dev`` with it). Here:

- ``SupervisedWorker`` survives a lost connection inside the loop: a failed poll is logged once
  per outage and retried with backoff; jobs already running carry on (they need PostgreSQL, not
  Redis, and their wake-ups are left to the reconciler); ``close()`` releases the pools anyway.
- ``run_supervised`` starts the worker again, with backoff, whenever its loop ends by itself
  (Redis down at startup, a bug), until told to stop.

A Redis that comes back empty loses only wake-ups: the reconciler cron, which runs on the worker
itself, finds every pending row in PostgreSQL and wakes jobs for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from arq import cron
from arq.worker import Worker, func

from notifier.channels.registry import build_registry
from notifier.db.pool import WORKER_SESSION, create_pool
from notifier.metrics import POOLS, start_worker_metrics
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver
from notifier.workers.escalation_parts import escalation_part
from notifier.workers.fanout import fanout
from notifier.workers.priority import backend_priority_init
from notifier.workers.queue import (
    DELIVER,
    ESCALATION_PART,
    FANOUT,
    REDIS_UNAVAILABLE,
    TICK_NOW,
    create_queue,
    deserialize,
    queue_client,
    serialize,
    traced,
)
from notifier.workers.reconcile import reconcile
from notifier.workers.tick import TICK, tick

log = logging.getLogger(__name__)

POLL_BACKOFF_SECONDS = (0.1, 2.0)  # first and longest pause between polls while Redis is away
RESTART_BACKOFF_SECONDS = (0.5, 10.0)  # first and longest pause before starting a worker again


def worker_settings(settings: Settings, *, with_cron: bool = True) -> dict[str, Any]:
    async def on_startup(ctx: dict[str, Any]) -> None:
        pool = await create_pool(
            settings,
            min_size=2,
            max_size=max(4, settings.db_pool_max),
            server_settings=WORKER_SESSION,
            on_connect=backend_priority_init(settings.database_url),
        )
        queue = await create_queue(settings)
        ctx["deps"] = WorkerDeps(settings, pool, queue, build_registry(settings))
        POOLS.track(ctx["deps"].pool, "worker")

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
            func(traced(fanout, FANOUT), name=FANOUT, timeout=3600, keep_result=0, max_tries=1000),
            func(traced(deliver, DELIVER), name=DELIVER, timeout=3600, keep_result=0, max_tries=1000),
            func(tick, name=TICK_NOW, timeout=60, keep_result=0, max_tries=3),
            func(
                traced(escalation_part, ESCALATION_PART),
                name=ESCALATION_PART,
                timeout=3600,
                keep_result=0,
                max_tries=1000,
            ),
        ],
        "cron_jobs": cron_jobs,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        **queue_settings(settings),
    }


def queue_settings(settings: Settings) -> dict[str, Any]:
    """How a worker talks to the queue: JSON jobs, fast polling, many concurrent coarse jobs."""
    return {
        "redis_pool": queue_client(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay,
        "keep_result": 0,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "handle_signals": False,
        "health_check_interval": 30,
    }


def _backoff(failures: int, bounds: tuple[float, float]) -> float:
    first, longest = bounds
    return float(min(longest, first * 2 ** min(failures - 1, 16)))


class SupervisedWorker(Worker):
    """An arq ``Worker`` whose loop outlives Redis outages (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redis_down_since: float | None = None
        self._poll_failures = 0

    async def _poll_iteration(self) -> None:
        self._reap_finished()
        try:
            await super()._poll_iteration()
        except REDIS_UNAVAILABLE as exc:
            self._poll_failures += 1
            if self.redis_down_since is None:
                self.redis_down_since = time.monotonic()
                log.warning(
                    "Redis unavailable (%s): the worker keeps polling with backoff; "
                    "jobs in flight carry on, their wake-ups are left to the reconciler",
                    type(exc).__name__,
                )
            await asyncio.sleep(_backoff(self._poll_failures, POLL_BACKOFF_SECONDS))
            return
        if self.redis_down_since is not None:
            log.warning("Redis is back after %.1fs; polling again", time.monotonic() - self.redis_down_since)
            self.redis_down_since = None
            self._poll_failures = 0

    def _reap_finished(self) -> None:
        """Drop finished job tasks. arq re-raises their errors in the poll loop; the only ones
        it lets out are Redis errors while starting or finishing a job (the job's rows, not
        arq's bookkeeping, say what was done), so they are logged instead of ending the loop."""
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    log.info("arq could not record job %s (%s)", job_id, type(exc).__name__)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except REDIS_UNAVAILABLE:
            # arq had taken a job slot for the job it was starting when Redis failed; give it
            # back, or every outage would leak one and the worker would end up taking no jobs.
            self.job_counter -= 1
            self.sem.release()
            raise

    async def close(self) -> None:
        """arq's ``close()``, except that an unreachable Redis does not skip ``on_shutdown``."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.close(close_connection_pool=True)
        self._pool = None


def create_worker(settings: Settings, **overrides: Any) -> SupervisedWorker:
    return SupervisedWorker(**{**worker_settings(settings), **overrides})


async def stop_worker(worker: Worker, task: asyncio.Future[Any]) -> None:
    """Stop a worker started with ``async_run()`` and release everything it holds.

    arq's ``close()`` waits for the job tasks and only then runs ``on_shutdown``; a job cancelled
    mid-flight would make it raise first and leak the pools. Jobs are safe to cut short (rows
    and leases, not the queue, hold the truth), so cancel them, wait, then close.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        if not task.done():  # something below swallowed the cancellation; ask again
            log.warning("worker loop ignored a cancellation; cancelling again")
    await asyncio.gather(task, return_exceptions=True)  # a loop that already ended may hold an error
    jobs = list(worker.tasks.values())
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    worker.tasks.clear()
    await worker.close()


async def run_supervised(settings: Settings, stop: asyncio.Future[None]) -> None:
    """Run a worker until ``stop`` resolves; whenever its loop ends by itself (Redis down at
    startup, a bug), close it and start a new one after a backoff. Never returns before ``stop``.
    The process's metrics are served meanwhile when ``worker_metrics_port`` is set."""
    metrics = await start_worker_metrics(settings)
    try:
        await _run_supervised(settings, stop)
    finally:
        if metrics is not None:
            await metrics.cleanup()


async def _run_supervised(settings: Settings, stop: asyncio.Future[None]) -> None:
    failures = 0
    while not stop.done():
        worker = create_worker(settings)
        started = time.monotonic()
        task = asyncio.ensure_future(worker.async_run())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            await stop_worker(worker, task)
            return
        exc = None if task.cancelled() else task.exception()
        failures = 1 if time.monotonic() - started > 60 else failures + 1
        delay = _backoff(failures, RESTART_BACKOFF_SECONDS)
        if isinstance(exc, REDIS_UNAVAILABLE):
            log.warning(
                "worker could not start: Redis unavailable (%s); again in %.1fs", type(exc).__name__, delay
            )
        else:
            log.error("worker loop ended unexpectedly; starting it again in %.1fs", delay, exc_info=exc)
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await stop_worker(worker, task)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stop), delay)
