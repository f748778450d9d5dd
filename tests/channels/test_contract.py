"""One contract suite, run against every registered channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from notifier.channels.base import Capabilities, Channel, InvalidTarget, NoticeContent, Outcome, Outgoing
from notifier.channels.registry import ChannelRegistry, DuplicateChannel, UnknownChannel, build_registry
from notifier.settings import Settings
from tests.fakes.webhook_receiver import WebhookReceiver

# A target each contact-based channel must accept, given the fake providers. A channel added to the
# registry without an entry here fails the suite: every channel gets the contract tests.
GOOD_TARGETS: dict[str, Callable[[WebhookReceiver], Any]] = {
    "webhook": lambda receiver: receiver.url,
}
BAD_TARGETS: list[Any] = [None, 12345, [], {"nonsense": True}, "", "x" * 5000]
CHANNEL_IDS = build_registry(Settings(webhook_secret="whsec_" + "A" * 24)).ids()


@pytest.fixture(params=CHANNEL_IDS)
async def channel(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Channel]:
    registry = build_registry(settings)
    ch = registry.get(request.param)
    yield ch
    await registry.close()


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


def test_accepts_a_good_target_and_normalises_idempotently(
    channel: Channel, receiver: WebhookReceiver
) -> None:
    if not channel.capabilities.needs_contact:
        pytest.skip("channel takes no contact")
    assert channel.id in GOOD_TARGETS, f"add a good target for {channel.id} to the contract suite"
    once = channel.validate_target(GOOD_TARGETS[channel.id](receiver))
    assert channel.validate_target(once) == once


async def test_send_returns_one_result_per_item(channel: Channel, receiver: WebhookReceiver) -> None:
    assert await channel.send([]) == []
    target = (
        channel.validate_target(GOOD_TARGETS[channel.id](receiver))
        if channel.capabilities.needs_contact
        else None
    )
    content = NoticeContent("00000000-0000-0000-0000-000000000001", "ding", "title", "body")
    batch = [Outgoing(i, f"m{i}", target, content, 1) for i in range(1, 6)]
    results = await channel.send(batch)
    assert sorted(r.delivery_id for r in results) == [1, 2, 3, 4, 5]
    assert all(r.outcome in (Outcome.DELIVERED, Outcome.SENT) for r in results), results


def test_registry_is_explicit_and_rejects_duplicates(settings: Settings) -> None:
    registry = build_registry(settings)
    first = registry.get(CHANNEL_IDS[0])
    with pytest.raises(DuplicateChannel):
        registry.register(first)
    with pytest.raises(UnknownChannel):
        registry.get("carrier-pigeon")
    with pytest.raises(TypeError):
        ChannelRegistry().register(object())  # type: ignore[arg-type]
