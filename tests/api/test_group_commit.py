"""The group commit's flushes (api/group_commit.py): an item submitted at any moment is flushed,
also one that arrives while the last flush in flight is ending."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from notifier.api.keys import DEPS
from notifier.api.receipts_group import ReceiptGroup

# Event-loop hops from a caller's answer to the end of its flush (pool release included) are a
# handful; the scan covers many more.
HOPS = 60


async def test_an_item_submitted_as_the_last_flush_ends_is_flushed(client: TestClient[Any, Any]) -> None:
    # A caller that submits right after the flush in flight took its last look at the queue, but
    # before that flush's task is done, must still start a flush of its own (else it waits until
    # another request comes, maybe forever: the flush's slot is still counted taken).
    group = ReceiptGroup(client.app[DEPS].pool, lambda _: None, flushes=1)
    nid = str(uuid.uuid4())  # no such notice: each answer is None, nothing stored
    try:
        for hops in range(HOPS):
            assert await asyncio.wait_for(group.record(nid, "m", root=None, member_key=False), 5) is None
            for _ in range(hops):
                await asyncio.sleep(0)
            answer = group.record(nid, "m", root=None, member_key=False)
            assert await asyncio.wait_for(answer, 5) is None, hops
    finally:
        await group.close()
