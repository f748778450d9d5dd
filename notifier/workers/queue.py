"""Talking to arq: JSON serialisation (never pickle), job names, and enqueue helpers.

Redis only wakes workers; PostgreSQL holds the truth. So the client connects lazily (a process
starts, and the API accepts notices, while Redis is down), connecting and every answer have a
deadline, and a wake-up that cannot reach Redis is logged and left to the reconciler instead of
failing the caller: the rows it was about are committed and the reconciler finds them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

from arq.connections import ArqRedis, RedisSettings
from arq.typing import WorkerCoroutine
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notifier.logs import LOG_CONTEXT, REQUEST_ID
from notifier.settings import Settings

log = logging.getLogger(__name__)

FANOUT = "fanout"
DELIVER = "deliver"
TICK_NOW = "tick_now"
ESCALATION_PART = "escalation_part"

# No read timeout (socket_timeout): redis-py wraps every read in asyncio.timeout then, and on
# Python 3.11 that sometimes swallows a cancellation, so a worker asked to stop polled on forever.
# Instead an answer has a deadline that cancels nothing: past it the connection's socket is
# closed, and the read waiting on it fails by itself (see _BoundedReads). arq sends no blocking
# command, so an answer this late means a hung or black-holed Redis.
CONNECT_TIMEOUT_SECONDS = 1.0
READ_DEADLINE_SECONDS = 5.0

# What an unreachable, restarting or hung Redis raises (refused, reset, timed out, loading).
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def serialize(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result


def redis_settings(settings: Settings) -> RedisSettings:
    return RedisSettings.from_dsn(settings.redis_url)


class _BoundedReads(AbstractConnection):
    """A connection whose answers have a deadline (``READ_DEADLINE_SECONDS``). Without one, a
    Redis that stops answering (hung, or a network path that drops the packets) holds a read
    forever: an API request waiting on a wake-up never returns, a worker's poll loop -- which
    also drives the reconciler -- never turns again. Past the deadline the transport is aborted,
    the pending read sees the connection end and raises, and the pool connects anew next time;
    no task is cancelled, so nothing can swallow a cancellation."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        writer = self._writer
        if writer is None:
            return await super().read_response(*args, **kwargs)
        expired = False

        def abort() -> None:
            nonlocal expired
            expired = True
            writer.transport.abort()

        handle = asyncio.get_running_loop().call_later(READ_DEADLINE_SECONDS, abort)
        try:
            return await super().read_response(*args, **kwargs)
        except RedisError as exc:
            if expired:
                raise RedisTimeoutError(f"no answer from Redis within {READ_DEADLINE_SECONDS}s") from exc
            raise
        finally:
            handle.cancel()


class _BoundedConnection(_BoundedReads, Connection):
    pass


class _BoundedSSLConnection(_BoundedReads, SSLConnection):
    pass


class _BoundedUnixConnection(_BoundedReads, UnixDomainSocketConnection):
    pass


_BOUNDED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _BoundedConnection,
    SSLConnection: _BoundedSSLConnection,
    UnixDomainSocketConnection: _BoundedUnixConnection,
}


def queue_client(settings: Settings) -> ArqRedis:
    """A queue client; it connects on first use and reconnects after Redis comes back."""
    rs = redis_settings(settings)
    client = _client(settings, rs)
    pool = client.connection_pool  # no connection is made before the first command
    pool.connection_class = _BOUNDED.get(pool.connection_class, pool.connection_class)
    return client


def _client(settings: Settings, rs: RedisSettings) -> ArqRedis:
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


def traced(job: Callable[..., Awaitable[Any]], name: str) -> WorkerCoroutine:
    """A job (taking ``notice_id[, channel]``) that takes the ``request_id`` of whoever woke it;
    its log records carry that id, the job's name, notice and channel (logs.py)."""

    @functools.wraps(job)
    async def run(ctx: dict[str, Any], *args: Any, request_id: str | None = None, **kwargs: Any) -> Any:
        about = dict(zip(("notice_id", "channel"), (str(a) for a in args[:2]), strict=False))
        token = REQUEST_ID.set(request_id)
        context = LOG_CONTEXT.set({"job": name, **about})
        try:
            return await job(ctx, *args, **kwargs)
        finally:
            LOG_CONTEXT.reset(context)
            REQUEST_ID.reset(token)

    return cast(WorkerCoroutine, run)


async def _wake(queue: ArqRedis, function: str, *args: Any, **options: Any) -> bool:
    request_id = REQUEST_ID.get()
    if request_id is not None and function != TICK_NOW:
        options["request_id"] = request_id  # the job's records carry the request's id
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


async def enqueue_escalation_parts(queue: ArqRedis, notice_id: str, step: int, jobs: int, tag: str) -> int:
    """Wake ``jobs`` jobs for the parts of an escalation step (schemas/0037), each reminding
    whichever part nobody holds; returns how many were woken."""
    for k in range(jobs):
        job_id = f"{ESCALATION_PART}:{notice_id}:{step}.{k}:{tag}"
        if not await _wake(queue, ESCALATION_PART, notice_id, _job_id=job_id):
            return k  # the tick wakes them when the timer comes due again
    return jobs


async def wake_tick_in(queue: ArqRedis, seconds: float) -> bool:
    """An early wake-up for the time engine (the one-second cron tick is the guarantee)."""
    return await _wake(queue, TICK_NOW, _defer_by=max(0.0, seconds))


# Live streams: after a process changes a notice's counters it says so here; each API process's
# watcher hub (api/watch.py) polls that notice early. Best effort: a lost hint only delays an
# update until the hub's next regular poll.
NOTICE_CHANGED = "notifier:notice-changed"
HINT_TIMEOUT_SECONDS = 0.5


async def hint_changed(queue: Redis, *notice_ids: str) -> None:
    """Publish a ``notice-changed`` hint per notice (one round trip); never raises."""
    if not notice_ids:
        return
    try:
        # Bounded tighter than an answer's deadline: a hung Redis must not hold a delivery batch.
        async with asyncio.timeout(HINT_TIMEOUT_SECONDS), queue.pipeline(transaction=False) as pipe:
            for notice_id in sorted(set(notice_ids)):
                pipe.publish(NOTICE_CHANGED, notice_id)
            await pipe.execute()
    except REDIS_UNAVAILABLE as exc:
        log.debug("notice-changed hint not published (%s)", type(exc).__name__)
