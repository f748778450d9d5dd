"""The ``sms`` channel: one text per delivery through Aliyun or Twilio (``settings.sms_provider``).

The text is ``[title] body-excerpt… <read link>``, cut to at most ``MAX_SEGMENTS`` concatenated
segments: the body is shortened, the link never (it records the read when opened). An ambiguous
send (the connection dropped after the request left) is reported as ``unknown`` and never resent:
a delivery report or the next escalation step settles it.

Why ``SendSms`` per delivery and not Aliyun's ``SendBatchSms``: each text carries its own read
link, and a batch call answers with one ``Code`` and one ``BizId`` for all its numbers, so one bad
number would fail the whole batch and reports could not be told apart by delivery.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from notifier.channels import aliyun, twilio
from notifier.channels.base import (
    CallbackReply,
    Capabilities,
    Outgoing,
    Result,
)
from notifier.channels.phone import (
    FormPoster,
    capacity,
    clip,
    is_gsm7,
    one_line,
    send_each,
    units,
    validate_e164,
)
from notifier.clock import Clock, SystemClock
from notifier.settings import Settings

log = logging.getLogger(__name__)

MAX_SEGMENTS = 3
READ_TIMEOUT_SECONDS = 15.0
MAX_CONCURRENCY = 64


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def sms_text(title: str, body: str, link: str | None, max_segments: int = MAX_SEGMENTS) -> str:
    """``[title] body link`` within ``max_segments`` SMS segments (pure)."""
    title, body = one_line(title), one_line(body)
    head = f"[{title}]" if title else ""
    full = _join(head, body, link)
    gsm7 = is_gsm7(full)
    budget = capacity(max_segments, gsm7)
    if units(full, gsm7) <= budget:
        return full
    ellipsis = "..." if gsm7 else "…"
    room = budget - units(f" {link}" if link else "", gsm7)  # what the title and the body may use
    if units(_join(head, ellipsis), gsm7) > room:
        # Even the title does not fit beside the link: shorten the title, drop the body.
        short = clip(title, room - units("[]", gsm7), gsm7, ellipsis)
        return _join(f"[{short}]", link) if short else (link or clip(title, budget, gsm7, ellipsis))
    excerpt = clip(body, room - units(f"{head} " if head else "", gsm7), gsm7, ellipsis)
    return _join(head, excerpt, link)


class SmsProvider(Protocol):
    async def send(self, item: Outgoing, phone: str) -> str: ...

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply: ...


class TwilioSms:
    def __init__(self, settings: Settings, poster: FormPoster, clock: Clock) -> None:
        self._client = twilio.TwilioClient(settings.twilio, poster, clock)
        self._callback = f"{settings.effective_public_url.rstrip('/')}/v1/providers/sms/callbacks"
        if not settings.twilio.sms_from:
            raise ValueError("twilio: sms_from (a number or a Messaging Service sid) must be set")

    async def send(self, item: Outgoing, phone: str) -> str:
        text = sms_text(item.notice.title, item.notice.body, item.read_link)
        callback = twilio.with_delivery(self._callback, item.delivery_id)
        request = twilio.build_message_request(self._client.settings, phone, text, callback)
        return await self._client.create(request)

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        params = self._client.verified_params(url, headers, body)
        return CallbackReply(twilio.message_status_updates(params, twilio.delivery_of(url)))


class AliyunSms:
    def __init__(self, settings: Settings, poster: FormPoster, clock: Clock) -> None:
        self._settings = settings.aliyun
        self._client = aliyun.AliyunClient(settings.aliyun, poster, clock)
        self._link_secret = settings.link_secret.get_secret_value()
        self._link_secrets = settings.link_secrets()  # any verifies during a rotation
        if not self._settings.sms_sign_name or not self._settings.sms_template_code:
            raise ValueError("aliyun: sms_sign_name and sms_template_code must be set")

    async def send(self, item: Outgoing, phone: str) -> str:
        notice = item.notice
        params = aliyun.send_sms_params(
            self._settings,
            phone,
            notice.title,
            notice.body,
            item.read_link,
            aliyun.out_id(self._link_secret, item.delivery_id),
        )
        reply = await self._client.call(self._settings.sms_base_url, "SendSms", params)
        return str(reply.get("BizId") or "")

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        return aliyun.handle_report(url, body, self._link_secrets, SmsChannel.id, aliyun.sms_report_updates)


def make_provider(settings: Settings, poster: FormPoster, clock: Clock) -> SmsProvider:
    if settings.sms_provider == "twilio":
        return TwilioSms(settings, poster, clock)
    if settings.sms_provider == "aliyun":
        return AliyunSms(settings, poster, clock)
    raise ValueError(f"sms_provider must be 'aliyun' or 'twilio', not {settings.sms_provider!r}")


class SmsChannel:
    id = "sms"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self.capabilities = Capabilities(
            max_batch=100,
            max_attempts=5,
            resend_when_ambiguous=False,
            supports_delivery_reports=True,
            rate_per_second=settings.sms_rate_per_second,
            circuit_breaker=True,  # one provider account behind every send
            per_target_limit=(settings.sms_per_phone_limit, settings.sms_per_phone_window_seconds),
            read_link=True,
            paid=True,
        )
        self._poster = FormPoster(
            settings.provider_timeout_seconds or READ_TIMEOUT_SECONDS,
            min(settings.delivery_concurrency, MAX_CONCURRENCY),
        )
        self._provider = make_provider(settings, self._poster, self._clock)

    def validate_target(self, target: Any) -> Any:
        return validate_e164(target)

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        return await send_each(batch, self.validate_target, self._provider.send, "sms")

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        return self._provider.handle_callback(url, headers, body)

    async def close(self) -> None:
        await self._poster.close()
