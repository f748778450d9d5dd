"""The inbox's order: newest notice first, whatever order the fan-out reached the member in, and a
cursor walk that neither repeats nor skips a notice while fan-outs are still running."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.settings import Settings
from notifier.workers.fanout import fanout_notice
from tests.helpers import get, post, put, worker_deps


async def _queued_notice(client: TestClient[Any, Any], title: str) -> str:
    body = {
        "kind": "notice",
        "title": title,
        "body": "b",
        "audience": {"members": ["m"]},
        "channels": ["inapp"],
    }
    created = await post(client, "/v1/notices", body, status=202)
    return str(created["id"])


async def _walk(client: TestClient[Any, Any], cursor: str | None) -> tuple[list[str], str | None]:
    query = "limit=1" + (f"&cursor={cursor}" if cursor else "")
    page = await get(client, f"/v1/members/m/inbox?{query}")
    return [i["title"] for i in page["items"]], page["next_cursor"]


async def test_the_inbox_lists_notices_by_their_time_not_by_when_the_fan_out_reached_the_member(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    # No worker: this test fans out by hand, in an order the notices were not sent in -- what a
    # big notice still fanning out while later small ones overtake it looks like.
    await put(client, "/v1/units/u", {"name": "U"})
    await put(client, "/v1/members/m", {"name": "M", "units": ["u"]})
    oldest, middle, newest = [await _queued_notice(client, t) for t in ("oldest", "middle", "newest")]
    async with worker_deps(settings) as deps:
        assert await fanout_notice(deps, newest) == 1
        assert await fanout_notice(deps, oldest) == 1
        first, cursor = await _walk(client, None)
        assert first == ["newest"] and cursor is not None
        # Fanned out while the member is paging: it lands below the page they have seen, where its
        # time puts it, so the walk still meets it.
        assert await fanout_notice(deps, middle) == 1
        second, cursor = await _walk(client, cursor)
        third, end = await _walk(client, cursor)
    assert (second, third, end) == (["middle"], ["oldest"], None)
    whole = await get(client, "/v1/members/m/inbox")
    assert [i["title"] for i in whole["items"]] == ["newest", "middle", "oldest"]
    assert whole["next_cursor"] is None
