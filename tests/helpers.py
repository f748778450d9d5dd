"""Builders for organisations and worker environments used across tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp.test_utils import TestClient

from notifier.channels.registry import build_registry
from notifier.db.pool import create_pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.queue import create_queue
from tests.conftest import auth


@contextlib.asynccontextmanager
async def worker_deps(settings: Settings) -> AsyncIterator[WorkerDeps]:
    """What a worker runs with (channels, pool, queue) for ``settings``, closed afterwards."""
    registry = build_registry(settings)
    pool = await create_pool(settings)
    queue = await create_queue(settings)
    try:
        yield WorkerDeps(settings, pool, queue, registry)
    finally:
        await registry.close()
        await queue.aclose()
        await pool.close()


async def put(client: TestClient[Any, Any], path: str, body: dict[str, Any], token: str | None = None) -> Any:
    resp = await client.put(path, json=body, headers=auth(token) if token else auth())
    assert resp.status in (200, 201), (resp.status, await resp.text())
    return await resp.json()


async def post(
    client: TestClient[Any, Any], path: str, body: dict[str, Any], token: str | None = None, status: int = 201
) -> Any:
    resp = await client.post(path, json=body, headers=auth(token) if token else auth())
    assert resp.status == status, (resp.status, await resp.text())
    return await resp.json()


async def get(client: TestClient[Any, Any], path: str, token: str | None = None, status: int = 200) -> Any:
    resp = await client.get(path, headers=auth(token) if token else auth())
    assert resp.status == status, (resp.status, await resp.text())
    return await resp.json()


async def build_org(
    client: TestClient[Any, Any], *, groups: int = 15, members: int = 1000, webhook_url: str | None = None
) -> dict[str, list[str]]:
    """committee 'c' -> branches 'b0'..'b2' -> groups 'g0'..'g{groups-1}'; members spread over groups.

    Returns {"units": [...], "members": [...], "group_of": [group per member]}.
    """
    await put(client, "/v1/units/c", {"name": "Committee", "parent_id": None})
    branches = [f"b{i}" for i in range(3)]
    for b in branches:
        await put(client, f"/v1/units/{b}", {"name": f"Branch {b}", "parent_id": "c"})
    group_ids = [f"g{i}" for i in range(groups)]
    for i, g in enumerate(group_ids):
        await put(client, f"/v1/units/{g}", {"name": f"Group {g}", "parent_id": branches[i % 3]})
    member_ids = [f"m{i:05d}" for i in range(members)]
    group_of = [group_ids[i % groups] for i in range(members)]
    batch = [
        {"id": m, "name": f"Officer {m}", "units": [g]} for m, g in zip(member_ids, group_of, strict=True)
    ]
    result = await post(client, "/v1/members:batch", {"members": batch}, status=200)
    assert result == {"created": members, "updated": 0}
    return {"units": ["c", *branches, *group_ids], "members": member_ids, "group_of": group_of}
