"""The JPush Push API v3 channel against a fake JPush."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from notifier.channels.base import (
    InvalidTarget,
    NoticeContent,
    Outcome,
    Outgoing,
    PermanentError,
    TransientError,
)
from notifier.channels.jpush import (
    JPushChannel,
    authorization,
    build_push,
    build_request,
    jpush_error,
    plan_calls,
)
from notifier.settings import Settings
from tests.conftest import make_settings
from tests.fakes.jpush import FakeJPush

DING = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "集合", "Report to HQ now")
LESSON = NoticeContent("6f1c1b7e-0000-4000-8000-000000000002", "notice", "Lesson 3", "Read chapter 3")


@pytest.fixture
async def fake() -> AsyncIterator[FakeJPush]:
    f = await FakeJPush().start()
    yield f
    await f.stop()


@pytest.fixture
async def channel(fake: FakeJPush) -> AsyncIterator[JPushChannel]:
    ch = JPushChannel(make_settings(("", ""), **fake.settings_overrides()))
    yield ch
    await ch.close()


def items(targets: list[str], notice: NoticeContent = DING) -> list[Outgoing]:
    return [Outgoing(i, f"m{i}", t, notice, 1) for i, t in enumerate(targets, start=1)]


# --- targets and pure building -----------------------------------------------------------


def test_accepts_a_registration_id(fake: FakeJPush, channel: JPushChannel) -> None:
    rid = fake.good_target()
    assert channel.validate_target(rid) == rid
    assert channel.validate_target("1a0018970a3c4f5b6f9") == "1a0018970a3c4f5b6f9"
    assert channel.validate_target("A" * 64) == "A" * 64


@pytest.mark.parametrize(
    "target", [None, 42, {"registration_id": "abc"}, "", "A" * 65, "abc-def", "abc def", "é1"]
)
def test_rejects_malformed_registration_ids(channel: JPushChannel, target: Any) -> None:
    with pytest.raises(InvalidTarget) as info:
        channel.validate_target(target)
    assert info.value.field == "target"


def test_authorization_matches_the_jpush_documentation_example() -> None:
    assert authorization("7d431e42dfa6a6d693ac2d04", "5e987ac6d2e04d95a9d8f0d1") == (
        "Basic N2Q0MzFlNDJkZmE2YTZkNjkzYWMyZDA0OjVlOTg3YWM2ZDJlMDRkOTVhOWQ4ZjBkMQ=="
    )


def test_push_object_for_a_ding() -> None:
    extras = {"notice_id": DING.notice_id, "kind": "ding"}
    assert build_push(["a1", "b2"], DING) == {
        "platform": "all",
        "audience": {"registration_id": ["a1", "b2"]},
        "notification": {
            "alert": "集合",
            "android": {"title": "集合", "alert": "Report to HQ now", "priority": 2, "extras": extras},
            "ios": {
                "alert": {"title": "集合", "body": "Report to HQ now"},
                "sound": "default",
                "extras": extras,
            },
        },
        "options": {"time_to_live": 600, "apns_production": True, "apns_collapse_id": DING.notice_id},
    }


def test_push_object_for_a_notice_keeps_a_day() -> None:
    push = build_push(["a1"], LESSON)
    assert push["notification"]["android"]["priority"] == 0
    assert push["options"]["time_to_live"] == 86400


def test_request_url_headers_and_body() -> None:
    url, headers, body = build_request("https://api.jpush.cn/", "key", "secret", ["a1"], DING)
    assert url == "https://api.jpush.cn/v3/push"
    assert headers == {"authorization": authorization("key", "secret"), "content-type": "application/json"}
    assert json.loads(body) == build_push(["a1"], DING)


def test_plan_calls_caps_distinct_ids_per_call_and_separates_notices() -> None:
    batch = items(["id0"] + [f"id{i}" for i in range(2500)]) + items(["id0"], LESSON)
    calls = plan_calls(batch)
    assert [(notice.kind, len(ids)) for notice, ids in calls] == [
        ("ding", 1000),
        ("ding", 1000),
        ("ding", 500),
        ("notice", 1),
    ]
    assert len(calls[0][1]["id0"]) == 2  # a repeated id rides in the same call


def test_capabilities(channel: JPushChannel) -> None:
    caps = channel.capabilities
    assert (caps.max_batch, caps.needs_contact, caps.resend_when_ambiguous, caps.circuit_breaker) == (
        1000,
        True,
        True,
        True,
    )
    assert caps.max_attempts == Settings().push_max_attempts
    assert not caps.supports_delivery_reports and not caps.supports_read_confirmation


def test_channel_needs_credentials() -> None:
    with pytest.raises(ValueError, match="app_key"):
        JPushChannel(Settings())


# --- sending and auth --------------------------------------------------------------------


async def test_one_call_carries_the_batch(fake: FakeJPush, channel: JPushChannel) -> None:
    targets = [fake.good_target() for _ in range(5)]
    results = await channel.send(items(targets))
    assert sorted(r.delivery_id for r in results) == [1, 2, 3, 4, 5]
    assert all(r.outcome is Outcome.SENT for r in results), results
    assert len(fake.calls) == 1 and fake.per_id() == {t: 1 for t in targets}
    assert {r.provider_ref for r in results} == {fake.messages[0].msg_id}  # the call's msg_id, for all
    assert fake.messages[0].push == build_push(targets, DING)


async def test_batches_of_2500_ids_take_three_calls(fake: FakeJPush, channel: JPushChannel) -> None:
    targets = [fake.good_target() for _ in range(2500)]
    results = await channel.send(items(targets))
    assert len(results) == 2500 and all(r.outcome is Outcome.SENT for r in results)
    assert sorted(len(c) for c in fake.calls) == [500, 1000, 1000]
    assert fake.per_id() == {t: 1 for t in targets}
    assert len({r.provider_ref for r in results}) == 3


async def test_wrong_master_secret_is_refused_by_the_fake(fake: FakeJPush) -> None:
    ch = JPushChannel(make_settings(("", ""), **fake.settings_overrides(master_secret="0" * 24)))
    try:
        results = await ch.send(items([fake.good_target(), fake.good_target()]))
    finally:
        await ch.close()
    assert all(r.outcome is Outcome.FAILED and not r.disable_contact for r in results), results
    assert "1004" in (results[0].error or "")
    assert fake.rejected == 1 and fake.messages == [] and fake.calls == []


async def test_a_call_where_no_id_is_known_disables_every_contact(
    fake: FakeJPush, channel: JPushChannel
) -> None:
    targets = [fake.good_target() for _ in range(3)]
    fake.unknown_ids.update(targets)
    results = await channel.send(items(targets))
    assert all(r.outcome is Outcome.FAILED and r.disable_contact for r in results), results
    assert "1011" in (results[0].error or "") and fake.messages == []


async def test_one_unknown_id_among_known_ones_still_succeeds(fake: FakeJPush, channel: JPushChannel) -> None:
    targets = [fake.good_target() for _ in range(3)]
    fake.unknown_ids.add(targets[0])
    results = await channel.send(items(targets))
    # JPush accepts the call and says nothing about the one unknown id: nothing to disable.
    assert all(r.outcome is Outcome.SENT and not r.disable_contact for r in results), results
    assert fake.per_id() == {targets[1]: 1, targets[2]: 1}


@pytest.mark.parametrize(
    ("script", "outcome", "wait"),
    [
        (2002, Outcome.RETRY, 42.0),  # rate limited: wait for X-Rate-Limit-Reset
        (1000, Outcome.RETRY, None),
        (1030, Outcome.RETRY, None),
        (1003, Outcome.FAILED, None),
        (1008, Outcome.FAILED, None),
        ("drop", Outcome.UNKNOWN, None),
    ],
)
async def test_call_errors_apply_to_every_item(
    fake: FakeJPush, channel: JPushChannel, script: int | str, outcome: Outcome, wait: float | None
) -> None:
    targets = [fake.good_target() for _ in range(3)]
    fake.responses[targets[1]] = [script]
    results = await channel.send(items(targets))
    assert [(r.outcome, r.disable_contact, r.retry_after) for r in results] == [(outcome, False, wait)] * 3
    # Only the dropped call reached JPush (and was delivered, unknown to us).
    assert len(fake.messages) == (3 if script == "drop" else 0)


async def test_rate_limited_call_is_delivered_once_on_retry(fake: FakeJPush, channel: JPushChannel) -> None:
    targets = [fake.good_target() for _ in range(2)]
    fake.responses[targets[0]] = [2002]
    first = await channel.send(items(targets))
    second = await channel.send(items(targets))
    assert [r.outcome for r in first + second] == [Outcome.RETRY] * 2 + [Outcome.SENT] * 2
    assert fake.per_id() == {t: 1 for t in targets}


async def test_a_malformed_stored_target_fails_alone(fake: FakeJPush, channel: JPushChannel) -> None:
    results = {r.delivery_id: r for r in await channel.send(items(["not-an-id", fake.good_target()]))}
    assert results[1].outcome is Outcome.FAILED and results[1].disable_contact
    assert results[2].outcome is Outcome.SENT and len(fake.messages) == 1


async def test_unreachable_jpush_is_transient(fake: FakeJPush) -> None:
    overrides = fake.settings_overrides()
    overrides["jpush"] = overrides["jpush"].model_copy(update={"base_url": "http://127.0.0.1:9"})
    ch = JPushChannel(make_settings(("", ""), **overrides))
    try:
        results = await ch.send(items([fake.good_target()]))
    finally:
        await ch.close()
    assert results[0].outcome is Outcome.RETRY


def test_jpush_error_mapping_is_by_code_not_by_guess() -> None:
    assert type(jpush_error(404, None)) is PermanentError  # not an InvalidTarget: proxy pages disable nothing
    assert type(jpush_error(401, None)) is PermanentError
    assert isinstance(jpush_error(400, {"error": {"code": 1011, "message": "x"}}), InvalidTarget)
    limited, busy = jpush_error(429, None), jpush_error(503, None, retry_after=9.0)
    assert isinstance(limited, TransientError) and limited.retry_after == 60.0
    assert isinstance(busy, TransientError) and busy.retry_after == 9.0
