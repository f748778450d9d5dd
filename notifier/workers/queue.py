"""Talking to arq: JSON serialisation (never pickle), job names, and enqueue helpers.

Redis only wakes workers; PostgreSQL holds the truth. So the client connects lazily (a process
starts, and the API accepts notices, while Redis is down), connecting has a deadline, and a
wake-up that cannot reach Redis is logged and left to the reconciler instead of failing the
caller: the rows it was about are committed and the reconciler finds them.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from notifier.settings import Settings

log = logging.getLogger(__name__)

FANOUT = "fanout"
DELIVER = "deliver"
TICK_NOW = "tick_now"

# No read timeout (socket_timeout): redis-py wraps every read in asyncio.timeout then, and on
# Python 3.11 that sometimes swallows a cancellation, so a worker asked to stop polled on forever.
CONNECT_TIMEOUT_SECONDS = 1.0

# What an unreachable, restarting or hung Redis raises (refused, reset, timed out, loading).
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def serialize(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result


def redis_settings(settings: Settings) -> RedisSettings:
    return RedisSettings.from_dsn(settings.redis_url)


def queue_client(settings: Settings) -> ArqRedis:
    """A queue client; it connects on first use and reconnects after Redis comes back."""
    rs = redis_settings(settings)
    return ArqRedis(
        host=rs.host if isinstance(rs.host, str) else "localhost",
        port=rs.port,
        unix_socket_path=rs.unix_socket_path,
        db=rs.database,
        username=rs.username,
        password=rs.password,
        ssl=rs.ssl,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        encoding="utf8",
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )


async def create_queue(settings: Settings) -> ArqRedis:
    """The queue client for an app or a worker's jobs (does not wait for Redis)."""
    return queue_client(settings)


async def _wake(queue: ArqRedis, function: str, *args: Any, **options: Any) -> bool:
    try:
        await queue.enqueue_job(function, *args, **options)
    except REDIS_UNAVAILABLE as exc:
        log.warning("Redis unavailable (%s): %s wake-up left to the reconciler", type(exc).__name__, function)
        return False
    return True


async def enqueue_fanout(queue: ArqRedis, notice_id: str, tag: str = "new") -> bool:
    """Wake a fan-out job; False when Redis is unavailable (the reconciler will)."""
    # The job id makes a duplicate enqueue a no-op while the first is queued or running.
    return await _wake(queue, FANOUT, notice_id, _job_id=f"{FANOUT}:{notice_id}:{tag}")


async def enqueue_deliveries(
    queue: ArqRedis, settings: Settings, notice_id: str, channel: str, pending: int, tag: str
) -> int:
    """Wake enough delivery jobs for ``pending`` rows; each job drains batches until none are due.

    Returns how many were woken (0 when Redis is unavailable: the reconciler will)."""
    slots = max(1, min(settings.delivery_parallel_jobs, math.ceil(pending / settings.delivery_batch_size)))
    for slot in range(slots):
        job_id = f"{DELIVER}:{notice_id}:{channel}:{slot}:{tag}"
        if not await _wake(queue, DELIVER, notice_id, channel, _job_id=job_id):
            return slot
    return slots


async def wake_tick_in(queue: ArqRedis, seconds: float) -> bool:
    """An early wake-up for the time engine (the one-second cron tick is the guarantee)."""
    return await _wake(queue, TICK_NOW, _defer_by=max(0.0, seconds))
