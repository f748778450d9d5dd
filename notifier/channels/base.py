"""The ``Channel`` contract every delivery channel implements.

A channel knows how to validate a contact target, how to build a provider payload (pure) and
how to send a batch of deliveries (I/O). It knows nothing about the database or the queue: the
dispatcher in ``notifier.workers.deliver`` hands it ``Outgoing`` items and records the
``Result`` it returns for each.

Errors, as a tree (the dispatcher maps them to delivery states)::

    ChannelError
    ├── TransientError        retry with backoff (timeouts, 5xx, 429, connection refused)
    │   │                     retry_after: seconds the provider asked us to wait, if any
    │   └── AmbiguousError    the request may have reached the provider (connection dropped
    │                         after sending): retried only by channels whose capabilities say
    │                         a resend is harmless (push with a collapse id); SMS and voice
    │                         record the delivery as ``unknown`` instead
    ├── PermanentError        record as failed, never retry (4xx, bad token, invalid number)
    │   └── InvalidTarget     the contact itself is unusable (validation, or provider says so):
    │                         the contact is disabled and not used again
    └── InvalidSignature      a provider callback failed verification (answered 403)

Whatever a provider says is hostile until proven otherwise: every ``Result`` and
``StatusUpdate`` cleans its provider-supplied fields as it is built (``provider_text``,
``provider_ref``, ``retry_delay``), so no channel can forget and no answer can make the
database refuse a whole batch (a NUL byte, an 8 KB id over the index row limit, a
``Retry-After: 1e300`` that overflows an interval).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class ChannelError(Exception):
    """Base of every channel error."""


class TransientError(ChannelError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AmbiguousError(TransientError):
    pass


class PermanentError(ChannelError):
    pass


class InvalidSignature(ChannelError):
    pass


class InvalidTarget(PermanentError):
    """A contact target is malformed or was rejected for good; ``field`` names the bad part."""

    def __init__(self, message: str, field: str = "target") -> None:
        super().__init__(message)
        self.field = field


MAX_ERROR_CHARS = 500  # an error text is for people: the start says it all
MAX_REF_CHARS = 512  # a provider id longer than this is not an id we can index (<= 2 KB of UTF-8)
MAX_RETRY_AFTER_SECONDS = 7 * 24 * 3600.0  # the dispatcher clamps further, to its retry cap


def provider_text(value: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """A provider-supplied text made storable: NUL removed (PostgreSQL text cannot hold it),
    cut to ``limit`` characters."""
    if value is None:
        return None
    value = value.replace("\x00", "")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def provider_ref(value: str | None) -> str | None:
    """A provider's id for a message, or None when it cannot serve as one (empty, or too long to
    store: a cut id would name another message)."""
    value = provider_text(value, limit=MAX_REF_CHARS + 1)
    return value if value and len(value) <= MAX_REF_CHARS else None


def echoed_delivery_id(value: object) -> int | None:
    """Our delivery id as a provider echoes it back (Aliyun's ``out_id``, a callback URL's
    ``delivery`` parameter); None unless it is a plain positive number."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    return int(text) if text.isascii() and text.isdigit() and 0 < len(text) <= 18 and int(text) > 0 else None


def retry_delay(value: float | None) -> float | None:
    """A provider's Retry-After in seconds, within [0, MAX_RETRY_AFTER_SECONDS]; None if unusable."""
    if value is None or math.isnan(value):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_SECONDS)


class Outcome(enum.StrEnum):
    SENT = "sent"  # the provider accepted it; a delivery report may follow
    DELIVERED = "delivered"  # the provider (or we) know it reached the member
    RETRY = "retry"  # transient failure: try again later
    UNKNOWN = "unknown"  # maybe sent; not safe to resend (SMS, voice): a report or escalation settles it
    FAILED = "failed"  # permanent failure


