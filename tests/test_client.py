"""notifier.client against the live app (create_app on a loopback port, real PostgreSQL, Redis and
worker): every method, typed errors carrying the problem, retries that honour Retry-After."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from notifier.app import create_app
from notifier.client import (
    Client,
    Conflict,
    Invalid,
    NotFound,
    RateLimited,
    Retry,
    TransportError,
    Unavailable,
)
from notifier.client.models import Audience, ContactIn, MemberBatchItem, MemberIn, NoticeIn, UnitIn
from notifier.settings import RateLimits, RoleLimit, Settings
from tests.conftest import ADMIN_TOKEN, running_worker, wait_until

WAIT = 15.0


@pytest.fixture
async def live(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[str]:
    """The API on a loopback port and a worker; yields the base URL."""
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        async with running_worker(settings):
            yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def org(api: Client) -> None:
    await api.put_unit("county", UnitIn(name="County"))
    for b in ("east", "west"):
        await api.put_unit(b, UnitIn(name=b.title(), parent_id="county"))
    people = [
        MemberBatchItem(id=f"{b}{i}", name=f"Officer {b}{i}", units=[b])
        for b in ("east", "west")
        for i in (1, 2)
    ]
    assert (await api.put_members(people)).created == 4


async def test_every_method_against_the_live_app(live: str) -> None:
    async with Client(live, ADMIN_TOKEN) as api:
        await org(api)
        assert (await api.get_unit("east")).parent_id == "county"
        assert {u.id for u in (await api.list_units()).items} == {"county", "east", "west"}
        member = await api.put_member("east1", MemberIn(name="Officer East 1", units=["east"]))
        assert member.name == "Officer East 1" and (await api.get_member("east1")).units == ["east"]
        contact = await api.add_contact(
            "east1", ContactIn(channel="webhook", target="http://127.0.0.1:9/hook")
        )
        assert [c.id for c in (await api.list_contacts("east1")).items] == [contact.id]
        await api.delete_contact("east1", contact.id)
        assert (await api.list_contacts("east1")).items == []

        ding = NoticeIn(kind="ding", title="Muster", body="Report in", audience=Audience(units=["county"]))
        sent = await api.send(ding, idempotency_key="muster-1")
        assert (await api.send(ding, idempotency_key="muster-1")).id == sent.id  # once, however often
        assert (await api.send(ding)).id != sent.id  # a fresh key each call: a second notice

        async def active() -> bool:
            return (await api.get_notice(sent.id)).state == "active"

        await wait_until(active)
        assert sent.id in {n.id for n in (await api.list_notices(kind="ding")).items}
        status = await api.status(sent.id, unit="county")
        assert status.counts == (await api.get_notice(sent.id)).counts
        assert status.units == (await api.notice_units(sent.id, parent="county")).units
        assert [u.unit_id for u in status.units] == ["east", "west", "county"]

        updates = api.stream(sent.id, unit="county")
        first = await anext(updates)
        assert first.data.counts.recipients == 4 and first.data.counts.read == 0
        receipt = await api.read(sent.id, "east1")
        assert receipt.recorded and not (await api.read(sent.id, "east1")).recorded
        async with asyncio.timeout(WAIT):
            update = await anext(updates)
        assert update.version != first.version and update.data.counts.read == 1
        assert {u.unit_id: u.read for u in update.data.units}["east"] == 1
        await updates.aclose()

        page = await api.roll_call(sent.id)
        unread = {e.member_id for g in page.groups for e in g.recipients}
        assert unread == {"east2", "west1", "west2"}
        rows = list(csv.reader(io.StringIO((await api.roll_call_csv(sent.id)).lstrip("\ufeff"))))
        assert len(rows) == 1 + 3


async def test_errors_are_typed_and_carry_the_problem(live: str) -> None:
    async with Client(live, ADMIN_TOKEN) as api:
        with pytest.raises(NotFound) as missing:
            await api.get_unit("nowhere")
        assert missing.value.status == 404 and missing.value.problem["instance"] == "/v1/units/nowhere"
        with pytest.raises(Invalid) as bad:
            await api.put_member("m", MemberIn(name="M", units=["nowhere"]))
        assert [e["field"] for e in bad.value.errors] == ["units[0]"]
        with pytest.raises(NotFound):
            await api.status("00000000-0000-0000-0000-000000000000")
    async with Client(live, "not-a-token") as stranger:
        with pytest.raises(Exception) as denied:
            await stranger.list_units()
        assert getattr(denied.value, "status", None) == 401


async def test_a_rate_limited_call_waits_retry_after_and_succeeds(
    settings: Settings, db: asyncpg.Connection
) -> None:
    slow = RoleLimit(per_second=1, burst=1)
    tight = settings.model_copy(update={"rate_limits": RateLimits(admin=slow, service=slow)})
    server = TestServer(create_app(tight), host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        async with Client(base, ADMIN_TOKEN) as admin:
            await admin.put_unit("u", UnitIn(name="U"))
            key = await _service_key(base)
        async with Client(base, key, retry=Retry(attempts=1)) as once:
            await once.list_units()
            with pytest.raises(RateLimited) as limited:
                await once.list_units()
            assert limited.value.retry_after is not None and limited.value.retry_after >= 1
        async with Client(base, key, retry=Retry(attempts=4, cap=5)) as patient:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert [u.id for u in (await patient.list_units()).items] == ["u"]
            assert [u.id for u in (await patient.list_units()).items] == ["u"]
            assert loop.time() - started >= 0.5  # it waited for the bucket instead of failing
    finally:
        await server.close()


async def _service_key(base: str) -> str:
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            base + "/v1/api-keys",
            json={"name": "svc", "role": "service", "unit_id": "u"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["token"])


async def test_503_is_retried_a_bounded_number_of_times() -> None:
    """A stand-in that answers 503 with Retry-After (as the API does while PostgreSQL is away)."""
    answers: list[int] = []

    async def units(request: web.Request) -> web.Response:
        answers.append(503 if len(answers) < 2 else 200)
        if answers[-1] == 503:
            return web.json_response(
                {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "db away"},
                status=503,
                content_type="application/problem+json",
                headers={"Retry-After": "0"},
            )
        return web.json_response({"items": [], "next_cursor": None})

    app = web.Application()
    app.router.add_get("/v1/units", units)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        async with Client(base, "t", retry=Retry(attempts=3, base=0.01)) as api:
            assert (await api.list_units()).items == []
        assert answers == [503, 503, 200]
        answers.clear()
        async with Client(base, "t", retry=Retry(attempts=2, base=0.01)) as impatient:
            with pytest.raises(Unavailable) as down:
                await impatient.list_units()
        assert down.value.retry_after == 0 and down.value.detail == "db away" and answers == [503, 503]
    finally:
        await server.close()
    async with Client(base, "t", retry=Retry(attempts=2, base=0.01)) as gone:
        with pytest.raises(TransportError):
            await gone.list_units()


async def test_the_stream_resumes_across_server_ends_without_repeats(
    settings: Settings, db: asyncpg.Connection
) -> None:
    short = settings.model_copy(update={"stream_max_seconds": 0.3})
    app = create_app(short)
    opened: list[str] = []

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.endswith("/stream"):
            opened.append(request.headers.get("Last-Event-ID", ""))

    app.on_response_prepare.append(count)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        async with Client(base, ADMIN_TOKEN) as api, running_worker(short):
            await org(api)
            ding = NoticeIn(
                kind="ding", title="Muster", body="Report in", audience=Audience(units=["county"])
            )
            nid = (await api.send(ding)).id

            async def active() -> bool:
                return (await api.get_notice(nid)).state == "active"

            await wait_until(active)
            updates = api.stream(nid, unit="county")
            first = await anext(updates)
            assert first.data.counts.read == 0
            nxt = asyncio.ensure_future(anext(updates))
            await wait_until(lambda: _true(len(opened) >= 3), within=WAIT)  # ended and resumed twice
            assert not nxt.done()  # a resume with the current version sent nothing
            assert opened[1:3] == [str(first.version)] * 2
            await api.read(nid, "west2")
            async with asyncio.timeout(WAIT):
                update = await nxt
            assert update.data.counts.read == 1 and update.version != first.version
            await updates.aclose()
    finally:
        await server.close()


async def _true(value: bool) -> bool:
    return value


def readme_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Live counts, the terminal and the Python client") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


async def test_the_readme_example_runs(live: str) -> None:
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    namespace: dict[str, Any] = {}
    exec(compile(code.replace("http://127.0.0.1:8080", live), "README.md", "exec"), namespace)  # noqa: S102
    async with Client(live, ADMIN_TOKEN) as api:
        await org(api)
        muster = asyncio.ensure_future(namespace["muster"](ADMIN_TOKEN))

        async def sent() -> bool:
            return bool((await api.list_notices()).items)

        await wait_until(sent)
        nid = (await api.list_notices()).items[0].id

        async def active() -> bool:
            return (await api.get_notice(nid)).state == "active"

        await wait_until(active)
        for m in ("east1", "east2", "west1", "west2"):
            await api.read(nid, m)
        async with asyncio.timeout(WAIT):
            await muster  # it watched until everyone had read


async def test_a_send_whose_key_is_in_flight_is_retried_not_failed(live: str, db: asyncpg.Connection) -> None:
    """Another request holding the same Idempotency-Key (here: its lock, held by the test) is 409
    while it runs; the client waits it out and gets the answer."""
    async with Client(live, ADMIN_TOKEN) as api:
        await org(api)
        ding = NoticeIn(kind="ding", title="Muster", body="Report in", audience=Audience(units=["county"]))
        lock = "SELECT pg_advisory_lock(hashtextextended($1 || ':' || $2, 727003))"
        await db.execute(lock, "admin", "in-flight-1")
        try:
            async with Client(live, ADMIN_TOKEN, retry=Retry(attempts=1)) as once:
                with pytest.raises(Conflict) as busy:
                    await once.send(ding, idempotency_key="in-flight-1")
                assert busy.value.problem["type"].endswith("/idempotency-in-flight")
            sending = asyncio.ensure_future(api.send(ding, idempotency_key="in-flight-1"))
            await asyncio.sleep(0.3)
        finally:
            await db.execute(
                "SELECT pg_advisory_unlock(hashtextextended($1 || ':' || $2, 727003))", "admin", "in-flight-1"
            )
        async with asyncio.timeout(WAIT):
            sent = await sending
        assert (await api.send(ding, idempotency_key="in-flight-1")).id == sent.id
