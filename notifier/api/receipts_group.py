"""Group commit of single read receipts (api/group_commit.py): the ``POST /v1/notices/{id}/
receipts`` that reach one API process at the same time are recorded by one statement
(db/receipts.py ``record_many``: one round trip, one transaction, one commit), not a pool
acquire, a statement and a commit each.

Each caller gets its own answer: the statement answers item by item with the single receipt's
rules (the caller's unit, a member key's own read); the same pair twice in a flush is recorded by
the first. A lesson's read, left unread by the flush, is recorded again with its study points in
one transaction (those items only). Answers are given as each part commits, with the live
streams of the notices read told by the flush (so also for a caller gone meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from notifier.api.group_commit import GroupCommit, Queued
from notifier.db import points, receipts
from notifier.db.pool import Connection, Pool, Record

# How often an item is run again when its answer shows another read of the pair mid-commit.
AGAIN = 2


class _Item(Queued[Record | None]):
    __slots__ = ("notice_id", "member_id", "root", "member_key", "tries")

    def __init__(self, notice_id: str, member_id: str, root: str | None, member_key: bool) -> None:
        super().__init__()
        self.notice_id, self.member_id, self.root, self.member_key = notice_id, member_id, root, member_key
        self.tries = 0


class ReceiptGroup(GroupCommit[_Item]):
    """Single receipts, flushed together (see the module docstring)."""

    name = "receipts"

    def __init__(
        self, pool: Pool, changed: Callable[[str], None], *, via: str = "api", flushes: int = 2
    ) -> None:
        super().__init__(pool, flushes=flushes)
        self.changed, self.via = changed, via

    async def record(
        self, notice_id: str, member_id: str, *, root: str | None, member_key: bool
    ) -> Record | None:
        """The answer of ``receipts.record_many`` for this receipt (None: not the caller's notice)."""
        item = _Item(notice_id, member_id, root, member_key)
        self.submit(item)
        return await item.done

    async def run(self, conn: Connection, items: list[_Item]) -> None:
        await self._record(conn, items)

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
            item.settle(row)

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
