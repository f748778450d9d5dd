"""Aliyun (Alibaba Cloud) SMS and voice: ``SendSms`` on dysmsapi and ``SingleCallByTts`` on dyvmsapi.

Both are RPC-style APIs: every parameter (common + action) goes in one form, signed with RPC
signature v1::

    StringToSign = "POST" + "&" + percentEncode("/") + "&" + percentEncode(CanonicalizedQueryString)
    Signature    = base64(HMAC-SHA1(key=AccessKeySecret + "&", StringToSign))

where CanonicalizedQueryString is ``k=v`` pairs sorted by key and joined by ``&``, keys and values
percent-encoded per RFC 3986 (space -> %20, ``*`` -> %2A, ``~`` kept). A business error comes back
as HTTP 200 with ``Code`` != ``OK``; gateway errors (signature, timestamp, nonce) as 4xx.

Delivery reports are Aliyun's "HTTP batch push" (SmsReport / VoiceReport): a JSON array POSTed to
the URL configured in the Aliyun console. The push carries no signature, so that URL holds a secret
``token`` (HMAC-SHA256 of the channel id under ``settings.link_secret``): see ``report_url``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from notifier.channels.base import (
    AmbiguousError,
    CallbackReply,
    ChannelError,
    InvalidSignature,
    InvalidTarget,
    PermanentError,
    StatusUpdate,
    TransientError,
    echoed_delivery_id,
)
from notifier.channels.phone import FormPoster, one_line, redact
from notifier.clock import Clock
from notifier.settings import AliyunSettings

API_VERSION = "2017-05-25"
# Aliyun rejects template variables over these lengths (notification templates: 1..35 characters).
SMS_VARIABLE_CHARS = 35
TTS_TITLE_CHARS = 35
TTS_CONTENT_CHARS = 200
BUSINESS_LIMIT_RETRY_SECONDS = 60.0  # per-number flow control counts per minute / hour / day

INVALID_NUMBER = "isv.MOBILE_NUMBER_ILLEGAL"
THROTTLED = ("isv.BUSINESS_LIMIT_CONTROL", "Throttling")
REPORT_ACK = json.dumps({"code": 0, "msg": "接收成功"}, ensure_ascii=False).encode()

# VoiceReport status codes (呼叫结果状态码) for a single TTS call.
VOICE_ANSWERED = {"200000": "listened to the whole message", "200001": "hung up before the end"}
VOICE_FAILED = {
    "200002": "busy",
    "200003": "no answer",
    "200004": "number does not exist",
    "200005": "unreachable (rejected)",
    "200006": "playback failed",
    "200007": "out of service area",
    "200010": "powered off",
    "200011": "service suspended",
    "200012": "call restricted",
    "200117": "caller id not allowed",
    "200118": "carrier time-of-day restriction",
    "200119": "carrier frequency restriction",
    "200121": "too many concurrent calls",
    "999999": "system error",
    "500": "carrier error",
    "400": "network busy",
    "482": "callee unavailable",
}
# VoiceCallReport progress codes (calling, ringing, answered, ended, DTMF): no final state yet.
VOICE_PROGRESS = {"200100", "200101", "200102", "200103", "200201", "300000"}


# --- signing (pure) -------------------------------------------------------------------------------


def percent_encode(value: str) -> str:
    # quote() keeps only A-Z a-z 0-9 - _ . ~ with safe="": exactly Aliyun's POP encoding.
    return quote(value, safe="")


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign(secret: str, params: Mapping[str, str], method: str = "POST") -> str:
    """RPC signature v1 over every parameter except ``Signature`` itself."""
    unsigned = {k: v for k, v in params.items() if k != "Signature"}
    mac = hmac.new(f"{secret}&".encode(), string_to_sign(method, unsigned).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_rpc_request(
    base_url: str,
    access_key_id: str,
    secret: str,
    action: str,
    params: Mapping[str, str],
    now: float,
    nonce: str,
) -> tuple[str, dict[str, str], bytes]:
    """The URL, headers and signed form body of one RPC call (pure: no I/O)."""
    form = {
        "AccessKeyId": access_key_id,
        "Action": action,
        "Format": "JSON",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": nonce,
        "SignatureVersion": "1.0",
        "Timestamp": timestamp(now),
        "Version": API_VERSION,
        **params,
    }
    form["Signature"] = sign(secret, form)
    body = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in form.items()).encode()
    headers = {
        "content-type": "application/x-www-form-urlencoded; charset=utf-8",
        "accept": "application/json",
        "user-agent": "notifier-aliyun/1",
    }
    return base_url.rstrip("/") + "/", headers, body


# --- payloads (pure) ------------------------------------------------------------------------------


def national_number(e164: str) -> str:
    """Aliyun's number format: mainland numbers without +86, others as country code + number."""
    return e164[3:] if e164.startswith("+86") else e164[1:]


