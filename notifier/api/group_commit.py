"""Group commit: requests of one API process that want the same statement at the same time are
answered by one execution of it (one pool acquire, one round trip, one commit), each caller still
getting its own answer. Used by the single read receipts (api/receipts_group.py) and the API keys'
lookups (api/auth.py).

A flush takes whatever is queued when it starts; while a flush is in flight new items queue for
the next one, which the flush in flight runs when it is done. So a lone item goes at once (no
added delay at low load), and under load each flush carries the items that arrived during the
previous one: the fewer the flushes, the fewer the round trips, statements and commits (the
API's and PostgreSQL's CPU per item). Another flush starts beside it (at most ``flushes`` in all,
each on a connection of its own) when a full group (``FLUSH_MAX``) is waiting, or when items have
waited ``SECOND_FLUSH_AFTER`` behind a flush still in flight (one stuck on a row lock, say, behind
a long batch): eager second flushes would split the load into small groups, but none at all would
let one slow statement hold up every receipt and key lookup of the process.

An error fails only the items it belongs to: after a failure the flush runs its items not yet
answered one by one (not when the database is unavailable or timed out: that fails them all at
once, as it would each). A flush is a task of its own: a caller that is cancelled cancels nothing
of the others; its item, once taken into a flush, is carried out with it, else never sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Generic, TypeVar

from notifier.db.pool import Connection, Pool, unavailable

log = logging.getLogger(__name__)

# Items per flush at most.
FLUSH_MAX = 256
# Seconds items wait behind a flush in flight before another flush (if ``flushes`` allows) takes
# them: far above a flush's usual few milliseconds, well below a request's patience.
SECOND_FLUSH_AFTER = 0.05

Item = TypeVar("Item", bound="Queued[Any]")
R = TypeVar("R")


class Queued(Generic[R]):
    """An item waiting for its answer ``done``."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done: asyncio.Future[R] = asyncio.get_running_loop().create_future()

    def settle(self, answer: R) -> None:
        if not self.done.done():  # a cancelled caller's future: nobody waits for its answer
            self.done.set_result(answer)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class GroupCommit(Generic[Item]):
    """Queues items and flushes them together; ``run`` carries out a group and settles each item."""

    name = "items"

    def __init__(self, pool: Pool, *, flushes: int) -> None:
        self.pool, self.flushes = pool, flushes
        self._queue: list[Item] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._stall_timer: asyncio.TimerHandle | None = None

    async def run(self, conn: Connection, items: list[Item]) -> None:
        raise NotImplementedError

    def submit(self, item: Item) -> None:
        """Queue ``item`` (its caller awaits ``item.done``)."""
        self._queue.append(item)
        if not self._flushing or (len(self._flushing) < self.flushes and len(self._queue) >= FLUSH_MAX):
            self._start_flush()
        elif len(self._flushing) < self.flushes and self._stall_timer is None:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(SECOND_FLUSH_AFTER, self._flush_if_stalled)

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush_while_queued())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    def _flush_if_stalled(self) -> None:
        """Items still queued ``SECOND_FLUSH_AFTER`` after one came behind a flush in flight: another
        flush takes them now (if ``flushes`` allows) instead of after the one in flight."""
        self._stall_timer = None
        if self._queue and len(self._flushing) < self.flushes:
            self._start_flush()

    async def close(self) -> None:
        """Wait for the flushes in flight (they take what is still queued)."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    async def _flush_while_queued(self) -> None:
        try:
            await self._flush_queued()
        finally:
            # At once, not by the task's done callback (a later loop turn): an item submitted
            # after the last look at the queue must find this flush's slot free and start one.
            task = asyncio.current_task()
            if task is not None:
                self._flushing.discard(task)

    async def _flush_queued(self) -> None:
        while self._queue:
            batch = [item for item in self._queue[:FLUSH_MAX] if not item.done.done()]
            del self._queue[:FLUSH_MAX]
            if not self._queue and self._stall_timer is not None:  # nothing waits any more: the
                self._stall_timer.cancel()  # next item behind a flush waits its own full time
                self._stall_timer = None
            if not batch:
                continue
            try:
                async with self.pool.acquire() as conn:
                    await self._flush(conn, batch)
            except Exception as exc:  # no connection: the items not answered yet fail with it
                for item in batch:
                    item.fail(exc)
            except BaseException:  # this task cancelled (shutdown): so are its callers' waits
                for item in batch:
                    item.done.cancel()
                raise

    async def _flush(self, conn: Connection, batch: list[Item]) -> None:
        try:
            await self.run(conn, batch)
        except Exception as exc:
            if len(batch) == 1 or unavailable(exc):  # the database is away (or slow): so for each
                raise
            log.warning(
                "a group of %d %s failed; running them one by one", len(batch), self.name, exc_info=True
            )
            for item in batch:
                if item.done.done() and not item.done.cancelled():  # answered before the failure
                    continue  # (a caller gone since the flush took its item: carried out all the same)
                try:
                    await self.run(conn, [item])
                except Exception as exc:
                    item.fail(exc)
