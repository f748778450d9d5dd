"""api/group_commit.py: a second flush starts beside one in flight only for a full group or for
items that waited ``SECOND_FLUSH_AFTER`` behind it -- measured from the items waiting now, not
from one that an earlier flush took long ago."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from notifier.api import group_commit
from notifier.api.group_commit import GroupCommit, Queued
from notifier.db.pool import Connection, create_pool
from notifier.settings import Settings

STALL = 0.5


class _Item(Queued[float]):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class _Group(GroupCommit[_Item]):
    """Flushes whose statement waits until the test lets it go; each item's answer is the time
    its flush started."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, float] = {}

    async def run(self, conn: Connection, items: list[_Item]) -> None:
        now = time.perf_counter()
        await conn.fetchval("SELECT 1")
        for item in items:
            self.started[item.name] = now
        for item in items:
            await self.gates.setdefault(item.name, asyncio.Event()).wait()
        for item in items:
            item.settle(now)

    def submit_named(self, name: str) -> _Item:
        item = _Item(name)
        self.submit(item)
        return item

    def release(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()


async def test_a_second_flush_waits_for_the_items_queued_now_not_an_old_timer(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "SECOND_FLUSH_AFTER", STALL)
    pool = await create_pool(settings, min_size=0, max_size=3)
    group = _Group(pool, flushes=2)
    try:
        first = group.submit_named("a")  # flush A, held
        await asyncio.sleep(0.05)
        behind = group.submit_named("b")  # waits behind A (the stall timer starts)
        group.release("a")
        group.release("b")
        await asyncio.wait_for(asyncio.gather(first.done, behind.done), 5)  # A took it: nothing stalled
        await asyncio.sleep(STALL * 0.5)
        lone = group.submit_named("c")  # no flush in flight: one starts at once (held)
        await asyncio.sleep(0.05)  # it took "c"
        queued_at = time.perf_counter()
        late = group.submit_named("d")  # behind it: a second flush only after STALL
        await asyncio.sleep(STALL * 0.7)
        assert "d" not in group.started, (
            f"a second flush took 'd' {group.started['d'] - queued_at:.3f} s after it was queued"
            f" (SECOND_FLUSH_AFTER {STALL} s)"
        )
        for name in "cd":
            group.release(name)
        await asyncio.wait_for(asyncio.gather(lone.done, late.done), 5)
    finally:
        for name in "abcd":
            group.release(name)
        await group.close()
        await pool.close()
