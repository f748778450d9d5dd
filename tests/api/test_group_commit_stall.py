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


async def _started(group: _Group, name: str) -> None:
    for _ in range(500):
        if name in group.started:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no flush took {name!r}")


async def test_a_second_flush_waits_for_the_items_queued_now_not_an_old_timer(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stall timer armed for an item behind a flush is dropped once a flush takes that item:
    it must not start a second flush early for an item queued later."""
    monkeypatch.setattr(group_commit, "SECOND_FLUSH_AFTER", 600.0)
    pool = await create_pool(settings, min_size=0, max_size=3)
    group = _Group(pool, flushes=2)
    try:
        first = group.submit_named("a")  # flush A, held
        await _started(group, "a")
        behind = group.submit_named("b")  # waits behind A: the stall timer is armed
        assert group._stall_timer is not None
        group.release("a")
        await first.done
        await _started(group, "b")  # A's flush took it (held now): nothing waits
        assert group._stall_timer is None
        late = group.submit_named("c")  # behind it: a timer of its own, its full time
        assert (
            group._stall_timer is not None
            and group._stall_timer.when() - asyncio.get_running_loop().time() > 599
        )
        group.release("b")
        group.release("c")
        await asyncio.wait_for(asyncio.gather(behind.done, late.done), 5)
    finally:
        for name in "abc":
            group.release(name)
        await group.close()
        await pool.close()
