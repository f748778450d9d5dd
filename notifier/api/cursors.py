"""Keyset cursors: opaque to callers (base64url of our own text), checked strictly when they come
back -- a cursor this API did not hand out is a 422 naming the field, never a 500."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from notifier.api.problems import invalid

K = TypeVar("K")
NOT_OURS = "not a cursor this API returned"


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(value: str | None, field: str = "query.cursor") -> str | None:
    if value is None:
        return None
    try:
        text = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid(field, NOT_OURS) from None
    if not text or "\x00" in text:  # our cursors are never empty, and PostgreSQL text cannot hold NUL
        raise invalid(field, NOT_OURS)
    return text


def encode_time_cursor(at: datetime, key: object) -> str:
    """The cursor after a row ordered by (timestamp, key)."""
    return encode_cursor(f"{at.isoformat()}|{key}")


def decode_time_cursor(
    value: str | None, key: Callable[[str], K | None], field: str = "query.cursor"
) -> tuple[datetime, K] | None:
    """(timestamp, key) from a cursor of ``encode_time_cursor``; ``key`` parses the key part (None:
    not a key). None when no cursor was given."""
    raw = decode_cursor(value, field)
    if raw is None:
        return None
    at, _, rest = raw.rpartition("|")
    try:
        when: datetime | None = datetime.fromisoformat(at)
    except ValueError:
        when = None
    parsed = key(rest)
    if when is None or when.tzinfo is None or parsed is None:
        raise invalid(field, NOT_OURS)
    return when, parsed


def event_id(text: str) -> int | None:
    """A numeric row id as a cursor key."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None
