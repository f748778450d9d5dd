"""Keeping a claimed batch's lease alive while it is in flight.

A claim holds its rows for ``delivery_lease_seconds``; after that the reconciler hands them back
(push, webhooks: sent again; SMS, voice: ``unknown``). A batch may legitimately take longer than
any fixed lease -- its sends wait for the process's send slots behind other jobs, a receiver takes
its full timeout, the database blinks during the write-back -- so while the worker is alive and
working on the batch, it renews the lease every third of its length. Only a worker that died (or
stopped renewing) loses its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import asyncpg

from notifier.db import deliveries
from notifier.db.deliveries import Claimed
from notifier.db.pool import UNAVAILABLE, Pool

log = logging.getLogger(__name__)

RENEW_RETRY_SECONDS = 1.0  # after a failed renewal (the database is away), try again this soon
TRANSIENT: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    *UNAVAILABLE,
)


class LeaseKeeper:
    """``async with LeaseKeeper(pool, claimed, seconds, started):`` renews the rows' lease until
    the block ends. ``remaining()`` says how long the lease is known to hold (from the last
    renewal that committed), so a caller retrying a write-back knows when to stop."""

    def __init__(self, pool: Pool, claimed: list[Claimed], seconds: float, started: float) -> None:
        self._pool = pool
        self._claimed = claimed
        self._seconds = seconds
        self._expires = started + seconds  # ``started``: loop time just before the claim was sent
        self._task: asyncio.Task[None] | None = None

    def remaining(self) -> float:
        return self._expires - asyncio.get_running_loop().time()

    async def __aenter__(self) -> LeaseKeeper:
        if self._claimed:
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        every = max(self._seconds / 3, 0.05)
        pause = every
        while True:
            await asyncio.sleep(pause)
            started = loop.time()
            try:
                await deliveries.renew(self._pool, self._claimed, self._seconds, give_up_after=every)
            except TRANSIENT as exc:
                log.warning(
                    "could not renew the lease of %d deliveries (%s); retrying",
                    len(self._claimed),
                    type(exc).__name__,
                )
                pause = min(every, RENEW_RETRY_SECONDS)
                continue
            except Exception:
                # Anything else (a bug, a pool being closed) must neither end the renewals
                # silently -- the lease would run out under a live batch -- nor surface when the
                # batch finishes and hide its real outcome: log it and keep trying.
                log.exception("renewing the lease of %d deliveries failed; retrying", len(self._claimed))
                pause = min(every, RENEW_RETRY_SECONDS)
                continue
            self._expires = started + self._seconds
            pause = every
