"""Talking to arq: JSON serialisation (never pickle), job names, and enqueue helpers."""

from __future__ import annotations

import json
import math
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from notifier.settings import Settings

FANOUT = "fanout"
DELIVER = "deliver"
TICK_NOW = "tick_now"


def serialize(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result


def redis_settings(settings: Settings) -> RedisSettings:
    return RedisSettings.from_dsn(settings.redis_url)


async def create_queue(settings: Settings) -> ArqRedis:
    pool: ArqRedis = await create_pool(
        redis_settings(settings),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )
    return pool


async def enqueue_fanout(queue: ArqRedis, notice_id: str, tag: str = "new") -> None:
    # The job id makes a duplicate enqueue a no-op while the first is queued or running.
    await queue.enqueue_job(FANOUT, notice_id, _job_id=f"{FANOUT}:{notice_id}:{tag}")


async def enqueue_deliveries(
    queue: ArqRedis, settings: Settings, notice_id: str, channel: str, pending: int, tag: str
) -> int:
    """Wake enough delivery jobs for ``pending`` rows; each job drains batches until none are due."""
    slots = max(1, min(settings.delivery_parallel_jobs, math.ceil(pending / settings.delivery_batch_size)))
    for slot in range(slots):
        await queue.enqueue_job(
            DELIVER, notice_id, channel, _job_id=f"{DELIVER}:{notice_id}:{channel}:{slot}:{tag}"
        )
    return slots


async def wake_tick_in(queue: ArqRedis, seconds: float) -> None:
    """An early wake-up for the time engine (the one-second cron tick is the guarantee)."""
    await queue.enqueue_job(TICK_NOW, _defer_by=max(0.0, seconds))
