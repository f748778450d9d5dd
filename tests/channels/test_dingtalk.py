"""The DingTalk work-notification channel against a fake DingTalk open platform."""

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
from notifier.channels.dingtalk import (
    MAX_MSG_BYTES,
    THROTTLE_WAIT,
    DingTalkChannel,
    TokenRejected,
    build_message,
    dingtalk_error,
    parse_send_result,
    plan_tasks,
)
from notifier.clock import FrozenClock
from notifier.settings import Settings
from tests.conftest import make_settings
from tests.fakes.dingtalk import FakeDingTalk

DING = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "集合", "Report to HQ now")
LESSON = NoticeContent("6f1c1b7e-0000-4000-8000-000000000002", "notice", "Lesson 3", "Read chapter 3")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(1_800_000_000.0)


@pytest.fixture
async def channel(dingtalk_fake: FakeDingTalk, clock: FrozenClock) -> AsyncIterator[DingTalkChannel]:
    ch = DingTalkChannel(make_settings(("", ""), **dingtalk_fake.settings_overrides()), clock=clock)
    yield ch
    await ch.close()


def items(targets: list[str], notice: NoticeContent = DING, link: bool = True) -> list[Outgoing]:
    return [
        Outgoing(i, f"m{i}", t, notice, 1, read_link=f"https://n.example/r/tok{i}" if link else None)
        for i, t in enumerate(targets, start=1)
    ]


