"""GET /v1/notices/{id}/stream: live counts over Server-Sent Events, on real PostgreSQL and Redis.

The organisation (tests/api/conftest.py ``org``): c -> b1 (g1a: m1a, g1b: m1b), b2 (g2a: m2a, g2b: m2b).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from notifier.api.stream import WATCHERS
from notifier.api.watch import Watch
from notifier.app import create_app
from notifier.client.sse import EventParser, ServerEvent
from notifier.db import receipts
from notifier.settings import Settings
from notifier.workers.queue import NOTICE_CHANGED, create_queue, hint_changed
from tests.api.conftest import Org, problem
from tests.conftest import auth, running_worker, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import get, post

WAIT = 15.0  # bound on any single wait (the hub polls every second)


class Stream:
    """An open stream: its events one by one, with the heartbeat comments counted."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self.parser = EventParser()

    async def next(self, within: float = WAIT) -> ServerEvent:
        async with asyncio.timeout(within):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                ev = self.parser.feed(raw.decode().rstrip("\r\n"))
                if ev is not None:
                    return ev

    async def until(self, predicate: Any, within: float = WAIT) -> dict[str, Any]:
        """The first event whose data satisfies ``predicate``."""
        async with asyncio.timeout(within):
            while True:
                data = json.loads((await self.next()).data)
                if predicate(data):
                    return data  # type: ignore[no-any-return]


async def open_stream(
    client: TestClient[Any, Any], notice_id: str, token: str | None = None, query: str = "", **headers: str
) -> Stream:
    resp = await client.get(
        f"/v1/notices/{notice_id}/stream{query}", headers={**(auth(token) if token else auth()), **headers}
    )
    assert resp.status == 200, (resp.status, await resp.text())
    assert resp.content_type == "text/event-stream"
    return Stream(resp)


async def send(client: TestClient[Any, Any], units: list[str], token: str | None = None) -> str:
    body = {"kind": "ding", "title": "Muster", "body": "Report in", "audience": {"units": units}}
    notice = await post(client, "/v1/notices", body, token=token, status=202)
    nid = str(notice["id"])

    async def fanned_out() -> bool:
        return bool((await get(client, f"/v1/notices/{nid}"))["state"] == "active")

    await wait_until(fanned_out)
    return nid


async def read(client: TestClient[Any, Any], notice_id: str, member: str) -> None:
    await post(client, f"/v1/notices/{notice_id}/receipts", {"member_id": member, "type": "read"}, status=200)


@pytest.fixture
async def notice(client: TestClient[Any, Any], org: Org, settings: Settings) -> AsyncIterator[str]:
    """A DING from the admin to the whole committee, fanned out by a real worker."""
    async with running_worker(settings):
        yield await send(client, ["c"])


async def expected(
    client: TestClient[Any, Any], nid: str, token: str | None, unit: str | None
) -> dict[str, Any]:
    """What the two GET endpoints say, composed as the stream's event must be."""
    q = f"?unit={unit}" if unit else ""
    notice = await get(client, f"/v1/notices/{nid}{q}", token=token)
    # An admin's notice, created by no unit, rolls up over its (here: only) audience unit unless ?unit=.
    parent = unit or notice["audience"]["units"][0]
    units = (await get(client, f"/v1/notices/{nid}/units?parent={parent}", token=token))["units"]
    counts = notice["counts"]
    return {"notice_id": nid, "unit": unit, "state": notice["state"], "counts": counts, "units": units}


async def test_the_counts_change_on_the_stream_while_receipts_arrive(
    client: TestClient[Any, Any], notice: str
) -> None:
    whole = await open_stream(client, notice)
    assert json.loads((await whole.next()).data) == await expected(client, notice, None, None)
    stream = await open_stream(client, notice, query="?unit=c")
    first = await stream.next()
    assert first.event == "counts" and first.id is not None and first.id.isdigit()
    data = json.loads(first.data)
    assert data["counts"]["recipients"] == 4 and data["counts"]["read"] == 0
    assert data == await expected(client, notice, None, "c")
    await read(client, notice, "m1a")
    after_one = await stream.until(lambda d: d["counts"]["read"] == 1)
    assert after_one == await expected(client, notice, None, "c")
    assert {u["unit_id"]: u["read"] for u in after_one["units"]} == {"b1": 1, "b2": 0, "c": 0}
    await read(client, notice, "m2b")
    await read(client, notice, "m1b")
    final = await stream.until(lambda d: d["counts"]["read"] == 3)
    assert final["counts"]["unread"] == 1
    assert final == await expected(client, notice, None, "c")
    assert (await whole.until(lambda d: d["counts"]["read"] == 3)) == await expected(
        client, notice, None, None
    )
    stream.resp.close()
    whole.resp.close()


