"""What a read receipt costs the database, in round trips of the API's pool: one for a single
receipt (two with an API key: its lookup, which also takes from its rate bucket), a fixed few for a
batch whatever its size. Statements are counted as the API's connections send them (asyncpg
prepares each once per connection: the counts are taken warm)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.api.keys import DEPS
from notifier.db.receipts import RECORD_MANY
from tests.api.conftest import Org
from tests.api.test_scoping import _active, _notice_by
from tests.helpers import get, post


@contextlib.contextmanager
def round_trips(monkeypatch: pytest.MonkeyPatch, *pools: Any) -> Iterator[list[str]]:
    """The statements the connections of ``pools`` send inside the block."""
    sent: list[str] = []
    cls: Any = asyncpg.connection.Connection
    execute, do_execute = cls.execute, cls._execute

    def ours(conn: Any) -> bool:
        holder = conn._pool_holder() if conn._pool_holder is not None else None
        return holder is not None and any(holder._pool is pool for pool in pools)

    async def counted_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args and ours(self):  # with arguments it goes through _execute, counted there
            sent.append(query)
        return await execute(self, query, *args, **kwargs)

    async def counted_do_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if ours(self):
            sent.append(query)
        return await do_execute(self, query, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(cls, "execute", counted_execute)
        m.setattr(cls, "_execute", counted_do_execute)
        yield sent


async def test_a_single_receipt_is_one_round_trip_and_one_more_for_a_key(
    client: TestClient[Any, Any], worker: None, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    nid = await _notice_by(client, None, {"units": ["c"]})
    await _active(client, nid)
    pool = client.app[DEPS].pool
    url = f"/v1/notices/{nid}/receipts"
    await post(client, url, {"member_id": "m1a", "type": "read"}, status=200)  # warm: statements prepared
    await post(client, url, {"member_id": "m1a", "type": "read"}, token=org.b1_service, status=404)
    with round_trips(monkeypatch, pool) as sent:
        first = await post(client, url, {"member_id": "m2a", "type": "read"}, status=200)
        assert (first["recorded"], first["member_id"]) == (True, "m2a")
    assert len(sent) == 1, sent
    with round_trips(monkeypatch, pool) as sent:
        again = await post(client, url, {"member_id": "m2a", "type": "read"}, status=200)
        assert (again["recorded"], again["read_at"]) == (False, first["read_at"])
    assert len(sent) == 1, sent
    b1 = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await _active(client, b1)
    await post(
        client,
        f"/v1/notices/{b1}/receipts",
        {"member_id": "m1b", "type": "read"},
        token=org.b1_service,
        status=200,
    )
    with round_trips(monkeypatch, pool) as sent:
        out = await post(
            client,
            f"/v1/notices/{b1}/receipts",
            {"member_id": "m1a", "type": "read"},
            token=org.b1_service,
            status=200,
        )
        assert out["recorded"] is True
    assert len(sent) == 2, sent  # the key's lookup and rate bucket, then the receipt


async def test_a_batch_costs_the_same_few_round_trips_whatever_its_size(
    client: TestClient[Any, Any], worker: None, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_admin = await _notice_by(client, None, {"units": ["c"]})
    by_b1 = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    for nid in (by_admin, by_b1):
        await _active(client, nid)
    pool = client.app[DEPS].bulk_pool  # a batch's pool (the request pool's stays free)
    members = ["m1a", "m1b"]
    await post(
        client,
        "/v1/receipts:batch",
        {"receipts": [{"notice_id": by_admin, "member_id": "m1a", "type": "read"}]},
        status=200,
    )
    counts = []
    for token, nid in ((None, by_admin), (org.b1_service, by_b1)):
        for size in (1, 2):
            items = [{"notice_id": nid, "member_id": m, "type": "read"} for m in members[:size]] * 2
            with round_trips(monkeypatch, pool) as sent:
                await post(client, "/v1/receipts:batch", {"receipts": items}, token=token, status=200)
            counts.append(len(sent))
    # the notice's visibility, the members' (a unit key's: an admin sees every member, and one
    # that does not exist has no recipient row), and the one statement that marks, counts and answers
    assert counts == [2, 2, 3, 3]


async def test_a_lesson_read_is_recorded_in_its_own_transaction_once(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    worker: None,
    org: Org,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lesson's read is left by the one-statement path for the transaction that also awards its
    points (``points.award``, same transaction): recorded there, counted once, and a repeat is the
    one statement again."""
    body = {"kind": "lesson", "title": "Lesson", "body": "Read me", "audience": {"units": ["c"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    await _active(client, nid)
    pool = client.app[DEPS].pool
    url = f"/v1/notices/{nid}/receipts"
    with round_trips(monkeypatch, pool) as sent:
        first = await post(client, url, {"member_id": "m1a", "type": "read"}, status=200)
    assert first["recorded"] is True and first["read_at"] is not None
    # the one statement, then in one transaction the read and its points (the gate: no rule, no more)
    assert [q if q == RECORD_MANY else q.split()[0] for q in sent] == [
        RECORD_MANY,
        "BEGIN;",
        RECORD_MANY,
        "SELECT",
        "COMMIT;",
    ], sent
    with round_trips(monkeypatch, pool) as sent:
        again = await post(client, url, {"member_id": "m1a", "type": "read"}, status=200)
    assert (again["recorded"], again["read_at"]) == (False, first["read_at"])
    assert len(sent) == 1
    read = await db.fetchval("SELECT sum(read) FROM notice_counts WHERE notice_id = $1::uuid", nid)
    assert read == 1


async def test_the_status_read_is_one_round_trip_and_one_more_for_a_key(
    client: TestClient[Any, Any], worker: None, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/notices/{id} (the status poll): the notice, whether the caller sees it, and its counts
    (a unit key's: of its subtree) in one statement."""
    nid = await _notice_by(client, None, {"units": ["c"]})
    await _active(client, nid)
    pools = client.app[DEPS].pool, client.app[DEPS].status_pool  # the poll runs on the second
    await post(client, f"/v1/notices/{nid}/receipts", {"member_id": "m1a", "type": "read"}, status=200)
    url = f"/v1/notices/{nid}"
    await get(client, url)  # warm: statements prepared
    await get(client, url, token=org.b1_service)
    with round_trips(monkeypatch, *pools) as sent:
        whole = await get(client, url)
    assert len(sent) == 1, sent
    with round_trips(monkeypatch, *pools) as sent:
        branch = await get(client, url, token=org.b1_service)
    assert len(sent) == 2, sent  # the key's lookup and rate bucket, then the status
    assert whole["counts"]["recipients"] == 4 and whole["counts"]["read"] == 1
    assert branch["counts"]["recipients"] == 2 and branch["counts"]["read"] == 1
    own = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await get(client, f"/v1/notices/{own}", token=org.b2_service, status=404)  # not seen: not found