def users(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


# --- targets and pure building -----------------------------------------------------------


@pytest.mark.parametrize("target", ["manager4220", "0123456", "zhang.san@corp", "a-b_c$1"])
def test_accepts_dingtalk_userids(channel: DingTalkChannel, target: str) -> None:
    assert channel.validate_target(target) == target
    assert channel.validate_target(f" {target} ") == target


@pytest.mark.parametrize("target", [None, 42, ["u1"], "", "u 1", "u,1", "x" * 65, "张三"])
def test_rejects_malformed_userids(channel: DingTalkChannel, target: Any) -> None:
    with pytest.raises(InvalidTarget) as info:
        channel.validate_target(target)
    assert info.value.field == "target"


def test_a_message_with_a_read_link_is_an_action_card() -> None:
    msg = build_message(DING, "https://n.example/r/tok")
    assert msg == {
        "msgtype": "action_card",
        "action_card": {
            "title": "【DING】集合",
            "markdown": "### 集合\n\nReport to HQ now",
            "single_title": "查看并确认",
            "single_url": "https://n.example/r/tok",
        },
    }
    assert build_message(LESSON, None) == {
        "msgtype": "markdown",
        "markdown": {"title": "Lesson 3", "text": "### Lesson 3\n\nRead chapter 3"},
    }


@pytest.mark.parametrize("body", ["紧急" * 3000, '"\n' * 3000, "x" * 5000])
def test_a_long_body_is_cut_to_dingtalks_2048_bytes(body: str) -> None:
    for link in ("https://n.example/r/" + "t" * 200, None):
        msg = build_message(NoticeContent(DING.notice_id, "ding", "标题", body), link)
        size = len(json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode())
        assert MAX_MSG_BYTES * 0.9 < size <= MAX_MSG_BYTES  # cut, but not much more than needed


def test_tasks_hold_at_most_100_users_and_one_notice() -> None:
    batch = items(["u0000", *users(250)]) + items(["u0000"], LESSON)
    tasks = plan_tasks(batch, personal_links=False)
    assert [(t.notice.kind, len(t.users)) for t in tasks] == [
        ("ding", 100),
        ("ding", 100),
        ("ding", 50),
        ("notice", 1),
    ]
    assert len(tasks[0].users["u0000"]) == 2  # the same user twice rides in one task
    # Without the read poll every member needs their own link: a task each.
    assert [len(t.users) for t in plan_tasks(items(users(3)), personal_links=True)] == [1, 1, 1]


@pytest.mark.parametrize(
    ("code", "kind", "wait"),
    [
        (143103, TransientError, THROTTLE_WAIT),
        (143104, TransientError, THROTTLE_WAIT),
        (90002, TransientError, THROTTLE_WAIT),
        (143105, PermanentError, None),
        (143106, PermanentError, None),
        (42001, TokenRejected, None),
        (40014, TokenRejected, None),
        (33012, InvalidTarget, None),
        (40035, PermanentError, None),
    ],
)
def test_error_mapping(code: int, kind: type[Exception], wait: float | None) -> None:
    error = dingtalk_error(code, "x")
    assert type(error) is kind
    assert getattr(error, "retry_after", None) == wait
    assert str(code) in str(error)


def test_refusals_say_why() -> None:
    assert "daily cap" in str(dingtalk_error(143105, ""))
    assert "same content" in str(dingtalk_error(143106, ""))


def test_send_result_is_parsed_defensively() -> None:
    result = parse_send_result(
        {
            "send_result": {
                "read_user_id_list": ["a", "b", "bad id", 7],
                "unread_user_id_list": ["c"],
                "invalid_user_id_list": ["d"],
                "forbidden_user_id_list": ["e", "f"],
                "forbidden_list": [
                    {"code": "143106", "count": 1, "userid": "e"},
                    {"code": 143105, "userid": "f"},
                ],
                "failed_user_id_list": ["g"],
            }
        }
    )
    assert result.read == ["a", "b"] and result.unread == ["c"]
    assert set(result.failed) == {"d", "e", "f", "g"}
    assert "invalid user id" in result.failed["d"]
    assert "143106" in result.failed["e"] and "same content" in result.failed["e"]
    assert "143105" in result.failed["f"] and "daily cap" in result.failed["f"]
    with pytest.raises(TransientError):
        parse_send_result({"errcode": 0})


def test_capabilities_and_configuration(channel: DingTalkChannel) -> None:
    caps = channel.capabilities
    assert (caps.max_batch, caps.read_link, caps.supports_read_confirmation, caps.supports_recall) == (
        500,
        True,
        True,
        True,
    )
    with pytest.raises(ValueError, match="agent_id"):
        DingTalkChannel(Settings())


# --- sending, tokens, limits -------------------------------------------------------------


async def test_300_members_take_three_tasks_of_100(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    targets = users(300)
    results = await channel.send(items(targets))
    assert sorted(r.delivery_id for r in results) == list(range(1, 301))
    assert all(r.outcome is Outcome.SENT for r in results), results[:3]
    assert (
        dingtalk_fake.calls["asyncsend_v2"] == 3
        and sorted(len(t.user_ids) for t in dingtalk_fake.tasks.values()) == [100] * 3
    )
    assert dingtalk_fake.per_user() == {t: 1 for t in targets}
    assert {r.provider_ref for r in results} == {str(t) for t in dingtalk_fake.tasks}
    assert all(
        t.msg["msgtype"] == "markdown" for t in dingtalk_fake.tasks.values()
    )  # no one personal link for 100
    assert dingtalk_fake.token_requests == 1  # cached across the three calls


async def test_one_member_gets_their_read_link(dingtalk_fake: FakeDingTalk, channel: DingTalkChannel) -> None:
    (result,) = await channel.send(items(["solo"]))
    assert result.outcome is Outcome.SENT
    (task,) = dingtalk_fake.tasks.values()
    assert task.msg["action_card"]["single_url"] == "https://n.example/r/tok1"


async def test_token_is_refreshed_before_it_expires(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel, clock: FrozenClock
) -> None:
    await channel.send(items(["a1"]))
    clock.advance(3600)
    await channel.send(items(["a2"]))
    assert dingtalk_fake.token_requests == 1
    clock.advance(7200 - 3600 - 299)  # inside the refresh margin, before DingTalk's expiry
    dingtalk_fake.advance(7200 - 299)
    await channel.send(items(["a3"]))
    assert dingtalk_fake.token_requests == 2 and dingtalk_fake.rejected == 0


async def test_a_revoked_token_is_refetched_once(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    await channel.send(items(["a1"]))
    dingtalk_fake.revoke_tokens()
    (result,) = await channel.send(items(["a2"]))
    assert result.outcome is Outcome.SENT
    assert (
        dingtalk_fake.token_requests == 2
        and dingtalk_fake.rejected == 1
        and dingtalk_fake.per_user() == {"a1": 1, "a2": 1}
    )


async def test_a_token_rejected_twice_fails_without_a_loop(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    dingtalk_fake.token_lifetime = 0  # every token it issues is already expired
    (result,) = await channel.send(items(["a1"]))
    assert result.outcome is Outcome.FAILED and "42001" in (result.error or "")
    assert dingtalk_fake.token_requests == 2 and dingtalk_fake.rejected == 2 and dingtalk_fake.messages == []


async def test_wrong_secret_fails_and_sends_nothing(dingtalk_fake: FakeDingTalk) -> None:
    ch = DingTalkChannel(make_settings(("", ""), **dingtalk_fake.settings_overrides(app_secret="wrong")))
    try:
        results = await ch.send(items(["a1", "a2"]))
    finally:
        await ch.close()
    assert all(r.outcome is Outcome.FAILED and not r.disable_contact for r in results), results
    assert "40096" in (results[0].error or "") and dingtalk_fake.messages == []


async def test_app_per_minute_limit_is_throttled_with_a_wait(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    dingtalk_fake.app_minute_limit = 150
    first = await channel.send(items(users(100)))
    second = await channel.send(items(users(100, "v")))
    assert all(r.outcome is Outcome.SENT for r in first)
    assert all(r.outcome is Outcome.RETRY and r.retry_after == THROTTLE_WAIT for r in second), second[:2]
    assert "143103" in (second[0].error or "") and "throttled" in (second[0].error or "")
    assert len(dingtalk_fake.messages) == 100
    dingtalk_fake.advance(61)
    assert all(r.outcome is Outcome.SENT for r in await channel.send(items(users(100, "v"))))


async def test_corp_per_minute_limit_is_throttled(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    dingtalk_fake.responses.append(143104)
    (result,) = await channel.send(items(["a1"]))
    assert (
        result.outcome is Outcome.RETRY
        and result.retry_after == THROTTLE_WAIT
        and dingtalk_fake.messages == []
    )


async def test_same_content_twice_a_day_fails_with_the_reason(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    targets = users(3)
    await channel.send(items(targets, link=False))
    again = await channel.send(items(targets, link=False))
    assert all(r.outcome is Outcome.FAILED and not r.disable_contact for r in again), again
    assert "143106" in (again[0].error or "") and "same content" in (again[0].error or "")
    assert dingtalk_fake.per_user() == {t: 1 for t in targets}  # never sent twice, never reported 'sent'


async def test_daily_cap_fails_with_the_reason(dingtalk_fake: FakeDingTalk, channel: DingTalkChannel) -> None:
    dingtalk_fake.daily_cap = 1
    await channel.send(items(["a1"], DING))
    (result,) = await channel.send(items(["a1"], LESSON))
    assert (
        result.outcome is Outcome.FAILED
        and "143105" in (result.error or "")
        and "daily cap" in (result.error or "")
    )
    assert dingtalk_fake.per_user() == {"a1": 1}


async def test_reads_and_refusals_come_back_per_task(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    await channel.send(items(["a1", "a2"], link=False))
    dingtalk_fake.invalid_users.add("nobody")
    results = await channel.send(items(["a1", "a3", "nobody"], link=False))
    assert all(r.outcome is Outcome.SENT for r in results)  # a partly refused task is still a task
    task_id = results[0].provider_ref
    assert task_id is not None
    dingtalk_fake.mark_read(["a3"])
    result = await channel.send_result(task_id)
    assert result.read == ["a3"] and result.unread == []
    assert set(result.failed) == {"a1", "nobody"}
    assert "143106" in result.failed["a1"] and "invalid user id" in result.failed["nobody"]


async def test_recall_withdraws_the_task(dingtalk_fake: FakeDingTalk, channel: DingTalkChannel) -> None:
    (result,) = await channel.send(items(["a1"]))
    assert result.provider_ref is not None
    await channel.recall(result.provider_ref)
    assert dingtalk_fake.tasks[int(result.provider_ref)].recalled
    dingtalk_fake.advance(24 * 3600 + 1)
    with pytest.raises(PermanentError, match="40035"):
        await channel.recall(result.provider_ref)


async def test_a_throttled_token_request_is_retried_not_failed(
    dingtalk_fake: FakeDingTalk, channel: DingTalkChannel
) -> None:
    dingtalk_fake.token_responses.append(90002)
    (result,) = await channel.send(items(["a1"]))
    assert (
        result.outcome is Outcome.RETRY and "90002" in (result.error or "") and dingtalk_fake.messages == []
    )
    (result,) = await channel.send(items(["a1"]))  # the next attempt gets a token and sends
    assert result.outcome is Outcome.SENT and dingtalk_fake.per_user() == {"a1": 1}