async def test_each_caller_sees_its_own_slice(client: TestClient[Any, Any], org: Org, notice: str) -> None:
    b1 = await open_stream(client, notice, org.b1_secretary)
    b2 = await open_stream(client, notice, org.b2_service)
    narrow = await open_stream(client, notice, org.b1_secretary, "?unit=g1a")
    d1, d2, dn = [json.loads((await s.next()).data) for s in (b1, b2, narrow)]
    assert (d1["unit"], d1["counts"]["recipients"]) == ("b1", 2)
    assert (d2["unit"], d2["counts"]["recipients"]) == ("b2", 2)
    assert (dn["unit"], dn["counts"]["recipients"]) == ("g1a", 1)
    assert [u["unit_id"] for u in d1["units"]] == ["g1a", "g1b", "b1"]
    assert d1 == await expected(client, notice, org.b1_secretary, "b1")
    assert dn == await expected(client, notice, org.b1_secretary, "g1a")
    await read(client, notice, "m2a")
    d2 = await b2.until(lambda d: d["counts"]["read"] == 1)
    assert d2 == await expected(client, notice, org.b2_service, "b2")
    await read(client, notice, "m1a")
    d1 = await b1.until(lambda d: d["counts"]["read"] == 1)  # b2's read never showed in b1's slice
    assert d1 == await expected(client, notice, org.b1_secretary, "b1")
    assert (await narrow.until(lambda d: d["counts"]["read"] == 1))["counts"]["unread"] == 0
    for s in (b1, b2, narrow):
        s.resp.close()


async def test_a_sibling_branch_gets_404_before_any_stream(
    client: TestClient[Any, Any], org: Org, settings: Settings
) -> None:
    async with running_worker(settings):
        nid = await send(client, ["b1"], token=org.b1_service)
    for token, query in ((org.b2_service, ""), (org.b1_secretary, "?unit=b2")):
        resp = await client.get(f"/v1/notices/{nid}/stream{query}", headers=auth(token))
        await problem(resp, 404)
    # As GET /v1/notices/{id}: a member key reads its inbox, not the notice API.
    await problem(await client.get(f"/v1/notices/{nid}/stream", headers=auth(org.m1a_member)), 403)
    resp = await client.get(f"/v1/notices/{'0' * 8}-0000-0000-0000-{'0' * 12}/stream", headers=auth())
    await problem(resp, 404)
    assert not client.app[WATCHERS].watches


async def test_last_event_id_resumes_without_a_repeat(client: TestClient[Any, Any], notice: str) -> None:
    stream = await open_stream(client, notice)
    old = await stream.next()
    stream.resp.close()
    # Reconnecting with the current version: nothing until the next change.
    again = await open_stream(client, notice, **{"Last-Event-ID": str(old.id)})
    await read(client, notice, "m1a")
    resumed = await again.next()
    assert resumed.id != old.id and json.loads(resumed.data)["counts"]["read"] == 1
    again.resp.close()
    # With an older version: the current state at once.
    late = await open_stream(client, notice, **{"Last-Event-ID": str(old.id)})
    current = await late.next()
    assert current.id == resumed.id and current.data == resumed.data
    late.resp.close()


