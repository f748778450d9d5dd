"""Group commit of single read receipts: the ``POST /v1/notices/{id}/receipts`` that reach one API
process at the same time are recorded by one statement (db/receipts.py ``record_many``: one round
trip, one transaction, one commit), not a pool acquire, a statement and a commit each.

A flush takes whatever is queued when it starts; while flushes are in flight (at most ``flushes``,
each on a connection of its own) new receipts queue for the next one. So a lone receipt goes at
once (no added delay at low load), and under load each flush carries the receipts that arrived
during the previous one.

Each caller gets its own answer: the statement answers item by item with record_receipt()'s
rules (the caller's unit, a member key's own read), the same pair twice in a flush is recorded
by the first. A lesson's read, left unread by the flush, is recorded again with its study points
in one transaction (those items only). An error fails only the items it belongs to: the flush
runs its items one by one after a failure. The flush is a task of its own: a caller that is
cancelled (or whose client went away) cancels nothing of the others; its receipt, once taken
into a flush, is recorded and counted with it (and the live streams told), else never sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from notifier.db import points, receipts
from notifier.db.pool import Connection, Pool, Record

log = logging.getLogger(__name__)

# Items per flush at most (a statement's per-item work is a few index probes: ~0.1 ms each).
FLUSH_MAX = 256
# How often an item is run again when its answer shows another read of the pair mid-commit.
AGAIN = 2


@dataclass(slots=True)
class _Item:
    notice_id: str
    member_id: str
    root: str | None
    member_key: bool
    done: asyncio.Future[Record | None] = field(repr=False)
    tries: int = 0


def _settle(item: _Item, row: Record | None) -> None:
    if not item.done.done():  # a cancelled caller's future: nobody waits for its answer
        item.done.set_result(row)


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.done.done():
        item.done.set_exception(exc)


class ReceiptGroup:
    """Queues single receipts and flushes them together (see the module docstring)."""

    def __init__(
        self, pool: Pool, changed: Callable[[str], None], *, via: str = "api", flushes: int = 2
    ) -> None:
        self.pool, self.changed, self.via, self.flushes = pool, changed, via, flushes
        self._queue: list[_Item] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def record(
        self, notice_id: str, member_id: str, *, root: str | None, member_key: bool
    ) -> Record | None:
        """The answer of ``receipts.record`` for this receipt (None: not the caller's notice)."""
        item = _Item(notice_id, member_id, root, member_key, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        if len(self._flushing) < self.flushes:
            task = asyncio.ensure_future(self._flush_while_queued())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        return await item.done

    async def close(self) -> None:
        """Wait for the flushes in flight (they take what is still queued)."""
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    async def _flush_while_queued(self) -> None:
        while self._queue:
            batch = [item for item in self._queue[:FLUSH_MAX] if not item.done.done()]
            del self._queue[:FLUSH_MAX]
            if not batch:
                continue
            try:
                async with self.pool.acquire() as conn:
                    await self._flush(conn, batch)
            except Exception as exc:  # no connection: the items not answered yet fail with it
                for item in batch:
                    _fail(item, exc)
            except BaseException:  # this task cancelled (shutdown): so are its callers' waits
                for item in batch:
                    item.done.cancel()
                raise

    async def _flush(self, conn: Connection, batch: list[_Item]) -> None:
        try:
            await self._record(conn, batch)
        except Exception:
            if len(batch) == 1:
                raise
            log.warning("a group of %d receipts failed; recording them one by one", len(batch), exc_info=True)
            for item in batch:
                if item.done.done():  # answered before the failure (or its caller is gone)
                    continue
                try:
                    await self._record(conn, [item])
                except Exception as exc:
                    _fail(item, exc)

    async def _record(self, conn: Connection, items: list[_Item]) -> None:
        """Record ``items`` and settle each one's answer as soon as it is committed."""
        rows = await self._statement(conn, items, lessons=False)
        answers: list[tuple[_Item, Record | None]] = []
        lessons: list[_Item] = []
        again: list[_Item] = []
        for item, row in zip(items, rows, strict=True):
            if row is not None and row["recipient"] and row["read_at"] is None:
                if row["kind"] == "lesson":  # left unread: its points come with it
                    lessons.append(item)
                    continue
                if item.tries < AGAIN:  # another read of this pair committed while this one waited
                    item.tries += 1
                    again.append(item)
                    continue
            answers.append((item, row))
        self._answer(answers)
        if lessons:
            async with conn.transaction():
                rows = await self._statement(conn, lessons, lessons=True)
                read = [i for i, r in zip(lessons, rows, strict=True) if r is not None and r["recorded"]]
                await points.award_lesson_reads(
                    conn, [i.notice_id for i in read], [i.member_id for i in read]
                )
            self._answer(list(zip(lessons, rows, strict=True)))
        if again:
            await self._record(conn, again)

    def _answer(self, answers: list[tuple[_Item, Record | None]]) -> None:
        """Committed: the live streams of the notices read may show it now; the callers their rows."""
        for notice_id in sorted({str(r["id"]) for _, r in answers if r is not None and r["recorded"]}):
            self.changed(notice_id)
        for item, row in answers:
            _settle(item, row)

    async def _statement(self, conn: Connection, items: list[_Item], *, lessons: bool) -> list[Record | None]:
        return await receipts.record_many(
            conn,
            [i.notice_id for i in items],
            [i.member_id for i in items],
            self.via,
            roots=[i.root for i in items],
            member_keys=[i.member_key for i in items],
            lessons=lessons,
        )


RECEIPTS_GROUP = web.AppKey("receipts_group", ReceiptGroup)
