"""Signed read links: ``{public_url}/r/{token}`` records the read when a member opens it.

token = base64url(notice uuid bytes | member id | expiry) + "." + base64url(HMAC-SHA256)[:16 bytes].
Bound to one notice and one member, expiring; any change to either breaks the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

# One key, or during a rotation the current key then the previous ones: a token verifies under
# any of them (tokens are always made with one, the current).
Keys = bytes | Sequence[bytes]


class BadLink(Exception):
    pass


@dataclass(frozen=True, slots=True)
class LinkClaims:
    notice_id: str
    member_id: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _sign(secret: bytes, label: bytes, payload: bytes) -> str:
    mac = hmac.new(secret, label + payload, hashlib.sha256).digest()[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def _verify(secret: Keys, label: bytes, token: str, now: float, *, exact: int | None = None) -> bytes:
    """The payload of a token ``_sign`` made under ``label``: (notice uuid | expiry | ...).
    Raises ``BadLink`` for anything forged, malformed or expired."""
    try:
        body, _, mac = token.partition(".")
        payload, given = _unb64(body), _unb64(mac)
    except (ValueError, TypeError):
        raise BadLink("malformed link") from None
    size_ok = len(payload) == exact if exact is not None else len(payload) >= 25
    keys = [secret] if isinstance(secret, bytes) else list(secret)
    macs = [hmac.new(key, label + payload, hashlib.sha256).digest()[:16] for key in keys]
    if not size_ok or not any([hmac.compare_digest(mac, given) for mac in macs]):  # noqa: C419 - check all
        raise BadLink("invalid link")
    if now > struct.unpack(">Q", payload[16:24])[0]:
        raise BadLink("expired link")
    return payload


def make_token(secret: bytes, notice_id: str, member_id: str, expires_at: int) -> str:
    return _sign(secret, b"", uuid.UUID(notice_id).bytes + struct.pack(">Q", expires_at) + member_id.encode())


def read_token(secret: Keys, token: str, now: float) -> LinkClaims:
    """Verify and decode; raises ``BadLink`` for anything forged, malformed or expired."""
    payload = _verify(secret, b"", token, now)
    try:
        member_id = payload[24:].decode()
    except UnicodeDecodeError:
        raise BadLink("malformed link") from None
    expires_at = struct.unpack(">Q", payload[16:24])[0]
    return LinkClaims(str(uuid.UUID(bytes=payload[:16])), member_id, expires_at)


def read_link(public_url: str, secret: bytes, notice_id: str, member_id: str, expires_at: int) -> str:
    return f"{public_url.rstrip('/')}/r/{make_token(secret, notice_id, member_id, expires_at)}"


# The unread list a summary DING links to: bound to the summary notice (every recipient of the
# summary gets the same text), expiring. Signed under its own label, so a member's read-link
# token is never a valid list token, nor the other way round.
_LIST_LABEL = b"notifier:unread-list:"


def make_list_token(secret: bytes, summary_id: str, expires_at: int) -> str:
    return _sign(secret, _LIST_LABEL, uuid.UUID(summary_id).bytes + struct.pack(">Q", expires_at))


def read_list_token(secret: Keys, token: str, now: float) -> str:
    """The summary notice id; raises ``BadLink`` for anything forged, malformed or expired."""
    return str(uuid.UUID(bytes=_verify(secret, _LIST_LABEL, token, now, exact=24)[:16]))


def unread_list_link(public_url: str, secret: bytes, summary_id: str, expires_at: int) -> str:
    return f"{public_url.rstrip('/')}/r/unread/{make_list_token(secret, summary_id, expires_at)}"


# A console sign-in link: bound to one console_links row (whose use is recorded once), expiring.
# Signed under its own label, so no read-link or list token is a valid console token.
_CONSOLE_LABEL = b"notifier:console-link:"


def make_console_token(secret: bytes, link_id: str, expires_at: int) -> str:
    return _sign(secret, _CONSOLE_LABEL, uuid.UUID(link_id).bytes + struct.pack(">Q", expires_at))


def read_console_token(secret: bytes, token: str, now: float) -> str:
    """The console_links id; raises ``BadLink`` for anything forged, malformed or expired."""
    return str(uuid.UUID(bytes=_verify(secret, _CONSOLE_LABEL, token, now, exact=24)[:16]))


def console_link(public_url: str, secret: bytes, link_id: str, expires_at: int) -> str:
    return f"{public_url.rstrip('/')}/console/in/{make_console_token(secret, link_id, expires_at)}"
