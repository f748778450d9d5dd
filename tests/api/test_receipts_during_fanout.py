"""A read receipt posted while its notice is still fanning out: the recipient's row may be committed
by a fan-out chunk between the receipt's read statement (which did not see it) and its lookup
(which does). That answered 500 (a recipient with no read_at); now the read is recorded."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.settings import Settings
from tests.conftest import auth, running_worker
from tests.helpers import post, put

MEMBERS = 400


async def test_receipts_racing_the_fanout_are_recorded_or_asked_to_retry(
    settings: Settings, db: asyncpg.Connection
) -> None:
    small_chunks = settings.model_copy(update={"fanout_chunk_size": 5})
    async with TestClient(TestServer(create_app(small_chunks), host="127.0.0.1")) as client:
        await put(client, "/v1/units/u", {"name": "U"})
        people: list[dict[str, Any]] = [
            {"id": f"m{i:04d}", "name": f"M {i}", "units": ["u"]} for i in range(MEMBERS)
        ]
        await post(client, "/v1/members:batch", {"members": people}, status=200)
        statuses: Counter[int] = Counter()
        async with running_worker(small_chunks):
            body = {"kind": "notice", "title": "T", "body": "B", "audience": {"units": ["u"]}}
            nid = (await post(client, "/v1/notices", body, status=202))["id"]

            async def reader(member: str) -> None:
                while True:  # as a client would: retry a 409 until the fan-out reached the member
                    resp = await client.post(
                        f"/v1/notices/{nid}/receipts",
                        json={"member_id": member, "type": "read"},
                        headers=auth(),
                    )
                    statuses[resp.status] += 1
                    if resp.status != 409:
                        data: dict[str, Any] = await resp.json()
                        assert resp.status == 200, data
                        assert data["recorded"] and data["read_at"] is not None
                        return
                    await asyncio.sleep(0)

            await asyncio.wait_for(asyncio.gather(*(reader(p["id"]) for p in people[-40:])), 120)
        assert statuses[200] == 40 and set(statuses) <= {200, 409}, statuses
