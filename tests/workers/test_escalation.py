"""Escalation on the real engine, GoAlert-style: the arq worker with its one-second tick, fake SMS
and voice providers that record every message, and the engine clock moved forward instead of
sleeping. Every test ends by checking that the providers got exactly the expected messages."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.settings import create_worker, stop_worker
from notifier.workers.tick import tick_once
from tests.conftest import advance_clock, auth, make_settings, wait_until
from tests.fakes.twilio import FakeTwilio
from tests.helpers import worker_deps

Client = TestClient[Any, Any]

POLICY = {
    "name": "urgent-default",
    "steps": [
        {"after": "PT5M", "remind": ["sms"]},
        {"after": "PT15M", "remind": ["voice"]},
        {"after": "PT30M", "notify": ["secretary", "on_duty"], "channels": ["sms", "voice"]},
    ],
    "repeat": 1,
}


@dataclass
class Env:
    client: Client
    db: asyncpg.Connection
    twilio: FakeTwilio
    settings: Settings
    deps: WorkerDeps  # for a tick run by the test itself (quiet_for)

    def phone(self, member_id: str) -> str:
        return phone_of(member_id)

    async def post(self, path: str, body: dict[str, Any], status: int) -> Any:
        resp = await self.client.post(path, json=body, headers=auth())
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def get(self, path: str) -> Any:
        resp = await self.client.get(path, headers=auth())
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def read(self, notice_id: str, members: list[str]) -> None:
        for m in members:
            await self.post(f"/v1/notices/{notice_id}/receipts", {"member_id": m, "type": "read"}, 200)

    def sms_to(self) -> Counter[str]:
        return Counter(m.to for m in self.twilio.sms)

    def calls_to(self) -> Counter[str]:
        return Counter(m.to for m in self.twilio.calls)


def phone_of(member_id: str) -> str:
    digits = "".join(str(ord(c) % 10) for c in member_id)[-7:].rjust(7, "0")
    return f"+1415{digits}"


async def start_worker(settings: Settings) -> tuple[Any, asyncio.Future[Any]]:
    worker = create_worker(settings)
    return worker, asyncio.ensure_future(worker.async_run())


@pytest.fixture
async def env(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> AsyncIterator[Env]:
    # Calls at 10 a second (the default) made the 270 calls of a three-step policy take ~30 s of
    # real time; rate limits have tests of their own (test_phone_e2e.py, test_delivery_layer.py).
    settings = make_settings(server_urls, voice_rate_per_second=200.0, **twilio_fake.settings_overrides())
    worker, task = await start_worker(settings)
    async with (
        worker_deps(settings) as deps,
        TestClient(TestServer(create_app(settings), host="127.0.0.1")) as client,
    ):
        yield Env(client, db, twilio_fake, settings, deps)
    await stop_worker(worker, task)


async def build(env: Env, members: int, *, secretary: bool = True, duty_unit: str | None = "c") -> list[str]:
    """c -> b1 -> g1 holding the members; the secretary sits in b1, the duty officer in c."""
    db = env.db
    await db.execute(
        "INSERT INTO units (id, name, parent_id) VALUES ('c', 'C', NULL), ('b1', 'B1', 'c'), "
        "('g1', 'G1', 'b1')"
    )
    ids = [f"m{i:04d}" for i in range(members)]
    await db.executemany("INSERT INTO members (id, name) VALUES ($1, $1)", [(m,) for m in ids])
    await db.executemany("INSERT INTO member_units VALUES ($1, 'g1')", [(m,) for m in ids])
    await db.execute("INSERT INTO members (id, name) VALUES ('sec', 'Secretary'), ('duty', 'On duty')")
    await db.execute("INSERT INTO member_units VALUES ('sec', 'b1'), ('duty', 'c')")
    everyone = [*ids, "sec", "duty"]
    for channel in ("sms", "voice"):
        await db.executemany(
            "INSERT INTO contacts (member_id, channel, target) VALUES ($1, $2, to_jsonb($3::text))",
            [(m, channel, phone_of(m)) for m in everyone],
        )
    if secretary:
        await db.execute("INSERT INTO unit_secretaries VALUES ('b1', 'sec')")
    if duty_unit is not None:
        await db.execute(
            "INSERT INTO duty_shifts (unit_id, member_id, during) "
            "VALUES ($1, 'duty', "
            "tstzrange(notifier_now() - interval '1 hour', notifier_now() + interval '3 days'))",
            duty_unit,
        )
    return ids


async def ding(env: Env, escalation: Any = "urgent-default", **extra: Any) -> str:
    body = {
        "kind": "ding",
        "title": "Muster",
        "body": "Report now.",
        "audience": {"units": ["g1"]},
        "channels": ["inapp"],
        "escalation": escalation,
        **extra,
    }
    notice = await env.post("/v1/notices", body, 202)
    nid: str = notice["id"]

    async def active() -> bool:
        return bool((await env.get(f"/v1/notices/{nid}"))["state"] == "active")

    await wait_until(active)
    return nid


async def settle(predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float = 30.0) -> None:
    async def check() -> bool:
        result = predicate()
        if asyncio.iscoroutine(result):
            return bool(await result)
        return bool(result)

    await wait_until(check, within=within)


async def quiet_for(env: Env) -> None:
    """Without moving the engine clock nothing new may go out: a tick runs (run here, so it surely
    happens however loaded the machine, beside the worker's own), whatever it queued is sent or
    settled, and the providers got nothing more."""
    before = len(env.twilio.messages)
    await tick_once(env.deps)

    async def idle() -> bool:
        due = await env.db.fetchval(
            "SELECT count(*) FROM deliveries WHERE state = 'sending' "
            "OR (state = 'queued' AND next_attempt_at <= notifier_now())"
        )
        return bool(due == 0)

    await settle(idle)
    assert len(env.twilio.messages) == before, env.twilio.messages[before:]


async def test_three_step_policy_with_a_second_round(env: Env) -> None:
    members = await build(env, 300)
    await env.post("/v1/escalation-policies", POLICY, 201)
    nid = await ding(env)
    readers = members[:100]
    await env.read(nid, readers)
    unread = members[100:]

    # Before 5 minutes nothing goes out.
    await advance_clock(env.db, 240)
    await quiet_for(env)

    # 5 min: exactly one SMS to each unread member, none to the readers.
    await advance_clock(env.db, 61)
    await settle(lambda: len(env.twilio.sms) >= 200)
    await quiet_for(env)
    assert env.sms_to() == Counter({phone_of(m): 1 for m in unread})
    assert env.twilio.calls == []

    # 15 min: 50 more have read; exactly one call to each of the 150 still unread.
    await env.read(nid, unread[:50])
    still = unread[50:]
    await advance_clock(env.db, 600)
    await settle(lambda: len(env.twilio.calls) >= 150)
    await quiet_for(env)
    assert env.calls_to() == Counter({phone_of(m): 1 for m in still})

    # 30 min: the secretary (b1) and the on-duty officer (found on c, two levels up) each get
    # exactly one summary per channel, with the right numbers.
    await advance_clock(env.db, 900)
    await settle(lambda: env.sms_to()[phone_of("sec")] == 1 and env.calls_to()[phone_of("duty")] == 1)
    await quiet_for(env)
    for who in ("sec", "duty"):
        assert env.sms_to()[phone_of(who)] == 1 and env.calls_to()[phone_of(who)] == 1
    summary_sms = next(m for m in env.twilio.sms if m.to == phone_of("sec"))
    assert "150/300" in summary_sms.params["Body"]
    summaries = await env.db.fetch("SELECT id, body, audience FROM notices WHERE parent_notice_id = $1", nid)
    assert len(summaries) == 1
    assert "150 of 300 recipients have not read" in summaries[0]["body"]
    assert sorted(json.loads(summaries[0]["audience"])["members"]) == ["duty", "sec"]

    # Round two starts a cycle (30 min) later: 35 min -> a second SMS to those still unread.
    await env.read(nid, still[:30])
    still = still[30:]
    await advance_clock(env.db, 300)
    await settle(lambda: len(env.twilio.sms) >= 200 + 2 + 120)
    await quiet_for(env)
    assert env.sms_to() == Counter(
        {
            **{phone_of(m): 1 for m in unread},
            **{phone_of(m): 2 for m in still},
            phone_of("sec"): 1,
            phone_of("duty"): 1,
        }
    )
    # The secretary acknowledges the summary: round two's notify step is skipped, and the
    # escalation ends after the last step.
    summary_id = str(summaries[0]["id"])
    await env.read(summary_id, ["sec"])
    await advance_clock(env.db, 600)  # 45 min: calls to the 120 still unread
    await settle(lambda: len(env.twilio.calls) >= 150 + 2 + 120)
    await advance_clock(env.db, 900)  # 60 min: notify skipped
    await settle(lambda: _escalation_state(env, nid), within=10)
    await quiet_for(env)
    assert len(env.twilio.sms) == 200 + 2 + 120 and len(env.twilio.calls) == 150 + 2 + 120
    events = [e["kind"] for e in (await env.get(f"/v1/notices/{nid}/events"))["items"]]
    assert events.count("step_fired") == 6
    assert "notify_skipped" in events and events[-1] == "escalation_exhausted"


async def _escalation_state(env: Env, nid: str) -> bool:
    state = await env.db.fetchval("SELECT state FROM escalations WHERE notice_id = $1", nid)
    return bool(state == "done")


async def test_nobody_on_duty_anywhere_is_recorded_not_silent(env: Env) -> None:
    await build(env, 3, secretary=False, duty_unit=None)
    policy = {"steps": [{"after": "PT1M", "notify": ["secretary", "on_duty"], "channels": ["sms"]}]}
    nid = await ding(env, escalation=policy)
    await advance_clock(env.db, 61)

    async def recorded() -> bool:
        kinds = [e["kind"] for e in (await env.get(f"/v1/notices/{nid}/events"))["items"]]
        return "step_fired" in kinds

    await settle(recorded)
    events = (await env.get(f"/v1/notices/{nid}/events"))["items"]
    nobody = [e["detail"]["role"] for e in events if e["kind"] == "nobody_to_notify"]
    assert sorted(nobody) == ["on_duty", "secretary"]
    await quiet_for(env)
    assert env.twilio.messages == []


async def test_a_step_reaching_nobody_is_recorded_per_member(env: Env) -> None:
    members = await build(env, 3)
    await env.db.execute("DELETE FROM contacts WHERE member_id = $1 AND channel = 'sms'", members[0])
    policy = {"steps": [{"after": "PT1M", "remind": ["sms"]}]}
    nid = await ding(env, escalation=policy)
    await advance_clock(env.db, 61)
    await settle(lambda: len(env.twilio.sms) >= 2)
    timeline = await env.get(f"/v1/notices/{nid}/recipients/{members[0]}")
    kinds = [(e["type"], e.get("kind")) for e in timeline["entries"]]
    assert ("event", "not_reached") in kinds
    assert env.sms_to() == Counter({phone_of(members[1]): 1, phone_of(members[2]): 1})


async def test_policy_edited_after_the_ding_started_keeps_the_old_steps(env: Env) -> None:
    members = await build(env, 2)
    created = await env.post("/v1/escalation-policies", POLICY, 201)
    nid = await ding(env)
    edited = {**POLICY, "steps": [{"after": "PT1M", "remind": ["voice"]}], "repeat": 0}
    resp = await env.client.put(f"/v1/escalation-policies/{created['id']}", json=edited, headers=auth())
    assert resp.status == 200
    await advance_clock(env.db, 61)
    await quiet_for(env)  # the edited policy would call now; the snapshot waits for 5 min
    await advance_clock(env.db, 240)
    await settle(lambda: len(env.twilio.sms) >= 2)
    await quiet_for(env)
    assert env.sms_to() == Counter({phone_of(m): 1 for m in members}) and env.twilio.calls == []
    snapshot = (await env.get(f"/v1/notices/{nid}"))["escalation"]
    assert snapshot["policy"] == "urgent-default" and len(snapshot["steps"]) == 3


async def test_recall_in_the_middle_of_an_escalation_stops_everything(env: Env) -> None:
    members = await build(env, 5)
    await env.post("/v1/escalation-policies", POLICY, 201)
    nid = await ding(env)
    await advance_clock(env.db, 301)
    await settle(lambda: len(env.twilio.sms) >= 5)
    recalled = await env.post(f"/v1/notices/{nid}/recall", {}, 200)
    assert recalled["state"] == "recalled" and recalled["recalled_at"]
    for _ in range(3):
        await advance_clock(env.db, 900)
        await quiet_for(env)
    assert len(env.twilio.sms) == 5 and env.twilio.calls == []
    # Late reads are still recorded; the inbox shows the notice as recalled.
    await env.read(nid, [members[0]])
    assert (await env.get(f"/v1/notices/{nid}"))["counts"]["read"] == 1
    inbox = await env.get(f"/v1/members/{members[1]}/inbox")
    assert [(i["notice_id"], i["state"]) for i in inbox["items"]] == [(nid, "recalled")]
    again = await env.post(f"/v1/notices/{nid}/recall", {}, 200)  # idempotent
    assert again["recalled_at"] == recalled["recalled_at"]


async def test_escalating_above_the_senders_units_does_not_reveal_who_was_told(env: Env) -> None:
    await build(env, 2, secretary=False, duty_unit="c")  # the only duty officer sits in c, above b1
    key = (await env.post("/v1/api-keys", {"name": "b1", "role": "service", "unit_id": "b1"}, 201))["token"]
    body = {
        "kind": "ding",
        "title": "Muster",
        "body": "Now.",
        "audience": {"units": ["g1"]},
        "channels": ["inapp"],
        "escalation": {"steps": [{"after": "PT1M", "notify": ["on_duty"], "channels": ["sms"]}]},
    }
    resp = await env.client.post("/v1/notices", json=body, headers=auth(key))
    nid = (await resp.json())["id"]
    await settle(lambda: _state(env, nid, "active"))
    await advance_clock(env.db, 61)
    await settle(lambda: env.sms_to()[phone_of("duty")] == 1)  # the officer above is told
    resp = await env.client.get(f"/v1/notices/{nid}/events", headers=auth(key))
    fired = [e for e in (await resp.json())["items"] if e["kind"] == "step_fired"]
    assert (
        fired[0]["detail"]["notified"]["on_duty"] == []
        and fired[0]["detail"]["notified"]["outside_your_units"] == 1
    )
    summary = fired[0]["detail"]["notified"]["summary"]
    assert (await env.client.get(f"/v1/notices/{summary}", headers=auth(key))).status == 404
    assert (await env.client.get(f"/v1/notices/{summary}", headers=auth())).status == 200


async def _state(env: Env, nid: str, state: str) -> bool:
    return bool(await env.db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == state)
