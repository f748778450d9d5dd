"""Shared request/response field types."""

from __future__ import annotations

import functools
import re
import uuid
from datetime import time
from typing import Annotated, Any
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from notifier.api.problems import invalid
from notifier.channels.phone import E164

# Patterns are written for the JSON Schema (ECMA-262: "$" is the end of the text); Python checks
# them with fullmatch, since Python's "$" also matches before a trailing newline.
# Not "\s": Python's re, pydantic's Rust regex and the ECMA regex of JSON Schema each read it as
# a different set (U+0085, U+001C..U+001F, U+FEFF), so the document allowed ids the server refused.
# Spelled out, the set is the same everywhere: whitespace, control characters and '/'.
_NOT_ID_CHARS = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff/"
ID_PATTERN = rf"^[^{_NOT_ID_CHARS}]{{1,128}}$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]

_ID_RE = re.compile(ID_PATTERN)
CLOCK_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"
_CLOCK_RE = re.compile(CLOCK_PATTERN)


@functools.cache
def _zone_names() -> frozenset[str]:
    # The canonical IANA names: unlike ZoneInfo(), this refuses "localtime", "posixrules" and
    # file paths, which PostgreSQL does not know and would fail on at send time.
    return frozenset(
        z
        for z in available_timezones()
        if z not in ("localtime", "posixrules", "Factory") and not z.startswith(("posix/", "right/"))
    )


def _timezone(value: str) -> str:
    if value not in _zone_names():
        raise ValueError("must be an IANA time zone such as Asia/Shanghai")
    return value


def _clock(value: Any) -> time:
    """A local wall-clock time given as "HH:MM" (a ``time`` passes through: rows read back)."""
    if isinstance(value, time):
        return value
    if isinstance(value, str) and _CLOCK_RE.fullmatch(value):
        return time(int(value[:2]), int(value[3:]))
    raise ValueError("must be a local time HH:MM such as 08:00")


def _phone(value: str) -> str:
    if not E164.fullmatch(value):
        raise ValueError("must be an E.164 number such as +8613800138000")
    return value


EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"
_EMAIL_RE = re.compile(EMAIL_PATTERN)


def _email(value: str) -> str:
    if len(value) > 254 or not _EMAIL_RE.fullmatch(value):
        raise ValueError("must be an email address")
    return value


# The channels' own rule (the SMS and voice targets), so a member's phone is one a call can use.
Phone = Annotated[
    str,
    AfterValidator(_phone),
    WithJsonSchema({"type": "string", "pattern": E164.pattern, "examples": ["+8613800138000"]}),
]
Email = Annotated[
    str,
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN}),
]

TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timezone)]
# A wall-clock time of day: "HH:MM" on the wire, ``datetime.time`` in Python and PostgreSQL.
ClockTime = Annotated[
    time,
    BeforeValidator(_clock),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": CLOCK_PATTERN, "examples": ["08:00"]}),
]


class Strict(BaseModel):
    """Request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class QuietHours(Strict):
    """Local hours in which nothing but urgent notices goes out; may wrap midnight (22:00-07:00)."""

    start: ClockTime
    end: ClockTime

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


def parse_uuid(value: str) -> str | None:
    """The canonical form of a UUID, or None: a malformed id cannot name a row (and the driver
    would fail on it before PostgreSQL could say so)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def check_path_id(value: str, field: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise invalid(field, "must be 1..128 characters without whitespace or '/'")
    return value


# Date and time, as the document's format: date-time says; pydantic alone would also read "0.5"
# (a query parameter is always text) as seconds since 1970.
_NUMBER = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str) or _NUMBER.fullmatch(value):
        raise ValueError("must be an ISO 8601 timestamp with a UTC offset, e.g. 2025-01-01T08:00:00+08:00")
    return value


# ISO 8601 text with an offset; a naive timestamp (no offset) is refused, never guessed.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


def _distinct_channels(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("channels must not repeat")
    return value


# A send's channels, in the caller's order of preference, each once.
Channels = Annotated[list[str], AfterValidator(_distinct_channels)]
