"""HTTP details every provider channel shares: reading ``Retry-After`` and telling, from an
aiohttp error, whether a request may have reached the provider."""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime

import aiohttp

from notifier.channels.base import AmbiguousError, ChannelError, TransientError


def retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def transport_error(exc: Exception) -> ChannelError:
    """Refused or unreachable: nothing was sent (retry). Dropped mid-exchange: it may have
    arrived (ambiguous: the channel's capabilities decide whether to resend)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransientError(f"connect failed: {exc.strerror}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return AmbiguousError(f"connection lost after sending: {type(exc).__name__}")
    return TransientError(type(exc).__name__)
