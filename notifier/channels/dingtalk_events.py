"""DingTalk's encrypted HTTP event push, for the ``dingtalk`` channel's callback route
(``POST /v1/providers/dingtalk/callbacks``): verify, decrypt, turn the events into reports.

* ``check_url`` (the subscription handshake) and every other event: answered with the encrypted
  ``success``, nothing recorded;
* ``robot_msg_read`` (a member read a robot one-to-one message): a read report on the delivery
  ``{processQueryKey}/{userId}`` -- the provider ref the robot send recorded -- so it goes the
  one receipts path (``apply_reports`` -> ``mark_read_many``) and a replay counts once.

Refused with 403 (``InvalidSignature``), nothing stored: no callback token / AES key configured,
missing parameters, a signature that does not verify, a timestamp older (or further ahead) than
``event_max_age_seconds``. A push that verifies but cannot be decrypted (wrong AES key, another
app's message) or parsed is answered 400 -- DingTalk retries it -- with nothing stored.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from notifier.channels import dingtalk_crypto as crypto
from notifier.channels.base import CallbackReply, InvalidSignature, StatusUpdate
from notifier.clock import Clock
from notifier.settings import DingTalkSettings

READ_EVENTS = {"robot_msg_read"}


def robot_ref(process_query_key: str, user_id: str) -> str:
    """The provider ref of one member's robot message: DingTalk reports reads per (send, user)."""
    return f"{process_query_key}/{user_id}"


def _field(event: dict[str, Any], *names: str) -> str | None:
    for scope in (event, event.get("data") if isinstance(event.get("data"), dict) else {}):
        for name in names:
            value = scope.get(name) if isinstance(scope, dict) else None
            if isinstance(value, str) and value:
                return value
    return None


def event_reports(event: dict[str, Any]) -> list[StatusUpdate]:
    """The reports one decrypted event makes (pure)."""
    kind = _field(event, "EventType", "eventType")
    if kind not in READ_EVENTS:
        return []
    key, user = _field(event, "processQueryKey"), _field(event, "userId", "staffId")
    if key is None or user is None:
        return []
    return [StatusUpdate(robot_ref(key, user), "delivered", read=True)]


class DingTalkEvents:
    def __init__(self, config: DingTalkSettings, clock: Clock) -> None:
        self._token = config.callback_token.get_secret_value() if config.callback_token else None
        aes = config.callback_aes_key
        self._key = crypto.aes_key(aes.get_secret_value()) if aes is not None else None
        self._receiver = config.app_key
        self._max_age = config.event_max_age_seconds
        self._clock = clock

    def handle(self, url: str, body: bytes) -> CallbackReply:
        if self._token is None or self._key is None:
            raise InvalidSignature("DingTalk event push is not configured")
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        given, timestamp, nonce = query.get("msg_signature"), query.get("timestamp"), query.get("nonce")
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = None
        sealed = envelope.get("encrypt") if isinstance(envelope, dict) else None
        if not (given and timestamp and nonce and isinstance(sealed, str)):
            raise InvalidSignature("DingTalk event push without msg_signature, timestamp, nonce or encrypt")
        crypto.verify(self._token, timestamp, nonce, sealed, given)
        if not timestamp.isdigit() or abs(self._clock.time() - int(timestamp) / 1000) > self._max_age:
            raise InvalidSignature("DingTalk event timestamp is stale")
        try:
            event = json.loads(crypto.decrypt(self._key, self._receiver, sealed))
        except (crypto.BadEnvelope, ValueError) as exc:
            return CallbackReply([], status=400, body=f"cannot read the event: {exc}".encode()[:200])
        if not isinstance(event, dict):
            return CallbackReply([], status=400, body=b"the event is not a JSON object")
        answer = crypto.reply(self._key, self._token, self._receiver, timestamp)
        return CallbackReply(event_reports(event), body=answer, content_type="application/json")
