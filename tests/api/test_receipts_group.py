"""The group commit of single read receipts (api/receipts_group.py): receipts that arrive while a
flush is in flight go together in the next one (one statement), each caller answered its own row.

A flush is held by a recipient row another transaction has locked (the flush's statement waits
for it); the receipts sent meanwhile queue, and go in one statement once it is let go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.api import group_commit
from notifier.api.receipts_group import RECEIPTS_GROUP, ReceiptGroup
from notifier.db import receipts as receipts_db
from tests.api.conftest import Org, problem
from tests.api.test_points import LESSON_RULE, _lesson
from tests.api.test_scoping import _active, _notice_by
from tests.conftest import auth, wait_until
from tests.helpers import post
from tests.workers.test_counters import violations


def _statement_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each statement the receipts' group sends, from now on."""
    sizes: list[int] = []
    record_many = receipts_db.record_many

    async def counted(conn: Any, notice_ids: list[str], *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(notice_ids))
        return await record_many(conn, notice_ids, *args, **kwargs)

    monkeypatch.setattr(receipts_db, "record_many", counted)
    return sizes


@pytest.fixture
def flushes(client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each statement the group sends; one flush at a time."""
    monkeypatch.setattr(client.app[RECEIPTS_GROUP], "flushes", 1)
    return _statement_sizes(monkeypatch)


@pytest.fixture
def statements(client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each statement the group sends, with the app's own number of flushes (2)."""
    assert client.app[RECEIPTS_GROUP].flushes == 2
    return _statement_sizes(monkeypatch)


@contextlib.asynccontextmanager
async def held(
    url: str, nid: str, member_id: str, send: Callable[[], Awaitable[Any]]
) -> AsyncIterator[asyncio.Task[Any]]:
    """A flush (``send()``: the receipt of ``member_id``) that waits for its recipient row, locked
    by another transaction while the block runs; the task of that receipt."""
    other = await asyncpg.connect(url)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT 1 FROM recipients WHERE notice_id = $1 AND member_id = $2 FOR UPDATE", nid, member_id
            )
            task = asyncio.ensure_future(send())
            yield task
    finally:
        await other.close()


async def _waits(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE '%record_receipts%'"
        )
    )


def _queued(group: ReceiptGroup, n: int) -> Any:
    async def check() -> bool:
        return len(group._queue) >= n

    return check


async def _answer(client: TestClient[Any, Any], nid: str, member_id: str | None, token: str | None) -> Any:
    body = {"type": "read"} if member_id is None else {"member_id": member_id, "type": "read"}
    resp = await client.post(
        f"/v1/notices/{nid}/receipts", json=body, headers=auth(token) if token else auth()
    )
    if resp.status == 200:
        return await resp.json()
    return (resp.status, (await problem(resp, resp.status)).get("detail"))


