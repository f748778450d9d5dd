"""The ``voice`` channel: a phone call that reads the notice out, through Twilio or Aliyun
(``settings.voice_provider``).

Twilio: the call's TwiML reads the notice twice inside ``<Gather numDigits="1">``; pressing 1
posts to ``/v1/providers/voice/callbacks?event=gather`` and counts as read. The call's end posts
``?event=status``: ``completed`` is delivered, ``busy`` / ``no-answer`` / ``failed`` / ``canceled``
failed. Aliyun: ``SingleCallByTts`` with a pre-approved TTS template; it collects no key press, so
with Aliyun the channel reports delivery (the VoiceReport push) but never a read.

An ambiguous call request is ``unknown`` and never repeated: ringing someone twice for one notice
is worse than letting the escalation policy decide.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from notifier.channels import aliyun, twilio
from notifier.channels.base import (
    CallbackReply,
    Capabilities,
    InvalidTarget,
    Outgoing,
    Result,
)
from notifier.channels.phone import FormPoster, send_each, validate_e164
from notifier.clock import Clock, SystemClock
from notifier.settings import Settings

log = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 15.0
MAX_CONCURRENCY = 32


class VoiceProvider(Protocol):
    reads: bool  # the member can confirm during the call

    def validate(self, phone: str) -> str: ...

    async def send(self, item: Outgoing, phone: str) -> str: ...

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply: ...


class TwilioVoice:
    reads = True

    def __init__(self, settings: Settings, poster: FormPoster, clock: Clock) -> None:
        self._client = twilio.TwilioClient(settings.twilio, poster, clock)
        base = f"{settings.effective_public_url.rstrip('/')}/v1/providers/voice/callbacks"
        self.gather_url, self.status_url = f"{base}?event=gather", f"{base}?event=status"
        if not settings.twilio.voice_from:
            raise ValueError("twilio: voice_from must be set")

    def validate(self, phone: str) -> str:
        return phone

    async def send(self, item: Outgoing, phone: str) -> str:
        gather = twilio.with_delivery(self.gather_url, item.delivery_id)
        status = twilio.with_delivery(self.status_url, item.delivery_id)
        twiml = twilio.call_twiml(item.notice.title, item.notice.body, gather)
        request = twilio.build_call_request(self._client.settings, phone, twiml, status)
        return await self._client.create(request)

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        params = self._client.verified_params(url, headers, body)
        event = parse_qs(urlsplit(url).query).get("event", [""])[0]
        return twilio.call_callback(event, params, url)


class AliyunVoice:
    reads = False

    def __init__(self, settings: Settings, poster: FormPoster, clock: Clock) -> None:
        self._settings = settings.aliyun
        self._client = aliyun.AliyunClient(settings.aliyun, poster, clock)
        self._link_secret = settings.link_secret.get_secret_value()
        self._link_secrets = settings.link_secrets()  # any verifies during a rotation
        if not self._settings.voice_show_number or not self._settings.voice_tts_code:
            raise ValueError("aliyun: voice_show_number and voice_tts_code must be set")

    def validate(self, phone: str) -> str:
        if not phone.startswith("+86"):
            raise InvalidTarget("aliyun voice calls reach mainland China numbers (+86) only", field="target")
        return phone

    async def send(self, item: Outgoing, phone: str) -> str:
        notice = item.notice
        params = aliyun.tts_call_params(
            self._settings,
            phone,
            notice.title,
            notice.body,
            aliyun.out_id(self._link_secret, item.delivery_id),
        )
        reply = await self._client.call(self._settings.voice_base_url, "SingleCallByTts", params)
        return str(reply.get("CallId") or "")

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        return aliyun.handle_report(
            url, body, self._link_secrets, VoiceChannel.id, aliyun.voice_report_updates
        )


def make_provider(settings: Settings, poster: FormPoster, clock: Clock) -> VoiceProvider:
    if settings.voice_provider == "twilio":
        return TwilioVoice(settings, poster, clock)
    if settings.voice_provider == "aliyun":
        return AliyunVoice(settings, poster, clock)
    raise ValueError(f"voice_provider must be 'aliyun' or 'twilio', not {settings.voice_provider!r}")


class VoiceChannel:
    id = "voice"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._poster = FormPoster(
            settings.provider_timeout_seconds or READ_TIMEOUT_SECONDS,
            min(settings.delivery_concurrency, MAX_CONCURRENCY),
        )
        self._provider = make_provider(settings, self._poster, self._clock)
        self.capabilities = Capabilities(
            max_batch=20,
            max_attempts=3,
            resend_when_ambiguous=False,
            supports_delivery_reports=True,
            supports_read_confirmation=self._provider.reads,
            rate_per_second=settings.voice_rate_per_second,
            circuit_breaker=True,  # one provider account behind every call
            # Like SMS: however many steps or notices ask, one number rings at most this often.
            per_target_limit=(settings.voice_per_phone_limit, settings.voice_per_phone_window_seconds),
            paid=True,
        )

    def validate_target(self, target: Any) -> Any:
        return self._provider.validate(validate_e164(target))

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        return await send_each(batch, self.validate_target, self._provider.send, "call")

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        return self._provider.handle_callback(url, headers, body)

    async def close(self) -> None:
        await self._poster.close()
