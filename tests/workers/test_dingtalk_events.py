"""DingTalk robot one-to-one messages (the ``dingtalk`` channel with ``robot_messages`` on) and
the encrypted event push at ``POST /v1/providers/dingtalk/callbacks``, on the real engine and
API (PostgreSQL + Redis) with the fake DingTalk pushing real encrypted, signed events: reads
become our receipts through the one receipts path, the readStatus poll is the backstop, and
every forged, stale or unreadable push is refused with nothing counted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from notifier.app import create_app
from notifier.channels import dingtalk_crypto as crypto
from notifier.channels.base import InvalidSignature
from notifier.workers.context import WorkerDeps
from notifier.workers.tick import tick_once
from tests.conftest import advance_clock, make_settings
from tests.fakes.dingtalk import FakeDingTalk
from tests.helpers import worker_deps
from tests.workers.test_dingtalk_reads import counts, notice, org, recall_via_api, user_of


@pytest.fixture
async def deps(
    server_urls: tuple[str, str], db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> AsyncIterator[WorkerDeps]:
    settings = make_settings(
        server_urls, **dingtalk_fake.settings_overrides(robot_messages=True), delivery_idle_wait_seconds=0.0
    )
    async with worker_deps(settings) as d:
        yield d


@pytest.fixture
async def callback_url(deps: WorkerDeps) -> AsyncIterator[str]:
    server = TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1/providers/dingtalk/callbacks"))
    await server.close()


async def post_raw(url: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, params=query, data=body) as resp:
        return resp.status, await resp.read()


async def test_reads_pushed_by_dingtalk_become_receipts_once(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk, callback_url: str
) -> None:
    members = await org(db, 30)
    nid = await notice(deps, db)
    # Robot messages, 20 user ids a call; each member's ref is {processQueryKey}/{userId}.
    assert (
        sorted(len(s.user_ids) for s in dingtalk_fake.robot_sends) == [10, 20] and dingtalk_fake.tasks == {}
    )
    assert dingtalk_fake.per_user() == {user_of(m): 1 for m in members}
    refs = {r["provider_ref"] for r in await db.fetch("SELECT provider_ref FROM deliveries")}
    assert refs == {f"{s.process_query_key}/{u}" for s in dingtalk_fake.robot_sends for u in s.user_ids}
    assert await db.fetchval("SELECT count(*) FROM dingtalk_read_polls") == 2  # one timer per send

    # The subscription handshake is answered with the encrypted success.
    assert await dingtalk_fake.push_event(callback_url, {"EventType": "check_url"}) == (200, True)

    # 12 read on DingTalk: 12 robot_msg_read pushes, each answered with a valid success.
    dingtalk_fake.mark_read({user_of(m) for m in members[:12]})
    assert await dingtalk_fake.push_reads(callback_url) == 12
    assert dingtalk_fake.pushes[-12:] == [(200, True)] * 12
    c = await counts(deps, nid)
    assert (c["read"], c["unread"]) == (12, 18)
    rows = await db.fetch("SELECT member_id, read_via FROM recipients WHERE read_at IS NOT NULL ORDER BY 1")
    assert [(r["member_id"], r["read_via"]) for r in rows] == [(m, "dingtalk") for m in members[:12]]

    # A replayed event (DingTalk thought we missed it) is answered and counts once.
    send = next(s for s in dingtalk_fake.robot_sends if user_of(members[0]) in s.user_ids)
    again = dingtalk_fake.read_event(send, user_of(members[0]))
    assert await dingtalk_fake.push_event(callback_url, again) == (200, True)
    assert await dingtalk_fake.push_event(callback_url, again) == (200, True)
    assert (await counts(deps, nid))["read"] == 12
    assert await db.fetchval("SELECT sum(read) FROM notice_counts WHERE notice_id = $1", nid) == 12

    # A read DingTalk never pushed (a lost event) comes in with the readStatus poll.
    dingtalk_fake.mark_read({user_of(m) for m in members[12:15]})
    await advance_clock(db, 10)
    assert (await tick_once(deps))["dingtalk_reads"] == 2
    assert dingtalk_fake.calls["oToMessages/readStatus"] == 2
    c = await counts(deps, nid)
    assert (c["read"], c["delivered"], c["sent"]) == (15, 30, 0)

    # Recalled: both robot sends are withdrawn on DingTalk.
    await recall_via_api(deps, nid)
    assert (await tick_once(deps))["dingtalk_recalls"] == 2
    assert all(s.recalled for s in dingtalk_fake.robot_sends)


async def test_forged_stale_and_unreadable_pushes_are_refused_and_count_nothing(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk, callback_url: str
) -> None:
    members = await org(db, 3)
    nid = await notice(deps, db)
    dingtalk_fake.mark_read({user_of(m) for m in members})
    (send,) = dingtalk_fake.robot_sends
    event = dingtalk_fake.read_event(send, user_of(members[0]))

    # Signed with the wrong token: 403.
    query, body = dingtalk_fake.envelope(event, token="not-the-token")
    assert (await post_raw(callback_url, query, body))[0] == 403
    # A valid envelope with its encrypt swapped for another one: the signature no longer covers it.
    query, _ = dingtalk_fake.envelope(event)
    _, other = dingtalk_fake.envelope(dingtalk_fake.read_event(send, user_of(members[1])))
    assert (await post_raw(callback_url, query, other))[0] == 403
    # Missing parameters: 403.
    assert (await post_raw(callback_url, {}, body))[0] == 403
    # An hour and more old (a captured push replayed later): 403.
    query, body = dingtalk_fake.envelope(event, timestamp_ms=int((dingtalk_fake.now() - 3700) * 1000))
    assert (await post_raw(callback_url, query, body))[0] == 403
    # Signed right but sealed with another AES key (or for another app): 400, DingTalk retries.
    stranger = FakeDingTalk(callback_token=dingtalk_fake.callback_token, app_key=dingtalk_fake.app_key)
    query, body = stranger.envelope(event)
    status, answer = await post_raw(callback_url, query, body)
    assert status == 400 and b"cannot read the event" in answer
    stranger = FakeDingTalk(
        callback_token=dingtalk_fake.callback_token, callback_aes_key=dingtalk_fake.callback_aes_key
    )
    query, body = stranger.envelope(event)
    assert (await post_raw(callback_url, query, body))[0] == 400
    assert (await counts(deps, nid))["read"] == 0
    assert await db.fetchval("SELECT count(*) FROM provider_events") == 0

    # An event about a user id we never sent to: answered (DingTalk must stop retrying), counts nothing.
    assert await dingtalk_fake.push_event(callback_url, dingtalk_fake.read_event(send, "nobody-we-know")) == (
        200,
        True,
    )
    assert await dingtalk_fake.push_event(callback_url, {"EventType": "user_add_org", "UserId": ["x"]}) == (
        200,
        True,
    )
    assert (await counts(deps, nid))["read"] == 0
    # ... and the real one still works.
    assert await dingtalk_fake.push_event(callback_url, event) == (200, True)
    assert (await counts(deps, nid))["read"] == 1


async def test_invalid_and_flow_controlled_staff(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    members = await org(db, 4)
    dingtalk_fake.invalid_users.add(user_of(members[0]))
    dingtalk_fake.robot_flow_controlled.add(user_of(members[1]))
    nid = await notice(deps, db)
    rows = {
        r["member_id"]: (r["state"], r["error"])
        for r in await db.fetch("SELECT member_id, state, error FROM deliveries WHERE notice_id = $1", nid)
    }
    assert rows[members[0]][0] == "failed" and "invalid staff id" in rows[members[0]][1]
    assert rows[members[1]][0] == "queued" and "flow control" in rows[members[1]][1]
    assert {rows[m][0] for m in members[2:]} == {"sent"}
    disabled = await db.fetch("SELECT member_id FROM contacts WHERE disabled_at IS NOT NULL")
    assert [r["member_id"] for r in disabled] == [members[0]]


def test_the_envelope_round_trips_and_rejects_tampering() -> None:
    key_text = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    key = crypto.aes_key(key_text)
    sealed = crypto.encrypt(key, "dingapp", json.dumps({"EventType": "check_url"}))
    assert json.loads(crypto.decrypt(key, "dingapp", sealed)) == {"EventType": "check_url"}
    with pytest.raises(crypto.BadEnvelope):
        crypto.decrypt(key, "another-app", sealed)
    with pytest.raises(crypto.BadEnvelope):
        crypto.decrypt(crypto.aes_key("B" * 43), "dingapp", sealed)
    with pytest.raises(crypto.BadEnvelope):
        crypto.decrypt(key, "dingapp", "not base64!")
    signature = crypto.signature("tok", "1700000000000", "n1", sealed)
    crypto.verify("tok", "1700000000000", "n1", sealed, signature)
    with pytest.raises(InvalidSignature):
        crypto.verify("tok", "1700000000001", "n1", sealed, signature)
    with pytest.raises(ValueError, match="43"):
        crypto.aes_key("short")
    reply: dict[str, Any] = json.loads(crypto.reply(key, "tok", "dingapp", "1700000000000"))
    signed = crypto.signature("tok", reply["timeStamp"], reply["nonce"], reply["encrypt"])
    assert signed == reply["msg_signature"]
    assert crypto.decrypt(key, "dingapp", reply["encrypt"]) == "success"
