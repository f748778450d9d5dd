"""The explicit channel registry: every channel is registered here by hand, once.

No folder scanning: ``build_registry(settings)`` names each channel it creates, and registering
the same id twice is an error.
"""

from __future__ import annotations

from collections.abc import Iterator

from notifier.channels.base import Channel
from notifier.settings import Settings


class DuplicateChannel(ValueError):
    pass


class UnknownChannel(KeyError):
    pass


class ChannelRegistry:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def register(self, channel: Channel) -> None:
        if not isinstance(channel, Channel):
            raise TypeError(f"{channel!r} does not implement the Channel contract")
        if channel.id in self._channels:
            raise DuplicateChannel(f"channel id {channel.id!r} is already registered")
        self._channels[channel.id] = channel

    def get(self, channel_id: str) -> Channel:
        try:
            return self._channels[channel_id]
        except KeyError:
            raise UnknownChannel(channel_id) from None

    def __contains__(self, channel_id: object) -> bool:
        return channel_id in self._channels

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._channels.values())

    def ids(self) -> list[str]:
        return list(self._channels)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def build_registry(settings: Settings) -> ChannelRegistry:
    from notifier.channels.apns import ApnsChannel
    from notifier.channels.apns import configured as apns_configured
    from notifier.channels.dingtalk import DingTalkChannel
    from notifier.channels.dingtalk import configured as dingtalk_configured
    from notifier.channels.dingtalk_ding import DingTalkDingChannel
    from notifier.channels.dingtalk_ding import configured as ding_configured
    from notifier.channels.dingtalk_robot import DingTalkRobotChannel
    from notifier.channels.dingtalk_robot import configured as robot_configured
    from notifier.channels.fcm import FcmChannel
    from notifier.channels.inapp import InAppChannel
    from notifier.channels.jpush import JPushChannel
    from notifier.channels.sms import SmsChannel
    from notifier.channels.voice import VoiceChannel
    from notifier.channels.webhook import WebhookChannel
    from notifier.channels.webpush import WebPushChannel

    registry = ChannelRegistry()
    registry.register(InAppChannel())
    registry.register(WebhookChannel(settings))
    # Phone channels: registered when their provider account is configured.
    if settings.webpush.vapid_private_key is not None:
        registry.register(WebPushChannel(settings))
    if settings.fcm.service_account_json is not None:
        registry.register(FcmChannel(settings))
    if apns_configured(settings):
        registry.register(ApnsChannel(settings))
    if settings.jpush.app_key and settings.jpush.master_secret is not None:
        registry.register(JPushChannel(settings))
    if dingtalk_configured(settings):
        registry.register(DingTalkChannel(settings))
    if ding_configured(settings):
        registry.register(DingTalkDingChannel(settings))
    if robot_configured(settings):
        registry.register(DingTalkRobotChannel(settings))
    if settings.sms_provider:
        registry.register(SmsChannel(settings))
    if settings.voice_provider:
        registry.register(VoiceChannel(settings))
    return registry
