"""The DingTalk DING channel (robot/ding/send, new-style token) against the fake DingTalk."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from notifier.channels.base import NoticeContent, Outcome, Outgoing, PermanentError, TransientError
from notifier.channels.dingtalk_api import THROTTLE_WAIT, TokenRejected, api_error
from notifier.channels.dingtalk_ding import (
    MAX_CONTENT_CHARS,
    DingTalkDingChannel,
    build_content,
    parse_failed,
    plan_calls,
)
from notifier.clock import FrozenClock
from notifier.domain.escalation import MANUAL_STEP_BASE, PolicyRules, mode_of_step, step_code, step_modes
from tests.conftest import make_settings
from tests.fakes.dingtalk import FakeDingTalk

DING = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "集合", "Report to HQ now")
OTHER = NoticeContent("6f1c1b7e-0000-4000-8000-000000000002", "ding", "撤离", "Leave the building")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(1_800_000_000.0)


@pytest.fixture
async def channel(dingtalk_fake: FakeDingTalk, clock: FrozenClock) -> AsyncIterator[DingTalkDingChannel]:
    ch = DingTalkDingChannel(make_settings(("", ""), **dingtalk_fake.settings_overrides()), clock=clock)
    yield ch
    await ch.close()


def items(
    targets: list[str], mode: str | None, notice: NoticeContent = DING, first: int = 1
) -> list[Outgoing]:
    return [Outgoing(i, f"m{i}", t, notice, 1, mode=mode) for i, t in enumerate(targets, start=first)]


def users(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


# --- pure parts ------------------------------------------------------------------------------


def test_calls_respect_the_per_mode_receiver_limits() -> None:
    batch = items(users(450), "app") + items(users(45, "p"), "phone", first=1000)
    batch += items(users(30, "s"), "sms", first=2000) + items(users(5, "o"), None, OTHER, first=3000)
    calls = plan_calls(batch)
    shape = sorted((c.mode, c.notice.title, len(c.users)) for c in calls)
    assert shape == [
        ("app", "撤离", 5),  # no mode: an app DING, and never in one call with another notice
        ("app", "集合", 50),
        ("app", "集合", 200),
        ("app", "集合", 200),
        ("phone", "集合", 5),
        ("phone", "集合", 20),
        ("phone", "集合", 20),
        ("sms", "集合", 10),
        ("sms", "集合", 20),
    ]


def test_content_is_cut_and_marked() -> None:
    text = build_content(NoticeContent("n", "ding", "T", "x" * 2000))
    assert text.startswith("【DING】T\n") and len(text) == MAX_CONTENT_CHARS and text.endswith("…")


def test_failed_list_is_read_per_its_documented_shape() -> None:
    assert parse_failed({"userNotFound": ["a1", "b2"], "quota": ["c3"]}) == {
        "a1": "DingTalk: userNotFound",
        "b2": "DingTalk: userNotFound",
        "c3": "DingTalk: quota",
    }
    assert parse_failed({"x\x00y": ["c3"]}) == {"c3": "DingTalk: xy"}  # provider text is cleaned
    assert parse_failed(None) == {} and parse_failed({}) == {}


@pytest.mark.parametrize(
    "value",
    [
        ["a1"],  # a bare list of user ids
        [{"userId": "c3", "reason": "x"}],  # a list of objects
        {"quota": "b2"},  # a reason with one id, not a list
        {"userNotFound": ["a1", "bad id!"]},  # not a user id
        {"userNotFound": ["a1", 3]},
        "nonsense",
        3,
    ],
)
def test_a_failed_list_of_any_other_shape_is_a_permanent_error(value: object) -> None:
    with pytest.raises(PermanentError, match="failedList"):
        parse_failed(value)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "InvalidAuthentication", TokenRejected),
        (403, "QpsLimitForAppkeyAndApi", TransientError),
        (429, "systemBusy", TransientError),
        (503, "", TransientError),
        (403, "Forbidden.AccessDenied", PermanentError),
        (400, "invalidParameter", PermanentError),
    ],
)
def test_new_style_error_mapping(status: int, code: str, kind: type[Exception]) -> None:
    error = api_error(status, {"code": code, "message": "m"})
    assert type(error) is kind
    if kind is TransientError:
        assert isinstance(error, TransientError) and error.retry_after == THROTTLE_WAIT


def test_a_step_mode_is_validated_and_reaches_the_delivery() -> None:
    rules = PolicyRules.model_validate(
        {
            "steps": [
                {"after": "PT5M", "remind": ["dingtalk"]},
                {"after": "PT10M", "remind": ["dingtalk_ding"], "mode": "phone"},
            ],
            "repeat": 1,
        }
    )
    modes = step_modes(rules.snapshot("p"))
    assert modes == (None, "phone")
    assert [mode_of_step(modes, step_code(r, i)) for r in (0, 1) for i in (0, 1)] == [None, "phone"] * 2
    assert mode_of_step(modes, 0) is None and mode_of_step(modes, MANUAL_STEP_BASE + 1) is None
    for bad in ({"remind": ["sms"], "mode": "phone"}, {"remind": ["dingtalk_ding"], "mode": "fax"}):
        with pytest.raises(ValueError, match="mode"):
            PolicyRules.model_validate({"steps": [{"after": "PT5M", **bad}]})


# --- against the fake -------------------------------------------------------------------------


async def test_a_phone_ding_to_45_takes_three_calls_with_the_new_token(
    dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel
) -> None:
    targets = users(45)
    results = await channel.send(items(targets, "phone"))
    assert sorted(r.delivery_id for r in results) == list(range(1, 46))
    assert all(r.outcome is Outcome.SENT for r in results)
    assert sorted(len(d.user_ids) for d in dingtalk_fake.dings) == [5, 20, 20]
    assert {d.remind_type for d in dingtalk_fake.dings} == {3}
    assert dingtalk_fake.dinged() == {t: 1 for t in targets}
    assert {r.provider_ref for r in results} == {d.open_ding_id for d in dingtalk_fake.dings}
    # The new-style token, asked once, carried in the header; the old-style one never asked for.
    assert (
        dingtalk_fake.api_token_requests == 1
        and dingtalk_fake.api_rejected == 0
        and dingtalk_fake.token_requests == 0
    )


async def test_app_dings_take_200_a_call(dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel) -> None:
    results = await channel.send(items(users(250), None))
    assert all(r.outcome is Outcome.SENT for r in results)
    assert sorted(len(d.user_ids) for d in dingtalk_fake.dings) == [50, 200] and {
        d.remind_type for d in dingtalk_fake.dings
    } == {1}


async def test_failed_receivers_fail_with_the_reason(
    dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel
) -> None:
    dingtalk_fake.ding_failed_users.add("u0001")
    results = {r.delivery_id: r for r in await channel.send(items(users(3), "sms"))}
    assert results[2].outcome is Outcome.FAILED and results[2].error == "DingTalk: userNotFound"
    assert results[1].outcome is Outcome.SENT and results[3].outcome is Outcome.SENT
    assert dingtalk_fake.dinged(2) == {"u0000": 1, "u0002": 1}


async def test_an_undocumented_failed_list_fails_every_receiver_for_good_and_keeps_the_ding_id(
    dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel
) -> None:
    dingtalk_fake.ding_failed_list = ["u0001"]  # not the documented object of reason -> user ids
    results = await channel.send(items(users(2), "sms"))
    (ding,) = dingtalk_fake.dings
    assert [(r.outcome, r.provider_ref) for r in results] == [(Outcome.FAILED, ding.open_ding_id)] * 2
    assert all("failedList" in (r.error or "") and "unknown" in (r.error or "") for r in results)


async def test_a_revoked_token_is_refetched_once_and_an_expired_one_refreshed(
    dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel, clock: FrozenClock
) -> None:
    await channel.send(items(["a1"], "app"))
    dingtalk_fake.revoke_tokens()
    (result,) = await channel.send(items(["a2"], "app"))
    assert (
        result.outcome is Outcome.SENT
        and dingtalk_fake.api_token_requests == 2
        and dingtalk_fake.api_rejected == 1
    )
    clock.advance(7200 - 299)  # inside the refresh margin: a new token before DingTalk's expiry
    dingtalk_fake.advance(7200 - 299)
    await channel.send(items(["a3"], "app"))
    assert dingtalk_fake.api_token_requests == 3 and dingtalk_fake.api_rejected == 1


async def test_a_token_rejected_twice_fails_without_a_loop(
    dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel
) -> None:
    dingtalk_fake.token_lifetime = 0
    (result,) = await channel.send(items(["a1"], "phone"))
    assert result.outcome is Outcome.FAILED and "InvalidAuthentication" in (result.error or "")
    assert (
        dingtalk_fake.api_token_requests == 2
        and dingtalk_fake.api_rejected == 2
        and dingtalk_fake.dings == []
    )


async def test_wrong_secret_fails_and_dings_nobody(dingtalk_fake: FakeDingTalk) -> None:
    settings = make_settings(("", ""), **dingtalk_fake.settings_overrides(app_secret="wrong"))
    channel = DingTalkDingChannel(settings)
    try:
        (result,) = await channel.send(items(["a1"], "phone"))
    finally:
        await channel.close()
    assert result.outcome is Outcome.FAILED and "token refused" in (result.error or "")
    assert "invalidClientIdOrSecret" in (result.error or "") and dingtalk_fake.dings == []


async def test_the_per_minute_limit_is_throttled_with_a_wait(
    dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel
) -> None:
    dingtalk_fake.ding_minute_limit = 30
    first = await channel.send(items(users(20), "app"))
    second = await channel.send(items(users(20, "v"), "app", first=100))
    assert all(r.outcome is Outcome.SENT for r in first)
    assert all(r.outcome is Outcome.RETRY and r.retry_after == THROTTLE_WAIT for r in second)
    assert "QpsLimitForAppkeyAndApi" in (second[0].error or "")
    dingtalk_fake.advance(61)
    assert all(r.outcome is Outcome.SENT for r in await channel.send(items(users(20, "v"), "app")))


async def test_recall_by_open_ding_id(dingtalk_fake: FakeDingTalk, channel: DingTalkDingChannel) -> None:
    (result,) = await channel.send(items(["a1"], "phone"))
    assert result.provider_ref is not None
    await channel.recall(result.provider_ref)
    assert [d.recalled for d in dingtalk_fake.dings] == [True]
    with pytest.raises(PermanentError, match="openDingId"):
        await channel.recall("ding-unknown")
