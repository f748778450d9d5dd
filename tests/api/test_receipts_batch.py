"""``POST /v1/receipts:batch``: many reads in one call, counted as single receipts are, checked per
item (scope, recipient), idempotent; a bad item is a 422 naming it by its index, nothing stored."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.api.keys import DEPS
from tests.api.conftest import Org, problem, snapshot
from tests.api.test_scoping import _active, _notice_by
from tests.conftest import auth
from tests.helpers import get, post


async def _batch(client: TestClient[Any, Any], items: list[dict[str, Any]], token: str | None = None) -> Any:
    return await post(client, "/v1/receipts:batch", {"receipts": items}, token=token, status=200)


async def test_a_batch_records_counts_and_repeats_harmlessly(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    to_all = await _notice_by(client, None, {"units": ["c"]})
    to_b1 = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    for nid in (to_all, to_b1):
        await _active(client, nid)
    earlier = (datetime.now().astimezone() - timedelta(minutes=7)).isoformat()
    items = [
        {"notice_id": to_all, "member_id": "m1a", "type": "read"},
        {"notice_id": to_all, "member_id": "m2a", "type": "read", "at": earlier},
        {"notice_id": to_all, "member_id": "m1a", "type": "read"},  # twice in one call
        {"notice_id": to_b1, "member_id": "m2a", "type": "read"},  # m2a did not receive it
        {"notice_id": to_b1, "member_id": "nobody", "type": "read"},
    ]
    out = await _batch(client, items)
    assert [r["status"] for r in out["results"]] == [
        "recorded",
        "recorded",
        "already_read",
        "not_found",
        "not_found",
    ]
    assert [r["index"] for r in out["results"]] == [0, 1, 2, 3, 4]
    assert (out["recorded"], out["already_read"], out["not_found"]) == (2, 1, 2)
    status = await get(client, f"/v1/notices/{to_all}")
    assert (status["counts"]["read"], status["counts"]["recipients"]) == (2, 4)
    read_at = await db.fetchval(
        "SELECT read_at FROM recipients WHERE notice_id = $1::uuid AND member_id = 'm2a'", to_all
    )
    assert read_at == datetime.fromisoformat(earlier)
    # Again: nothing new, the counters do not move.
    before = await snapshot(db)
    again = await _batch(client, items)
    assert [r["status"] for r in again["results"]] == ["already_read"] * 3 + ["not_found"] * 2
    assert await snapshot(db) == before
    assert (await get(client, f"/v1/notices/{to_all}"))["counts"]["read"] == 2


async def test_each_item_is_scope_checked(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    from_admin = await _notice_by(client, None, {"units": ["c"]})
    from_b1 = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    for nid in (from_admin, from_b1):
        await _active(client, nid)
    # A branch key records reads only on its own notices, for its own members.
    out = await _batch(
        client,
        [
            {"notice_id": from_admin, "member_id": "m1a", "type": "read"},  # not its notice
            {"notice_id": from_b1, "member_id": "m1a", "type": "read"},
            {"notice_id": from_b1, "member_id": "m2a", "type": "read"},  # not its member
        ],
        token=org.b1_service,
    )
    assert [r["status"] for r in out["results"]] == ["not_found", "recorded", "not_found"]
    # A member key records only its own.
    out = await _batch(
        client,
        [
            {"notice_id": from_admin, "member_id": "m1b", "type": "read"},
            {"notice_id": from_admin, "member_id": "m1a", "type": "read"},
        ],
        token=org.m1a_member,
    )
    assert [r["status"] for r in out["results"]] == ["not_found", "recorded"]
    reads = await db.fetch("SELECT notice_id::text, member_id FROM recipients WHERE read_at IS NOT NULL")
    assert sorted((r["notice_id"], r["member_id"]) for r in reads) == sorted(
        [(from_b1, "m1a"), (from_admin, "m1a")]
    )


async def test_a_bad_item_is_named_by_its_index_and_nothing_is_stored(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    nid = await _notice_by(client, None, {"units": ["c"]})
    await _active(client, nid)
    good = {"notice_id": nid, "member_id": "m1a", "type": "read"}
    future = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
    before = await snapshot(db)
    cases: list[tuple[Any, list[str]]] = [
        ([good, {**good, "notice_id": "not-a-uuid"}], ["receipts[1].notice_id"]),
        ([good, good, {**good, "type": "delivered"}], ["receipts[2].type"]),
        ([{**good, "extra": 1}], ["receipts[0].extra"]),
        ([good, {"notice_id": nid, "type": "read"}], ["receipts[1].member_id"]),
        ([good, {**good, "at": future}], ["receipts[1].at"]),
        ([{**good, "at": "2026-01-01T00:00:00"}], ["receipts[0].at"]),  # no time zone
        ([], ["receipts"]),
        ([good] * 10_001, ["receipts"]),
    ]
    for items, want in cases:
        resp = await client.post("/v1/receipts:batch", json={"receipts": items}, headers=auth())
        body = await problem(resp, 422)
        assert [e["field"] for e in body["errors"]] == want, body
    assert await snapshot(db) == before


async def test_a_batch_runs_on_the_bulk_pool_whose_backends_yield_the_cpu(
    client: TestClient[Any, Any], worker: None, org: Org
) -> None:
    """A batch's statement runs in a backend of the API's pool for bulk work, niced as the
    workers' are (the server is local): status reads and single receipts, on the request pool
    at the API's own priority, go first."""
    nid = await _notice_by(client, None, {"units": ["c"]})
    await _active(client, nid)
    out = await _batch(client, [{"notice_id": nid, "member_id": "m1a", "type": "read"}])
    assert out["recorded"] == 1
    deps = client.app[DEPS]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert deps.bulk_pool.get_size() == 1  # the batch's, opened for it
    async with deps.bulk_pool.acquire() as conn:
        assert os.getpriority(os.PRIO_PROCESS, conn.get_server_pid()) == max(base, deps.settings.worker_nice)
    await get(client, f"/v1/notices/{nid}")
    async with deps.pool.acquire() as conn:
        assert os.getpriority(os.PRIO_PROCESS, conn.get_server_pid()) == base