async def test_receipts_of_different_callers_in_one_flush_each_get_their_own_answer(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    worker: None,
    org: Org,
    server_urls: tuple[str, str],
    flushes: list[int],
) -> None:
    await post(client, "/v1/point-rules", LESSON_RULE)
    nid = await _notice_by(client, None, {"units": ["c"]})  # the admin's, to everyone
    nb1 = await _notice_by(client, org.b1_service, {"units": ["b1"]})  # b1's own
    await _active(client, nid)
    await _active(client, nb1)
    lesson = await _lesson(client, ["c"])
    group = client.app[RECEIPTS_GROUP]
    crowd = [
        (nid, "m2a", None),  # recorded
        (nid, "m2a", None),  # the same pair in the same flush: read already
        (nid, "m1b", org.b1_service),  # not b1's notice: 404 notice
        (nb1, "m1b", org.b1_service),  # recorded
        (nb1, "m2a", org.b1_service),  # not a member b1 sees: 404 recipient
        (nb1, None, org.m1a_member),  # a member key's own read: recorded
        (nid, "nobody", None),  # no such member: 404 recipient
        (lesson, "m1b", None),  # a lesson: recorded, with its point
        (lesson, "m1b", None),  # again in the same flush: read already, no second point
        (nb1, "m2b", None),  # not a recipient of b1's notice: 404 recipient
    ]
    async with held(server_urls[0], nid, "m1a", lambda: _answer(client, nid, "m1a", None)) as blocker:
        await wait_until(lambda: _waits(db), within=10)
        tasks = [asyncio.ensure_future(_answer(client, n, m, t)) for n, m, t in crowd]
        await wait_until(_queued(group, len(crowd)), within=10)
    answers = await asyncio.gather(*tasks)
    first = await blocker
    # the blocker's flush, then the crowd's in one statement (and the lesson's two again, with points)
    assert flushes == [1, len(crowd), 2]
    assert (first["member_id"], first["recorded"]) == ("m1a", True)
    recorded = [a["recorded"] if isinstance(a, dict) else a[0] for a in answers]
    assert recorded == [True, False, 404, True, 404, True, 404, True, False, 404]
    assert answers[0]["read_at"] == answers[1]["read_at"] and answers[0]["member_id"] == "m2a"
    assert answers[5]["member_id"] == "m1a" and answers[5]["notice_id"] == nb1
    assert [a[1] for a in answers if isinstance(a, tuple)] == [
        "notice not found",
        "recipient not found",
        "recipient not found",
        "recipient not found",
    ]
    assert answers[7]["read_at"] == answers[8]["read_at"]
    awards = await db.fetch("SELECT member_id, source, points FROM point_awards WHERE code = 'lesson_read'")
    assert [tuple(r) for r in awards] == [("m1b", f"notice:{lesson}", 1)]
    reads = await db.fetch(
        "SELECT notice_id::text AS n, member_id FROM recipients WHERE read_at IS NOT NULL ORDER BY 1, 2"
    )
    assert sorted((r["n"], r["member_id"]) for r in reads) == sorted(
        [(nid, "m1a"), (nid, "m2a"), (nb1, "m1b"), (nb1, "m1a"), (lesson, "m1b")]
    )
    assert await violations(db) == []  # counters equal the rows


async def test_a_failing_or_cancelled_receipt_costs_the_others_nothing(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    worker: None,
    org: Org,
    server_urls: tuple[str, str],
    flushes: list[int],
) -> None:
    """An item the statement cannot take fails alone (the flush runs its items one by one); a
    caller cancelled while queued sends nothing; one cancelled while its flush runs is recorded
    once, and counted."""
    nid, group, receipt = await _admins_receipts(client)
    async with held(server_urls[0], nid, "m1a", lambda: receipt("m1a")) as blocker:
        await wait_until(lambda: _waits(db), within=10)
        good, bad, gone, last = (asyncio.ensure_future(receipt(m)) for m in ("m2a", "m\x00", "m1b", "m2b"))
        await wait_until(_queued(group, 4), within=10)
        gone.cancel()
        blocker.cancel()  # its flush is waiting in the database: it goes on
        with pytest.raises(asyncio.CancelledError):
            await blocker
    assert (await good)["recorded"] is True and (await last)["recorded"] is True
    with pytest.raises(asyncpg.PostgresError):
        await bad
    assert gone.cancelled()
    assert flushes == [1, 3, 1, 1, 1]  # the blocker's; the three left, failed; one by one
    reads = await db.fetch(
        "SELECT member_id FROM recipients WHERE notice_id = $1 AND read_at IS NOT NULL", nid
    )
    assert sorted(r["member_id"] for r in reads) == ["m1a", "m2a", "m2b"]
    assert await db.fetchval("SELECT sum(read) FROM notice_counts WHERE notice_id = $1", nid) == 3
    assert await violations(db) == []