async def test_a_read_storm_is_coalesced_to_four_events_a_second(
    client: TestClient[Any, Any], settings: Settings, db: asyncpg.Connection
) -> None:
    await client.put("/v1/units/big", json={"name": "Big"}, headers=auth())
    members: list[dict[str, Any]] = [
        {"id": f"s{i:03d}", "name": f"S {i}", "units": ["big"]} for i in range(120)
    ]
    await post(client, "/v1/members:batch", {"members": members}, status=200)
    async with running_worker(settings):
        nid = await send(client, ["big"])
    stream = await open_stream(client, nid)
    await stream.next()
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def collect() -> None:
        while True:
            data = json.loads((await stream.next()).data)
            arrivals.append(loop.time())
            if data["counts"]["read"] == len(members):
                return

    collector = asyncio.create_task(collect())
    started = loop.time()
    for m in members:  # each read hints the hub at once
        await read(client, nid, m["id"])
        # paced so the storm outlasts a few coalescing windows (0.25 s) however fast a read is:
        # 120 reads at ~1.5 ms each were over before the first event
        await asyncio.sleep(0.005)
    await asyncio.wait_for(collector, WAIT)
    elapsed = arrivals[-1] - started
    # Uncoalesced, each of the 120 reads would be an event; 4 a second bounds them.
    assert len(arrivals) <= 4 * elapsed + 2, (len(arrivals), elapsed)
    assert len(arrivals) >= 2  # the counts moved on the stream during the storm, not only at its end
    stream.resp.close()


async def test_a_quiet_stream_sends_heartbeats(
    settings: Settings, client: TestClient[Any, Any], notice: str
) -> None:
    quick = settings.model_copy(update={"stream_heartbeat_seconds": 0.2})
    async with TestClient(TestServer(create_app(quick), host="127.0.0.1")) as c:
        stream = await open_stream(c, notice)
        await stream.next()
        async with asyncio.timeout(WAIT):
            while stream.parser.comments < 2:
                line = await stream.resp.content.readline()
                assert line in (b": heartbeat\n", b"\n"), line
                stream.parser.feed(line.decode().rstrip("\n"))
        stream.resp.close()


async def test_a_client_that_goes_away_leaves_nothing_behind(
    client: TestClient[Any, Any], notice: str
) -> None:
    hub = client.app[WATCHERS]
    before = len(asyncio.all_tasks())
    streams = [await open_stream(client, notice) for _ in range(3)]
    for s in streams:
        await s.next()
    assert len(hub.watches) == 1 and len(next(iter(hub.watches.values())).subscribers) == 3
    for s in streams:
        s.resp.close()

    async def gone() -> bool:
        return not hub.watches and len(asyncio.all_tasks()) <= before

    await wait_until(gone, within=WAIT)


async def test_shutting_down_ends_open_streams_promptly(
    settings: Settings, client: TestClient[Any, Any], notice: str
) -> None:
    server = TestServer(create_app(settings), host="127.0.0.1")
    c = TestClient(server)
    await c.start_server()
    try:
        stream = await open_stream(c, notice)
        await stream.next()
        loop = asyncio.get_running_loop()
        started = loop.time()
        closing = asyncio.create_task(server.close())
        with pytest.raises(EOFError):
            await stream.next(within=WAIT)
        await asyncio.wait_for(closing, WAIT)
        assert loop.time() - started < 10  # not the server's 60 s wait for a stuck handler
    finally:
        await c.close()


async def test_a_worker_hint_wakes_the_hub_before_its_regular_poll(
    settings: Settings, db: asyncpg.Connection, client: TestClient[Any, Any], notice: str
) -> None:
    slow = settings.model_copy(update={"stream_poll_seconds": 600.0})
    async with TestClient(TestServer(create_app(slow), host="127.0.0.1")) as c:
        stream = await open_stream(c, notice)
        await stream.next()
        # A read recorded elsewhere (as a worker's provider report would be), then its hint.
        assert await receipts.mark_read(db, notice, "m2b", "test")
        queue = await create_queue(settings)
        got: list[dict[str, Any]] = []

        async def hinted() -> bool:  # until the hub's subscription is up, a hint reaches nobody
            await hint_changed(queue, notice)
            try:
                got.append(await stream.until(lambda d: d["counts"]["read"] == 1, within=0.5))
            except TimeoutError:
                return False
            return True

        try:
            await wait_until(hinted, within=WAIT, every=0)
        finally:
            await queue.aclose()
        data = got[0]
        assert data["counts"]["unread"] == 3
        stream.resp.close()


