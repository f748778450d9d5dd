"""One contract suite, run against every registered channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from notifier.channels.base import Capabilities, Channel, InvalidTarget, NoticeContent, Outcome, Outgoing
from notifier.channels.registry import ChannelRegistry, DuplicateChannel, UnknownChannel, build_registry
from notifier.settings import Settings
from tests.conftest import WEBHOOK_SECRET, make_settings
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.apns import ApnsFake
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.fcm import FakeFcm
from tests.fakes.jpush import FakeJPush
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.fakes.webpush import FakePushService

# Every channel the registry can build. A channel added to the registry but not here (and so
# without a fake provider and a good target) fails test_every_channel_is_covered.
ALL_CHANNELS = [
    *("inapp", "webhook", "webpush", "fcm", "apns", "jpush"),
    *("dingtalk", "dingtalk_ding", "dingtalk_robot", "sms", "voice"),
]
BAD_TARGETS: list[Any] = [None, 12345, [], {"nonsense": True}, "", "x" * 5000]


@dataclass
class Providers:
    settings: Settings
    good_targets: dict[str, Any]


@pytest.fixture(scope="module")
async def providers(server_urls: tuple[str, str]) -> AsyncIterator[Providers]:
    """Every fake provider, started once for the module, and settings that configure them all."""
    receiver = await WebhookReceiver(secret=WEBHOOK_SECRET).start()
    push = await FakePushService().start()
    fcm = await FakeFcm().start()
    apns = await ApnsFake().start()
    jpush = await FakeJPush().start()
    twilio = await FakeTwilio().start()
    aliyun = await FakeAliyun().start()
    dingtalk = await FakeDingTalk().start()
    fakes: list[Any] = [push, fcm, apns, jpush, twilio, aliyun, dingtalk]
    overrides: dict[str, Any] = {}
    for fake in fakes:
        overrides.update(fake.settings_overrides())
    # One provider per phone channel: Aliyun for SMS, Twilio for voice (each fake is also
    # exercised on the other in its own test file).
    overrides.update(sms_provider="aliyun", voice_provider="twilio")
    try:
        yield Providers(
            make_settings(server_urls, **overrides),
            {
                "webhook": receiver.url,
                "webpush": push.good_target(),
                "fcm": fcm.good_target(),
                "apns": apns.good_target(),
                "jpush": jpush.good_target(),
                "dingtalk": dingtalk.good_target(),
                "dingtalk_ding": dingtalk.good_target(),
                "dingtalk_robot": dingtalk.new_robot(),
                "sms": aliyun.good_target(),
                "voice": twilio.good_target(),
            },
        )
    finally:
        for fake in [receiver, *fakes]:
            await fake.stop()


@pytest.fixture(params=ALL_CHANNELS)
async def channel(request: pytest.FixtureRequest, providers: Providers) -> AsyncIterator[Channel]:
    registry = build_registry(providers.settings)
    ch = registry.get(request.param)
    yield ch
    await registry.close()


def test_every_channel_is_covered(providers: Providers) -> None:
    assert build_registry(providers.settings).ids() == ALL_CHANNELS
    assert build_registry(make_settings(("", ""))).ids() == ["inapp", "webhook"]  # nothing configured


def test_identity_and_capabilities(channel: Channel) -> None:
    assert isinstance(channel, Channel)
    assert channel.id and channel.id == channel.id.strip().lower()
    caps = channel.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.max_batch >= 1 and caps.max_attempts >= 1
    if caps.delivers_on_insert:
        assert not caps.needs_contact, "a channel delivered on insert cannot depend on a contact"


@pytest.mark.parametrize("bad", BAD_TARGETS)
def test_rejects_malformed_targets(channel: Channel, bad: Any) -> None:
    with pytest.raises(InvalidTarget) as info:
        channel.validate_target(bad)
    assert info.value.field.startswith("target")


def test_accepts_a_good_target_and_normalises_idempotently(channel: Channel, providers: Providers) -> None:
    if not channel.capabilities.needs_contact:
        pytest.skip("channel takes no contact")
    assert channel.id in providers.good_targets, f"add a good target for {channel.id} to the contract suite"
    once = channel.validate_target(providers.good_targets[channel.id])
    assert channel.validate_target(once) == once


async def test_send_returns_one_result_per_item(channel: Channel, providers: Providers) -> None:
    assert await channel.send([]) == []
    caps = channel.capabilities
    target = channel.validate_target(providers.good_targets[channel.id]) if caps.needs_contact else None
    content = NoticeContent("00000000-0000-0000-0000-000000000001", "ding", "title", "body")
    batch = [
        Outgoing(i, f"m{i}", target, content, 1, read_link="https://example.org/r/x") for i in range(1, 6)
    ]
    results = await channel.send(batch)
    assert sorted(r.delivery_id for r in results) == [1, 2, 3, 4, 5]
    assert all(r.outcome in (Outcome.DELIVERED, Outcome.SENT) for r in results), results
    assert all(not r.disable_contact for r in results)


async def test_close_is_idempotent(channel: Channel) -> None:
    await channel.close()
    await channel.close()


def test_registry_is_explicit_and_rejects_duplicates(settings: Settings) -> None:
    registry = build_registry(settings)
    first = registry.get(ALL_CHANNELS[0])
    with pytest.raises(DuplicateChannel):
        registry.register(first)
    with pytest.raises(UnknownChannel):
        registry.get("carrier-pigeon")
    with pytest.raises(TypeError):
        ChannelRegistry().register(object())  # type: ignore[arg-type]
