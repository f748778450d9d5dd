"""The nasty faults of issue 14, each in the middle of an escalation step and of the daily lesson
run, on the real engine: one arq worker and the API reach PostgreSQL and Redis through fault
proxies (tests/faultproxy.py), the providers are fake servers counting what really arrived.

Faults, each started by the fake provider at the moment it accepts the ``TRIGGER_AT``-th message
(so sends of the batch are under way and its write-back is still to come):

- ``slow_database``: every answer from PostgreSQL waits ``SLOW_SECONDS`` (seconds per
  statement) for ``FAULT_SECONDS``;
- ``reset_mid_write_back``: every PostgreSQL connection is reset and new ones are refused for
  ``FAULT_SECONDS``, while the batch's sends are answered -- its write-back meets the reset;
- ``redis_black_hole``: Redis accepts connections and never answers, for ``FAULT_SECONDS``.

In every case, while the fault lasts and after: the API never answers 500 (503 with Retry-After
is fine), and afterwards every member has exactly one delivery on the channel -- one row in
``deliveries`` and one message at the fake -- with nothing left queued or sending, and the same
worker did it (no restart).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.settings import Settings
from notifier.workers import queue
from tests.conftest import advance_clock, auth, make_settings, running_worker, wait_until
from tests.fakes.fcm import FakeFcm
from tests.fakes.twilio import FakeTwilio
from tests.faultproxy import FaultProxy
from tests.workers.test_escalation import phone_of
from tests.workers.test_lessons import SHANGHAI, go_to, next_local

MEMBERS = 30
READERS = 6  # read before the step: no SMS for them
TRIGGER_AT = 5  # the fault starts as the fake accepts this message
FAULT_SECONDS = 2.5
SLOW_SECONDS = 1.0
FAULTS = ("slow_database", "reset_mid_write_back", "redis_black_hole")


@dataclass
class Rig:
    db: asyncpg.Connection
    api: TestClient[Any, Any]
    twilio: FakeTwilio
    fcm: FakeFcm
    pg: FaultProxy
    redis: FaultProxy
    settings: Settings
    answers: list[tuple[str, int, str | None]] = field(default_factory=list)  # (path, status, Retry-After)
    window: list[float] = field(default_factory=list)  # when the fault started and ended (loop time)
    _healing: list[asyncio.Task[None]] = field(default_factory=list)

    def trigger(self, fault: str) -> Callable[[Any], Awaitable[None]]:
        """The fake provider's hook: start ``fault`` at the ``TRIGGER_AT``-th accepted message."""
        seen = 0

        async def on_accept(_: Any) -> None:
            nonlocal seen
            seen += 1
            if seen != TRIGGER_AT:
                return
            self.window.append(asyncio.get_running_loop().time())
            if fault == "slow_database":
                self.pg.latency = SLOW_SECONDS
            elif fault == "reset_mid_write_back":
                await self.pg.cut()
            else:
                self.redis.black_hole()
            self._healing.append(asyncio.create_task(self._heal_later()))

        return on_accept

    async def _heal_later(self) -> None:
        await asyncio.sleep(FAULT_SECONDS)
        self.pg.latency = 0.0
        await self.pg.restore()
        await self.redis.restore()
        self.window.append(asyncio.get_running_loop().time())

    async def healed(self) -> None:
        async def started() -> bool:
            return bool(self._healing)

        await wait_until(started, within=30)
        await asyncio.gather(*self._healing)

    async def probe(self, paths: list[str]) -> None:
        """Call the API over and over (the caller cancels it): every answer is recorded."""
        timeout = aiohttp.ClientTimeout(total=30)
        while True:
            for path in paths:
                try:
                    resp = await self.api.get(path, headers=auth(), timeout=timeout)
                    self.answers.append((path, resp.status, resp.headers.get("Retry-After")))
                    resp.release()
                except TimeoutError:
                    self.answers.append((path, 0, None))  # no answer within 30 s: also a failure
            await asyncio.sleep(0.1)

    def check_answers(self, fault: str) -> None:
        assert self.answers, "the API was never probed"
        bad = [
            a for a in self.answers if a[1] not in (200, 503) or (a[1] == 503 and not (a[2] or "").isdigit())
        ]
        assert not bad, bad
        if fault == "reset_mid_write_back":
            assert any(a[1] == 503 for a in self.answers)  # the outage was seen, and answered well