async def test_an_admins_notice_streams_its_first_audience_units_rows_and_its_state(
    client: TestClient[Any, Any], org: Org, notice: str
) -> None:
    """No creating unit: the rows are those the console's page renders (parent: the first audience
    unit), and the notice's state rides along, so a recall shows without a reload."""
    stream = await open_stream(client, notice)
    first = await stream.until(lambda d: True)
    assert first == await expected(client, notice, None, None)
    assert {"b1", "b2"} <= {u["unit_id"] for u in first["units"]} and first["state"] == "active"
    resp = await client.post(f"/v1/notices/{notice}/recall", headers=auth())
    assert resp.status == 200, await resp.text()
    recalled = await stream.until(lambda d: d["state"] == "recalled")
    assert recalled == await expected(client, notice, None, None)
    stream.resp.close()


async def test_accept_json_answers_the_current_event_once(
    client: TestClient[Any, Any], org: Org, notice: str
) -> None:
    resp = await client.get(
        f"/v1/notices/{notice}/stream", headers={**auth(org.b1_secretary), "Accept": "application/json"}
    )
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == await expected(client, notice, org.b1_secretary, "b1")


async def test_workers_hint_after_the_fanout_and_after_each_write_back(
    client: TestClient[Any, Any], org: Org, settings: Settings, receiver: WebhookReceiver
) -> None:
    await post(client, "/v1/members/m1a/contacts", {"channel": "webhook", "target": receiver.url})
    redis = Redis.from_url(settings.redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(NOTICE_CHANGED)
    hints: list[str] = []

    async def collect() -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                hints.append(message["data"].decode())

    collector = asyncio.create_task(collect())
    try:
        async with running_worker(settings):
            body = {"kind": "notice", "title": "T", "body": "B", "audience": {"members": ["m1a"]}}
            body["channels"] = ["webhook"]
            nid = (await post(client, "/v1/notices", body, status=202))["id"]

            async def two() -> bool:  # one from the fan-out (one chunk), one from the delivery's write-back
                return hints.count(nid) >= 2 and len(receiver.messages) == 1

            await wait_until(two, within=WAIT)
        assert set(hints) == {nid}
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await pubsub.aclose()
        await redis.aclose()


async def test_streams_of_one_slice_share_one_poll(
    client: TestClient[Any, Any], org: Org, notice: str
) -> None:
    hub = client.app[WATCHERS]
    streams = [await open_stream(client, notice, org.b1_secretary) for _ in range(20)]
    streams += [await open_stream(client, notice, query="?unit=c") for _ in range(5)]
    for s in streams:
        await s.next()
    assert len(hub.watches) == 2  # (notice, b1) and (notice, c): one row set each
    sizes: list[int] = []
    refresh = hub.refresh

    async def counted(watches: list[Watch]) -> None:
        sizes.append(len(watches))
        await refresh(watches)

    hub.refresh = counted
    loop = asyncio.get_running_loop()
    polls, started = hub.polls, loop.time()
    await read(client, notice, "m1b")
    for s in streams:
        assert (await s.until(lambda d: d["counts"]["read"] == 1))["counts"]["read"] == 1
    await asyncio.sleep(1.2)  # a regular poll too
    # One statement per tick for both slices and all 25 streams: never one per stream or slice.
    assert hub.polls - polls <= 4 * (loop.time() - started) + 2
    assert 2 in sizes and max(sizes) == 2, sizes  # the regular poll: both slices in one statement
    for s in streams:
        s.resp.close()


async def test_a_read_through_the_same_process_needs_no_regular_poll(
    settings: Settings, client: TestClient[Any, Any], notice: str
) -> None:
    slow = settings.model_copy(update={"stream_poll_seconds": 600.0})
    async with TestClient(TestServer(create_app(slow), host="127.0.0.1")) as c:
        stream = await open_stream(c, notice)
        await stream.next()
        await read(c, notice, "m2a")  # the receipts API tells its own hub
        assert (await stream.until(lambda d: d["counts"]["read"] == 1))["counts"]["unread"] == 3
        stream.resp.close()