def _clip(text: str, limit: int) -> str:
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _json(value: Mapping[str, str]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def send_sms_params(
    settings: AliyunSettings, phone: str, title: str, body: str, link: str | None, out_id: str
) -> dict[str, str]:
    """SendSms for a template such as ``${title}：${content} 详情 ${link}`` (approved by Aliyun)."""
    variables = {
        "title": _clip(title, SMS_VARIABLE_CHARS),
        "content": _clip(body, SMS_VARIABLE_CHARS),
        "link": link or "",
    }
    return {
        "PhoneNumbers": national_number(phone),
        "SignName": settings.sms_sign_name,
        "TemplateCode": settings.sms_template_code,
        "TemplateParam": _json(variables),
        "OutId": out_id,
    }


def tts_call_params(
    settings: AliyunSettings, phone: str, title: str, body: str, out_id: str
) -> dict[str, str]:
    """SingleCallByTts for a TTS template with two variables, e.g. ``通知：${title}。${content}``."""
    variables = {"title": _clip(title, TTS_TITLE_CHARS), "content": _clip(body, TTS_CONTENT_CHARS)}
    return {
        "CalledShowNumber": settings.voice_show_number,
        "CalledNumber": national_number(phone),
        "TtsCode": settings.voice_tts_code,
        "TtsParam": _json(variables),
        "OutId": out_id,
    }


# --- responses (pure) -----------------------------------------------------------------------------


def error_for(status: int, payload: Mapping[str, Any]) -> ChannelError:
    """Map a non-OK answer to the error tree."""
    code = str(payload.get("Code") or f"HTTP {status}")
    text = f"aliyun {code}: {redact(str(payload.get('Message') or ''))}".rstrip(": ")
    if code == INVALID_NUMBER:
        return InvalidTarget(text, field="target")
    if code.startswith(THROTTLED):
        retry = BUSINESS_LIMIT_RETRY_SECONDS if code.startswith("isv.") else None
        return TransientError(text, retry_after=retry)
    if status >= 500 or code.startswith("isp.") or code in ("SignatureNonceUsed", "ServiceUnavailable"):
        return TransientError(text)
    return PermanentError(text)


def parse_reply(status: int, body: bytes) -> dict[str, Any]:
    """The JSON of an OK answer, or raise the mapped error."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        if status >= 500:
            raise TransientError(f"aliyun HTTP {status}")
        if 200 <= status < 300:
            # Accepted by something, but we cannot tell what happened: do not resend.
            raise AmbiguousError(f"aliyun HTTP {status} with an unreadable body")
        raise PermanentError(f"aliyun HTTP {status}")
    if 200 <= status < 300 and payload.get("Code") == "OK":
        return payload
    raise error_for(status, payload)


# --- report push (pure) ---------------------------------------------------------------------------


def callback_token(link_secret: str, channel_id: str) -> str:
    mac = hmac.new(link_secret.encode(), f"aliyun-report:{channel_id}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def _out_mac(link_secret: str, delivery_id: int) -> str:
    return hmac.new(link_secret.encode(), f"aliyun-out:{delivery_id}".encode(), hashlib.sha256).hexdigest()[
        :16
    ]


def out_id(link_secret: str, delivery_id: int) -> str:
    """The ``OutId`` we give Aliyun: our delivery id and a MAC of it. The report push carries no
    signature of its own (only the URL's token), and delivery ids are sequential: an echoed id is
    believed only with its MAC, so a leaked report URL cannot settle deliveries by guessing ids."""
    return f"{delivery_id}.{_out_mac(link_secret, delivery_id)}"


def _all(link_secret: str | Sequence[str]) -> list[str]:
    """One secret, or during a rotation the current then the previous: any of them verifies."""
    return [link_secret] if isinstance(link_secret, str) else list(link_secret)


def echoed_out_id(link_secret: str | Sequence[str], value: object) -> int | None:
    """Our delivery id from an echoed ``OutId``; None unless its MAC verifies."""
    if not isinstance(value, str):
        return None
    ours, _, mac = value.partition(".")
    delivery_id = echoed_delivery_id(ours)
    if delivery_id is None or not any(
        [hmac.compare_digest(mac.encode(), _out_mac(s, delivery_id).encode()) for s in _all(link_secret)]  # noqa: C419
    ):
        return None
    return delivery_id


def report_url(public_url: str, link_secret: str, channel_id: str) -> str:
    """The receiving address to configure in the Aliyun console for this channel's reports."""
    token = callback_token(link_secret, channel_id)
    return f"{public_url.rstrip('/')}/v1/providers/{channel_id}/callbacks?token={token}"


def verify_token(url: str, link_secret: str | Sequence[str], channel_id: str) -> None:
    given = parse_qs(urlsplit(url).query).get("token", [""])
    expected = [callback_token(s, channel_id).encode() for s in _all(link_secret)]
    if len(given) != 1 or not any([hmac.compare_digest(given[0].encode(), e) for e in expected]):  # noqa: C419
        raise InvalidSignature("aliyun report: missing or wrong token")


def _reports(body: bytes) -> list[dict[str, Any]] | None:
    try:
        items = json.loads(body)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    return items


def _reply(updates: list[StatusUpdate] | None) -> CallbackReply:
    if updates is None:
        bad = json.dumps({"code": 1, "msg": "malformed report"}).encode()
        return CallbackReply([], status=400, body=bad, content_type="application/json")
    return CallbackReply(updates, status=200, body=REPORT_ACK, content_type="application/json")


def sms_report_updates(items: list[dict[str, Any]], link_secret: str | Sequence[str]) -> list[StatusUpdate]:
    """SmsReport items; ``out_id`` echoes our signed delivery id (it settles a send whose answer
    was lost)."""
    updates = []
    for item in items:
        biz_id, ours = item.get("biz_id"), echoed_out_id(link_secret, item.get("out_id"))
        if not biz_id and ours is None:
            continue
        ref = str(biz_id) if biz_id else None
        if item.get("success") in (True, "true"):
            updates.append(StatusUpdate(ref, "delivered", delivery_id=ours))
        else:
            reason = f"{item.get('err_code') or 'UNKNOWN'}: {item.get('err_msg') or ''}".rstrip(": ")
            updates.append(StatusUpdate(ref, "failed", error=redact(reason), delivery_id=ours))
    return updates


def voice_report_updates(items: list[dict[str, Any]], link_secret: str | Sequence[str]) -> list[StatusUpdate]:
    updates = []
    for item in items:
        call_id, code = item.get("call_id"), str(item.get("status_code") or "")
        ours = echoed_out_id(link_secret, item.get("out_id"))
        if (not call_id and ours is None) or not code or code in VOICE_PROGRESS:
            continue
        ref = str(call_id) if call_id else None
        if code in VOICE_ANSWERED:
            updates.append(StatusUpdate(ref, "delivered", delivery_id=ours))
        else:
            reason = VOICE_FAILED.get(code) or str(item.get("status_msg") or "call failed")
            updates.append(StatusUpdate(ref, "failed", error=f"{code} {redact(reason)}", delivery_id=ours))
    return updates


def handle_report(
    url: str,
    body: bytes,
    link_secret: str | Sequence[str],
    channel_id: str,
    parse: Callable[[list[dict[str, Any]], str | Sequence[str]], list[StatusUpdate]],
) -> CallbackReply:
    verify_token(url, link_secret, channel_id)
    items = _reports(body)
    return _reply(None if items is None else parse(items, link_secret))


# --- client (I/O) ---------------------------------------------------------------------------------


class AliyunClient:
    def __init__(
        self,
        settings: AliyunSettings,
        poster: FormPoster,
        clock: Clock,
        nonce: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        if not settings.access_key_id or settings.access_key_secret is None:
            raise ValueError("aliyun: access_key_id and access_key_secret must be set")
        self._settings = settings
        self._secret = settings.access_key_secret.get_secret_value()
        self._poster = poster
        self._clock = clock
        self._nonce = nonce

    async def call(self, base_url: str, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        url, headers, body = build_rpc_request(
            base_url,
            self._settings.access_key_id,
            self._secret,
            action,
            params,
            self._clock.time(),
            self._nonce(),
        )
        reply = await self._poster.post(url, headers, body)
        return parse_reply(reply.status, reply.body)
