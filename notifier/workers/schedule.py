"""Scheduled sends: notices whose ``send_at`` has come go to fan-out (the row was the timer)."""

from __future__ import annotations

from notifier.db import schedule
from notifier.workers.context import WorkerDeps
from notifier.workers.queue import enqueue_fanout

RELEASE_PER_TICK = 500


async def release_scheduled(deps: WorkerDeps) -> int:
    released = await schedule.release_due(deps.pool, RELEASE_PER_TICK)
    for notice_id in released:
        await enqueue_fanout(deps.queue, notice_id, tag="scheduled")
    return len(released)