@pytest.fixture
async def rig(
    server_urls: tuple[str, str],
    db: asyncpg.Connection,
    twilio_fake: FakeTwilio,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Rig]:
    monkeypatch.setattr(queue, "READ_DEADLINE_SECONDS", 0.5)  # a black-holed Redis costs 0.5 s a call
    fcm = await FakeFcm().start()
    pg = await FaultProxy.for_url(server_urls[0]).start()
    redis = await FaultProxy.for_url(server_urls[1]).start()
    settings = make_settings(
        (pg.url_for(server_urls[0]), redis.url_for(server_urls[1])),
        **twilio_fake.settings_overrides(),
        **fcm.settings_overrides(),
        queue_name="notifier:faults",
        delivery_batch_size=10,
        delivery_lease_seconds=15.0,  # longer than any fault: a batch's results must outlive it
    )
    try:
        async with (
            TestClient(TestServer(create_app(settings), host="127.0.0.1")) as api,
            running_worker(settings),
        ):
            yield Rig(db, api, twilio_fake, fcm, pg, redis, settings)
    finally:
        await pg.stop()
        await redis.stop()
        await fcm.stop()


# What the worker logs when the fault reached it (a fault that hit nothing proves nothing).
SEEN = {
    "reset_mid_write_back": "write-back for",
    "redis_black_hole": "Redis unavailable",
}