@dataclass(frozen=True, slots=True)
class Capabilities:
    max_batch: int = 500
    needs_contact: bool = True  # False: the channel reaches every member without a contact row
    delivers_on_insert: bool = False  # True: creating the delivery row *is* the delivery (in-app)
    supports_delivery_reports: bool = False
    supports_read_confirmation: bool = False
    supports_recall: bool = False
    max_attempts: int = 6
    resend_when_ambiguous: bool = True  # False for SMS / voice: an ambiguous send becomes 'unknown'
    rate_per_second: float | None = None  # per provider account, shared by every worker
    per_target_limit: tuple[int, float] | None = None  # (count, window seconds) per contact
    circuit_breaker: bool = False  # one provider account: stop hammering it when it keeps failing
    read_link: bool = False  # the message carries a signed link that records the read when opened
    paid: bool = False  # each send costs money: the units' daily budgets apply (db/budgets.py)
    # The modes whose sends cost money when the channel itself is free (a DING by SMS or phone):
    # each has its own budget, named ``<channel>.<mode>`` (``budget_key``).
    paid_modes: frozenset[str] = frozenset()
    # The channel reaches a unit as a whole (its group chat), through a unit-level contact: one
    # post per (notice, unit), never one delivery per member (the fan-out skips it).
    unit_level: bool = False


def budget_key(channel_id: str, caps: Capabilities, mode: str | None) -> str | None:
    """The budget a send of ``channel_id`` in ``mode`` is charged to (None: it is free)."""
    if caps.paid:
        return channel_id
    if mode is not None and mode in caps.paid_modes:
        return f"{channel_id}.{mode}"
    return None


@dataclass(frozen=True, slots=True)
class NoticeContent:
    notice_id: str
    kind: str
    title: str
    body: str
    # The ``mode`` each escalation step of the notice's policy gives (by step index; None: the
    # channel's default), e.g. a DingTalk DING by app, SMS or phone call.
    step_modes: tuple[str | None, ...] = ()

    @property
    def urgent(self) -> bool:
        return self.kind == "ding"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery handed to a channel: who, where, what, and which attempt this is."""

    delivery_id: int
    member_id: str
    target: Any
    notice: NoticeContent
    attempt: int
    read_link: str | None = None  # signed URL that records the read when opened (for SMS text)
    mode: str | None = None  # how the escalation step asks for it (a DING's app / sms / phone)


@dataclass(slots=True)
class Result:
    delivery_id: int
    outcome: Outcome
    error: str | None = None
    retry_after: float | None = None
    provider_ref: str | None = None
    disable_contact: bool = False  # the target is gone for good (404/410 token, invalid number)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.error = provider_text(self.error)
        self.retry_after = retry_delay(self.retry_after)
        self.provider_ref = provider_ref(self.provider_ref)

    @classmethod
    def from_error(cls, delivery_id: int, exc: ChannelError) -> Result:
        if isinstance(exc, AmbiguousError):
            return cls(delivery_id, Outcome.UNKNOWN, error=str(exc), retry_after=exc.retry_after)
        if isinstance(exc, TransientError):
            return cls(delivery_id, Outcome.RETRY, error=str(exc), retry_after=exc.retry_after)
        return cls(
            delivery_id, Outcome.FAILED, error=str(exc), disable_contact=isinstance(exc, InvalidTarget)
        )


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One provider report about one message, found by our own delivery id where the provider
    echoes it (Aliyun's ``out_id``, the callback URL we gave Twilio), else by the id the
    provider gave us (``provider_ref``)."""

    provider_ref: str | None
    state: str | None  # "sent" | "delivered" | "failed" | None (no delivery state change)
    error: str | None = None
    read: bool = False  # the member confirmed it (e.g. pressed 1 on a voice call)
    delivery_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "provider_ref", provider_ref(self.provider_ref))
        object.__setattr__(self, "error", provider_text(self.error))


@dataclass(slots=True)
class CallbackReply:
    updates: list[StatusUpdate]
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


@runtime_checkable
class Channel(Protocol):
    """What every channel provides. Extra abilities (status callbacks, recall) are opt-in protocols."""

    id: str
    capabilities: Capabilities

    def validate_target(self, target: Any) -> Any:
        """Return the normalised target, or raise ``InvalidTarget``."""
        ...

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        """Send a batch; return exactly one ``Result`` per item, in any order. Never raises
        for a single item's failure: that item's ``Result`` carries it."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ReceivesCallbacks(Protocol):
    """Opt-in: the channel accepts provider callbacks at ``POST /v1/providers/{id}/callbacks``."""

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        """Verify the provider's signature (raise ``InvalidSignature``) and parse the reports.
        ``url`` is the full public URL the provider called, query string included."""
        ...