async def test_many_concurrent_receipts_and_a_batch_deadlock_never_and_count_right(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    worker: None,
    org: Org,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Receipts of two notices from several callers at once, two flushes in flight (groups of
    four are full ones here), and a batch of the same reads meanwhile: every answer 200, each
    read recorded once, counters = rows."""
    monkeypatch.setattr(group_commit, "FLUSH_MAX", 4)
    nid = await _notice_by(client, None, {"units": ["c"]})
    nb1 = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await _active(client, nid)
    await _active(client, nb1)
    admin: str | None = None
    calls = [(nid, m, admin) for m in ("m1a", "m1b", "m2a", "m2b")] * 5
    calls += [(nb1, m, org.b1_service) for m in ("m1a", "m1b")] * 5
    items = [{"notice_id": n, "member_id": m, "type": "read"} for n, m, _ in calls[::3]]
    batch = asyncio.ensure_future(post(client, "/v1/receipts:batch", {"receipts": items}, status=200))
    answers = await asyncio.gather(*(_answer(client, n, m, t) for n, m, t in calls))
    await batch
    assert all(isinstance(a, dict) for a in answers), answers
    firsts = {(a["notice_id"], a["member_id"]) for a in answers if a["recorded"]}
    assert len([a for a in answers if a["recorded"]]) == len(firsts)  # each pair recorded at most once
    assert await db.fetchval("SELECT count(*) FROM recipients WHERE read_at IS NOT NULL") == 6
    assert await violations(db) == []


async def _admins_receipts(
    client: TestClient[Any, Any],
) -> tuple[str, ReceiptGroup, Callable[[str], Awaitable[Any]]]:
    """A notice to unit c, fanned out; the app's receipts group; an admin's receipt of it by member."""
    nid = await _notice_by(client, None, {"units": ["c"]})
    await _active(client, nid)
    group: ReceiptGroup = client.app[RECEIPTS_GROUP]

    def receipt(member_id: str) -> Awaitable[Any]:
        return group.record(nid, member_id, root=None, member_key=False)

    return nid, group, receipt


async def test_receipts_arriving_while_a_flush_is_in_flight_wait_for_it_not_a_second_flush(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    worker: None,
    org: Org,
    server_urls: tuple[str, str],
    statements: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two flushes may run at once, but the second only for a full group (or items stalled, not
    here): the receipts that come one by one while a flush is in flight go together in the next
    statement (one round trip, one commit), not each in an eager flush of its own."""
    monkeypatch.setattr(group_commit, "SECOND_FLUSH_AFTER", 600.0)
    nid, group, receipt = await _admins_receipts(client)
    async with held(server_urls[0], nid, "m1a", lambda: receipt("m1a")) as blocker:
        await wait_until(lambda: _waits(db), within=10)
        tasks = []
        for member_id in ("m1b", "m2a", "m2b"):  # one at a time, each given time to start a flush
            tasks.append(asyncio.ensure_future(receipt(member_id)))
            for _ in range(20):
                await asyncio.sleep(0)
        await wait_until(_queued(group, 3), within=5)
        assert statements == [1] and not any(t.done() for t in tasks)
    answers = await asyncio.gather(blocker, *tasks)
    assert [a["recorded"] for a in answers] == [True] * 4
    assert statements == [1, 3]
    assert await violations(db) == []


async def test_a_full_group_waiting_gets_a_second_flush_beside_the_one_in_flight(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    worker: None,
    org: Org,
    server_urls: tuple[str, str],
    statements: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(group_commit, "FLUSH_MAX", 3)
    nid, group, receipt = await _admins_receipts(client)
    async with held(server_urls[0], nid, "m1a", lambda: receipt("m1a")) as blocker:
        await wait_until(lambda: _waits(db), within=10)
        tasks = [asyncio.ensure_future(receipt(m)) for m in ("m1b", "m2a", "m2b")]
        # answered while the first flush still waits for its row
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert not blocker.done()
    assert [a["recorded"] for a in answers] == [True] * 3
    assert (await blocker)["recorded"] is True
    assert statements == [1, 3]
    assert await violations(db) == []


async def test_receipts_stalled_behind_a_stuck_flush_get_a_second_flush(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    worker: None,
    org: Org,
    server_urls: tuple[str, str],
    statements: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flush stuck on a locked recipient row does not hold up the process's other receipts for
    as long as the lock lasts: what waited ``SECOND_FLUSH_AFTER`` behind it goes in a second flush."""
    monkeypatch.setattr(group_commit, "SECOND_FLUSH_AFTER", 0.05)
    nid, group, receipt = await _admins_receipts(client)
    async with held(server_urls[0], nid, "m1a", lambda: receipt("m1a")) as blocker:
        await wait_until(lambda: _waits(db), within=10)
        tasks = [asyncio.ensure_future(receipt(m)) for m in ("m1b", "m2a")]
        # answered while the first flush still waits for its row (not a full group: FLUSH_MAX 256)
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert not blocker.done()
    assert [a["recorded"] for a in answers] == [True] * 2
    assert (await blocker)["recorded"] is True
    assert statements == [1, 2]
    assert await violations(db) == []