async def _through_the_fault(
    rig: Rig,
    fault: str,
    paths: list[str],
    done: Callable[[], Awaitable[bool]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    prober = asyncio.create_task(rig.probe(paths))
    try:
        await rig.healed()
        await wait_until(done, within=60, every=0.1)
        finished = asyncio.get_running_loop().time()
        await asyncio.sleep(1.5)  # more ticks and reconciler passes: nothing more may go out
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)
    rig.check_answers(fault)
    started, ended = rig.window
    assert ended - started >= FAULT_SECONDS
    # The figures for the closing note (shown with ``pytest -rP``); lost and duplicated
    # deliveries are asserted to be 0 by the caller.
    unavailable = sum(1 for a in rig.answers if a[1] == 503)
    print(
        f"{fault}: fault {ended - started:.1f}s; API {len(rig.answers)} answers, {unavailable} x 503 "
        f"({100 * unavailable / len(rig.answers):.0f}%), 0 x 5xx other; all delivered "
        f"{max(finished - ended, 0.0):.1f}s after the fault ended"
    )
    if fault in SEEN:
        assert any(SEEN[fault] in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]


async def _settled(db: asyncpg.Connection, nid: str, channel: str, step: int) -> Counter[str]:
    rows = await db.fetch(
        "SELECT state FROM deliveries WHERE notice_id = $1 AND channel = $2 AND step = $3", nid, channel, step
    )
    return Counter(r["state"] for r in rows)


@pytest.mark.parametrize("fault", FAULTS)
async def test_an_escalation_step_through_the_fault_sends_each_reminder_once(
    rig: Rig, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = rig.db
    await db.execute("INSERT INTO units (id, name, parent_id) VALUES ('c', 'C', NULL), ('g1', 'G1', 'c')")
    ids = [f"m{i:04d}" for i in range(MEMBERS)]
    await db.executemany("INSERT INTO members (id, name) VALUES ($1, $1)", [(m,) for m in ids])
    await db.executemany("INSERT INTO member_units VALUES ($1, 'g1')", [(m,) for m in ids])
    await db.executemany(
        "INSERT INTO contacts (member_id, channel, target) VALUES ($1, 'sms', to_jsonb($2::text))",
        [(m, phone_of(m)) for m in ids],
    )
    policy = {"name": "p", "steps": [{"after": "PT5M", "remind": ["sms"]}]}
    resp = await rig.api.post("/v1/escalation-policies", json=policy, headers=auth())
    assert resp.status == 201, await resp.text()
    ding = {
        "kind": "ding",
        "title": "Muster",
        "body": "Report now.",
        "audience": {"units": ["g1"]},
        "channels": ["inapp"],
        "escalation": "p",
    }
    resp = await rig.api.post("/v1/notices", json=ding, headers=auth())
    assert resp.status == 202, await resp.text()
    nid = (await resp.json())["id"]

    async def fanned_out() -> bool:
        return (await _settled(db, nid, "inapp", 0)) == Counter({"delivered": MEMBERS})

    await wait_until(fanned_out)
    for m in ids[:READERS]:
        resp = await rig.api.post(
            f"/v1/notices/{nid}/receipts", json={"member_id": m, "type": "read"}, headers=auth()
        )
        assert resp.status == 200, await resp.text()
    unread = ids[READERS:]

    rig.twilio.on_accept = rig.trigger(fault)
    await advance_clock(db, 301)  # the step is due: the worker's tick fires it

    async def reminded() -> bool:
        return (await _settled(db, nid, "sms", 1)) == Counter({"sent": len(unread)})

    await _through_the_fault(rig, fault, [f"/v1/notices/{nid}", "/v1/units/g1"], reminded, caplog)
    assert Counter(m.to for m in rig.twilio.sms) == Counter({phone_of(m): 1 for m in unread})
    rows = await db.fetch(
        "SELECT member_id, count(*) AS n FROM deliveries WHERE notice_id = $1 AND channel = 'sms' "
        "GROUP BY member_id",
        nid,
    )
    assert {r["member_id"]: r["n"] for r in rows} == {m: 1 for m in unread}
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE state IN ('queued', 'sending')") == 0


@pytest.mark.parametrize("fault", FAULTS)
async def test_the_daily_lesson_run_through_the_fault_pushes_each_member_once(
    rig: Rig, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = rig.db
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'U')")
    tokens = {f"m{i:04d}": rig.fcm.good_target() for i in range(MEMBERS)}
    await db.executemany("INSERT INTO members (id, name) VALUES ($1, $1)", [(m,) for m in tokens])
    await db.executemany("INSERT INTO member_units VALUES ($1, 'u')", [(m,) for m in tokens])
    await db.executemany(
        "INSERT INTO contacts (member_id, channel, target) VALUES ($1, 'fcm', to_jsonb($2::text))",
        list(tokens.items()),
    )
    at_0800 = await next_local(db, SHANGHAI, 8, 0)
    await db.execute(
        "INSERT INTO lessons (unit_id, day, title, body) VALUES ('u', $1, 'Lesson', 'Study the points.')",
        at_0800.date(),
    )
    rig.fcm.on_accept = rig.trigger(fault)
    await go_to(db, at_0800 + dt.timedelta(seconds=1))  # the worker's tick starts the run

    async def created() -> str | None:
        value = await db.fetchval("SELECT notice_id::text FROM lesson_runs WHERE unit_id = 'u'")
        return None if value is None else str(value)

    async def pushed() -> bool:
        nid = await created()
        return nid is not None and (await _settled(db, nid, "fcm", 0)) == Counter({"sent": MEMBERS})

    await _through_the_fault(rig, fault, ["/v1/units/u", "/v1/units/u/lessons"], pushed, caplog)
    nid = await created()
    assert nid is not None
    assert await db.fetchval("SELECT count(*) FROM lesson_runs") == 1
    assert await db.fetchval("SELECT count(*) FROM notices WHERE kind = 'lesson'") == 1
    member_of = {t: m for m, t in tokens.items()}
    assert Counter(member_of[p.token] for p in rig.fcm.messages) == Counter({m: 1 for m in tokens})
    rows = await db.fetch(
        "SELECT member_id, count(*) AS n FROM deliveries WHERE notice_id = $1 AND channel = 'fcm' "
        "GROUP BY member_id",
        nid,
    )
    assert {r["member_id"]: r["n"] for r in rows} == {m: 1 for m in tokens}
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE state IN ('queued', 'sending')") == 0
