"""Shared request/response field types."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from notifier.api.problems import invalid

ID_PATTERN = r"^[^\s/]{1,128}$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]

_ID_RE = re.compile(ID_PATTERN)


class Strict(BaseModel):
    """Request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


def parse_uuid(value: str) -> str | None:
    """The canonical form of a UUID, or None: a malformed id cannot name a row (and the driver
    would fail on it before PostgreSQL could say so)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def check_path_id(value: str, field: str) -> str:
    if not _ID_RE.match(value):
        raise invalid(field, "must be 1..128 characters without whitespace or '/'")
    return value
