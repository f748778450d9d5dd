"""Twilio Programmable Messaging and Voice: REST requests, TwiML, error mapping and signed callbacks.

Requests: ``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` (or ``Calls.json``),
HTTP basic auth ``AccountSid:AuthToken``, a form body; 201 with ``{"sid": ...}`` is accepted.
Errors carry ``{"code", "message", "more_info", "status"}``.

Callbacks are signed as Twilio documents: ``X-Twilio-Signature`` = base64(HMAC-SHA1(AuthToken,
full URL + every POST parameter's name and value, sorted by name)). Like Twilio's own helpers we
also accept the URL with its default port removed or added, since proxies disagree on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

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
from notifier.channels.phone import FormPoster, Reply, one_line, redact, retry_after
from notifier.clock import Clock
from notifier.settings import TwilioSettings

API_VERSION = "2010-04-01"
# Error codes that mean the number itself is unusable for us: the contact gets disabled.
INVALID_NUMBER_CODES = {
    21211: "invalid 'To' phone number",
    21217: "phone number does not appear to be valid",
    21614: "'To' number is not a valid mobile number",
    21610: "recipient replied STOP (unsubscribed)",
}
RATE_LIMITED = 20429
TWIML_MAX_CHARS = 4000  # Twilio's limit on the Twiml parameter of a call
VOICE_TITLE_CHARS = 100
VOICE_BODY_CHARS = 300
LANGUAGE = "zh-CN"
PROMPT = "Press 1 to confirm."
THANKS = "Thank you. Confirmed."
GOODBYE = "Goodbye."
CALL_FAILED = ("busy", "no-answer", "failed", "canceled")
MESSAGE_STATES = {"sent": "sent", "delivered": "delivered", "undelivered": "failed", "failed": "failed"}


# --- signatures (pure) ----------------------------------------------------------------------------


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    pairs = sorted(set(params))  # by name, then value (repeated names are all signed)
    data = url + "".join(name + value for name, value in pairs)
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _url_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    variants = [url, urlunsplit(parts._replace(netloc=host))]
    if parts.port is None and default is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
    return variants


def verify_signature(auth_token: str, url: str, params: Sequence[tuple[str, str]], signature: str) -> bool:
    given = signature.encode()
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, params).encode(), given)
        for candidate in _url_variants(url)
    )


def header(headers: dict[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def verified_params(auth_token: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The form parameters of a callback, or ``InvalidSignature``."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise InvalidSignature("twilio callback: unreadable form body") from None
    signature = header(headers, "x-twilio-signature")
    if not signature or not verify_signature(auth_token, url, pairs, signature):
        raise InvalidSignature("twilio callback: bad X-Twilio-Signature")
    return dict(pairs)


# --- requests (pure) ------------------------------------------------------------------------------


def with_delivery(url: str, delivery_id: int) -> str:
    """A callback URL that names our delivery. Twilio calls it back exactly as given and signs
    it, so the id is as authentic as the report -- and it settles a send whose answer was lost."""
    return f"{url}{'&' if '?' in url else '?'}delivery={delivery_id}"


def delivery_of(url: str) -> int | None:
    return echoed_delivery_id(parse_qs(urlsplit(url).query).get("delivery", [""])[0])


def resource_url(base_url: str, account_sid: str, resource: str) -> str:
    return f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}/{resource}.json"


def basic_auth(account_sid: str, auth_token: str) -> str:
    return "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()


def _form(settings: TwilioSettings, pairs: list[tuple[str, str]]) -> tuple[dict[str, str], bytes]:
    token = settings.auth_token.get_secret_value() if settings.auth_token else ""
    headers = {
        "authorization": basic_auth(settings.account_sid, token),
        "content-type": "application/x-www-form-urlencoded",
        "accept": "application/json",
        "user-agent": "notifier-twilio/1",
    }
    return headers, urlencode(pairs).encode()


def build_message_request(
    settings: TwilioSettings, to: str, text: str, status_callback: str
) -> tuple[str, dict[str, str], bytes]:
    # A Messaging Service sid ("MG…") picks the sender from its pool; otherwise From is a number.
    sender = ("MessagingServiceSid" if settings.sms_from.startswith("MG") else "From", settings.sms_from)
    headers, body = _form(settings, [("To", to), sender, ("Body", text), ("StatusCallback", status_callback)])
    return resource_url(settings.base_url, settings.account_sid, "Messages"), headers, body


def build_call_request(
    settings: TwilioSettings, to: str, twiml: str, status_callback: str
) -> tuple[str, dict[str, str], bytes]:
    headers, body = _form(
        settings,
        [
            ("To", to),
            ("From", settings.voice_from),
            ("Twiml", twiml),
            ("StatusCallback", status_callback),
            ("StatusCallbackEvent", "completed"),
            ("StatusCallbackMethod", "POST"),
        ],
    )
    return resource_url(settings.base_url, settings.account_sid, "Calls"), headers, body


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"


def _sentence(text: str) -> str:
    text = one_line(text)
    if not text or text[-1] in ".。!！?？":
        return text
    return text + ("。" if ord(text[-1]) >= 0x2E80 else ".")  # a full stop the TTS voice reads as one


def _say(text: str) -> str:
    return f'<Say language="{LANGUAGE}">{escape(text)}</Say>'


def _gather(text: str, action_url: str) -> str:
    return f'<Gather numDigits="1" action={quoteattr(action_url)} method="POST">{_say(text)}</Gather>'


def call_twiml(title: str, body: str, action_url: str) -> str:
    """The notice read out twice, each time listening for "1"; then goodbye. At most 4000 chars."""
    budget = VOICE_BODY_CHARS
    title = _cut(one_line(title), VOICE_TITLE_CHARS)
    while True:
        spoken = _cut(one_line(body), budget)
        message = " ".join(s for s in (_sentence(title), _sentence(spoken), PROMPT) if s)
        twiml = f"<Response>{_gather(message, action_url) * 2}{_say(GOODBYE)}</Response>"
        if len(twiml) <= TWIML_MAX_CHARS or budget == 0:
            return twiml
        budget = max(0, budget - (len(twiml) - TWIML_MAX_CHARS) // 2 - 1)


def reprompt_twiml(action_url: str) -> str:
    return f"<Response>{_gather(PROMPT, action_url)}{_say(GOODBYE)}</Response>"


def thanks_twiml() -> str:
    return f"<Response>{_say(THANKS)}<Hangup/></Response>"


# --- responses (pure) -----------------------------------------------------------------------------


def error_for(status: int, payload: dict[str, Any], retry_after_seconds: float | None) -> ChannelError:
    code = payload.get("code")
    text = f"twilio HTTP {status}" + (f" code {code}" if code else "")
    if payload.get("message"):
        text += f": {redact(str(payload['message']))}"
    if code in INVALID_NUMBER_CODES:
        return InvalidTarget(text, field="target")
    if status == 429 or code == RATE_LIMITED:
        return TransientError(text, retry_after=retry_after_seconds)
    if status >= 500:
        return TransientError(text, retry_after=retry_after_seconds)
    return PermanentError(text)


def parse_reply(reply: Reply, now: float) -> str:
    """The new resource's sid, or raise the mapped error."""
    try:
        payload = json.loads(reply.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = {}
    if 200 <= reply.status < 300:
        sid = payload.get("sid")
        if not isinstance(sid, str):
            raise AmbiguousError(f"twilio HTTP {reply.status} without a sid")
        return sid
    raise error_for(reply.status, payload, retry_after(reply.headers, now))


# --- callbacks (pure) -----------------------------------------------------------------------------


def message_status_updates(params: dict[str, str], delivery_id: int | None = None) -> list[StatusUpdate]:
    sid, status = params.get("MessageSid") or params.get("SmsSid"), params.get("MessageStatus", "")
    state = MESSAGE_STATES.get(status)
    if (not sid and delivery_id is None) or state is None:
        return []  # queued / sending / accepted: nothing to record yet
    error = None
    if state == "failed":
        error = status + (f" (error {params['ErrorCode']})" if params.get("ErrorCode") else "")
    return [StatusUpdate(sid or None, state, error=error, delivery_id=delivery_id)]


def call_callback(event: str, params: dict[str, str], url: str) -> CallbackReply:
    """``gather``: the member pressed a key during the call; ``status``: the call ended."""
    sid = params.get("CallSid", "")
    ours = delivery_of(url)
    if event == "gather":
        if not sid:
            return CallbackReply([], status=400)
        if params.get("Digits") == "1":
            update = StatusUpdate(sid, "delivered", read=True, delivery_id=ours)
            return CallbackReply([update], 200, thanks_twiml().encode(), "text/xml")
        return CallbackReply([], 200, reprompt_twiml(url).encode(), "text/xml")
    if event == "status":
        status = params.get("CallStatus", "")
        if not sid:
            return CallbackReply([], status=400)
        if status == "completed":
            return CallbackReply([StatusUpdate(sid, "delivered", delivery_id=ours)])
        if status in CALL_FAILED:
            return CallbackReply([StatusUpdate(sid, "failed", error=status, delivery_id=ours)])
        return CallbackReply([])
    return CallbackReply([], status=400, body=b"unknown event")


# --- client (I/O) ---------------------------------------------------------------------------------


class TwilioClient:
    def __init__(self, settings: TwilioSettings, poster: FormPoster, clock: Clock) -> None:
        if not settings.account_sid or settings.auth_token is None:
            raise ValueError("twilio: account_sid and auth_token must be set")
        self.settings = settings
        self.auth_token = settings.auth_token.get_secret_value()
        self._poster = poster
        self._clock = clock

    async def create(self, request: tuple[str, dict[str, str], bytes]) -> str:
        url, headers, body = request
        reply = await self._poster.post(url, headers, body)
        return parse_reply(reply, self._clock.time())

    def verified_params(self, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        return verified_params(self.auth_token, url, headers, body)
