"""What the SMS and voice channels share, whatever the provider: E.164 targets, masking for logs
and error texts, SMS segment arithmetic, and one HTTP poster that tells "never sent" from "maybe sent".

A phone send is not blindly resent: a connection that drops after the request left (reset, server
disconnect, read timeout) raises ``AmbiguousError``; only failures that prove nothing left (connect
refused or timed out) raise a plain ``TransientError``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from notifier.channels.base import (
    AmbiguousError,
    ChannelError,
    InvalidTarget,
    Outcome,
    Outgoing,
    Result,
    TransientError,
)
from notifier.channels.http import retry_after as parse_retry_after
from notifier.logs import mask

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
CONNECT_TIMEOUT_SECONDS = 5.0


def validate_e164(target: Any) -> str:
    if not isinstance(target, str) or not E164.fullmatch(target):
        raise InvalidTarget("target must be an E.164 phone number like +8613800138000", field="target")
    return target


_DIGIT_RUN = re.compile(r"\+?\d[\d ]{6,}\d")


def redact(text: str) -> str:
    """Mask anything that looks like a phone number in a provider's message before we store it."""
    return _DIGIT_RUN.sub(lambda m: mask(m.group(0).replace(" ", "")), text)


# --- SMS segments ---------------------------------------------------------------------------------

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = "^{}\\[~]|€\f"
_GSM7 = frozenset(GSM7_BASIC) | frozenset(GSM7_EXTENDED)


def is_gsm7(text: str) -> bool:
    return all(ch in _GSM7 for ch in text)


def units(text: str, gsm7: bool) -> int:
    """Length in the units a segment is measured in: septets (GSM-7) or UTF-16 code units (UCS-2)."""
    if gsm7:
        return sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


def capacity(segments: int, gsm7: bool) -> int:
    """How many units fit in ``segments`` concatenated SMS (a multipart header takes 7 bytes each)."""
    single, multi = (160, 153) if gsm7 else (70, 67)
    return single if segments == 1 else segments * multi


def segment_count(text: str) -> int:
    gsm7 = is_gsm7(text)
    n = units(text, gsm7)
    if n <= capacity(1, gsm7):
        return 1
    per = capacity(2, gsm7) // 2
    return -(-n // per)


def clip(text: str, budget: int, gsm7: bool, ellipsis: str) -> str:
    """``text`` cut to at most ``budget`` units, ending in ``ellipsis`` when it was cut."""
    if units(text, gsm7) <= budget:
        return text
    room = budget - units(ellipsis, gsm7)
    out: list[str] = []
    used = 0
    for ch in text:
        cost = units(ch, gsm7)
        if used + cost > room:
            break
        out.append(ch)
        used += cost
    return "".join(out).rstrip() + ellipsis if room > 0 else ""


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def retry_after(headers: CIMultiDictProxy[str], now: float) -> float | None:
    return parse_retry_after(headers.get("retry-after"), now)


class FormPoster:
    """One aiohttp session per channel instance, created on first use and closed by ``close()``."""

    def __init__(self, read_timeout: float, concurrency: int) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=read_timeout
        )
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._limit: asyncio.Semaphore | None = None

    def _ensure(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._limit is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._session, self._limit

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Reply:
        """POST and read the whole reply. Raises ``TransientError`` when nothing left this process,
        ``AmbiguousError`` when the request may have reached the provider."""
        session, limit = self._ensure()
        async with limit:
            try:
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    return Reply(resp.status, resp.headers, await resp.read())
            except aiohttp.ClientConnectorError as exc:
                raise TransientError(f"connect failed: {exc.strerror or type(exc).__name__}") from None
            except aiohttp.ConnectionTimeoutError:
                raise TransientError("connect timed out") from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise AmbiguousError(f"connection lost after sending ({type(exc).__name__})") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._limit = None


log = logging.getLogger(__name__)


async def send_each(
    batch: list[Outgoing],
    validate: Callable[[Any], str],
    send: Callable[[Outgoing, str], Awaitable[str | None]],
    what: str,
) -> list[Result]:
    """Send every item concurrently, one provider request each, mapping errors per item.

    An unexpected error after a request may have left is ``unknown``: SMS and calls are never
    resent blindly. Numbers are masked in logs."""

    async def one(item: Outgoing) -> Result:
        try:
            ref = await send(item, validate(item.target))
        except ChannelError as exc:
            if isinstance(exc, AmbiguousError | InvalidTarget):
                log.warning("%s to %s: %s", what, mask(str(item.target)), exc)
            return Result.from_error(item.delivery_id, exc)
        except Exception:
            log.exception("%s to %s: unexpected error", what, mask(str(item.target)))
            return Result(item.delivery_id, Outcome.UNKNOWN, error=f"internal error while sending the {what}")
        return Result(item.delivery_id, Outcome.SENT, provider_ref=ref or None)

    return list(await asyncio.gather(*(one(item) for item in batch)))
