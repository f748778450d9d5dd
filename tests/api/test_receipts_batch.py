"""``POST /v1/receipts:batch``: many reads in one call, counted as single receipts are, checked per
item (scope, recipient), idempotent; a bad item is a 422 naming it by its index, nothing stored."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from notifier.api.keys import DEPS
from notifier.api.receipts import BatchIn
from notifier.api.routing import SLICE_ITEMS, validate_body
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


async def test_a_long_batch_names_its_bad_items_as_one_validation_does_and_stores_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    """Validated a slice at a time (routing.validate_body), a long batch is still refused whole:
    every bad item named by its index, in order, wherever its slice, and nothing recorded."""
    nid = await _notice_by(client, None, {"units": ["c"]})
    await _active(client, nid)
    items: list[dict[str, Any]] = [{"notice_id": nid, "member_id": "m1a", "type": "read"}] * 2000
    items[3] = {**items[3], "type": "delivered"}
    items[1234] = {"notice_id": nid, "member_id": "a b", "type": "read"}
    items[1999] = {"notice_id": "not-a-uuid", "member_id": "m2a", "type": "read", "extra": 1}
    before = await snapshot(db)
    resp = await client.post("/v1/receipts:batch", json={"receipts": items}, headers=auth())
    body = await problem(resp, 422)
    assert [e["field"] for e in body["errors"]] == [
        "receipts[3].type",
        "receipts[1234].member_id",
        "receipts[1999].notice_id",
        "receipts[1999].extra",
    ]
    assert await snapshot(db) == before
    assert (await get(client, f"/v1/notices/{nid}"))["counts"]["read"] == 0


def _receipts(n: int) -> list[dict[str, Any]]:
    return [{"notice_id": str(uuid.UUID(int=i % 3)), "member_id": f"m{i}", "type": "read"} for i in range(n)]


async def test_a_long_batch_is_validated_in_slices_other_tasks_running_between() -> None:
    """What keeps a status read's wait short during a storm of batches: 2,000 items are validated
    SLICE_ITEMS at a time, and the event loop runs other tasks between the slices (one call held
    it for all of them)."""
    turns = 0
    stop = asyncio.Event()

    async def other() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = turns
    body = await validate_body(BatchIn, {"receipts": _receipts(2000)})
    during = turns - before
    stop.set()
    await task
    assert during >= 2000 // SLICE_ITEMS
    assert body == BatchIn.model_validate({"receipts": _receipts(2000)})


@pytest.mark.parametrize(
    "change",
    [
        {},
        {5: {"type": "delivered"}, 700: {"member_id": ""}, 1999: {"at": "2026-01-01T00:00:00"}},
        {260: {"notice_id": 7, "extra": True}},
        {"outer": {"extra": 1}},
        {"length": 10_001},
    ],
    ids=["valid", "bad-items", "bad-types", "extra-field", "too-many"],
)
async def test_sliced_validation_accepts_and_refuses_as_one_call_does(change: dict[Any, Any]) -> None:
    valid = not change
    items = _receipts(change.pop("length", 2000))
    for i, fields in change.items():
        if isinstance(i, int):
            items[i] = {**items[i], **fields}
    data = {"receipts": items, **change.get("outer", {})}
    try:
        one: Any = BatchIn.model_validate(data)
    except ValidationError as exc:
        one = exc.errors(include_url=False)
    try:
        sliced: Any = await validate_body(BatchIn, data)
    except ValidationError as exc:
        sliced = exc.errors(include_url=False)
    assert sliced == one
    assert isinstance(one, BatchIn) == valid


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
