"""The API keys' lookups of concurrent requests are made together, by one statement (api/auth.py
KeyLookups): each request still gets its own key (or 401), and the requests of one key take from
its rate bucket one after another -- a burst of N answers N, not more, however they were grouped.

A lookup is held by the key's rate bucket row, locked by another transaction; the requests sent
meanwhile queue, and go in one statement once it is let go."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.api.auth import KEY_LOOKUPS
from notifier.db import api_keys
from tests.api.conftest import issue_key
from tests.api.test_rate_limits import api, desk, limited  # noqa: F401 (fixtures)
from tests.conftest import auth, frozen_clock, wait_until


async def test_lookups_in_one_statement_each_get_their_own_key_and_take_from_its_bucket_in_turn(
    api: TestClient[Any, Any],  # noqa: F811
    desk: str,  # noqa: F811
    db: asyncpg.Connection,
    server_urls: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups = api.app[KEY_LOOKUPS]
    monkeypatch.setattr(lookups, "flushes", 1)
    sizes: list[int] = []
    authenticate_many = api_keys.authenticate_many

    async def counted(conn: Any, tokens: list[str], limits: Any) -> Any:
        sizes.append(len(tokens))
        return await authenticate_many(conn, tokens, limits)

    monkeypatch.setattr(api_keys, "authenticate_many", counted)
    other = await issue_key(api, {"name": "b2 desk", "role": "secretary", "unit_id": "b2"})
    async with frozen_clock(db):  # the buckets (burst 3, 0.5/s) refill only when the test says
        assert (await api.get("/v1/units/b1", headers=auth(desk))).status == 200  # 2 tokens left
        holder = await asyncpg.connect(server_urls[0])
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM rate_buckets b JOIN api_keys k ON b.key = 'api-key:' || k.id"
                    " WHERE k.name = 'b1 desk' FOR UPDATE OF b"
                )
                sizes.clear()
                first = asyncio.ensure_future(api.get("/v1/units/b1", headers=auth(desk)))

                async def waits() -> bool:
                    return bool(
                        await db.fetchval(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND query LIKE '%authenticate_key%'"
                        )
                    )

                await wait_until(waits, within=10)
                crowd = [(desk, "b1")] * 3 + [(other, "b2"), ("ntf_unknown", "b1"), (desk, "b2")]
                tasks = [asyncio.ensure_future(api.get(f"/v1/units/{u}", headers=auth(t))) for t, u in crowd]

                async def queued() -> bool:
                    return len(lookups._queue) >= len(crowd)

                await wait_until(queued, within=10)
            statuses = [r.status for r in await asyncio.gather(*tasks)]
            assert (await first).status == 200  # the bucket's second token
        finally:
            await holder.close()
    assert sizes == [1, len(crowd)]  # the held lookup, then the crowd's in one statement
    # desk: one token left for its four requests (the first of them, in order), then 429; b2's own
    # key sees its own unit; an unknown token 401; desk may not see b2 (404) -- but had no token
    assert statuses == [200, 429, 429, 200, 401, 429]
