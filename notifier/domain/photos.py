"""What a meeting photo is: JPEG or PNG by its first bytes, at most ``MAX_PHOTO_BYTES``.

The type is read from the content itself (the magic bytes), never from the Content-Type header or
a file name: a PNG named ``.jpg`` is a PNG, and an HTML page or GIF sent as ``image/jpeg`` is
refused. The type found is the one stored and served back.
"""

from __future__ import annotations

import hashlib
from typing import Literal

MAX_PHOTO_BYTES = 5 * 1024 * 1024

PhotoType = Literal["image/jpeg", "image/png"]
ACCEPTED: tuple[PhotoType, ...] = ("image/jpeg", "image/png")

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI, then the first marker's 0xFF
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PHOTO_BYTES = len(PNG_MAGIC) + 1


def sniff(data: bytes) -> PhotoType | None:
    """The photo type the content's magic bytes name, or None for anything else."""
    if len(data) < MIN_PHOTO_BYTES:
        return None
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    if data.startswith(PNG_MAGIC):
        return "image/png"
    return None


def digest(data: bytes) -> bytes:
    """The SHA-256 a photo is stored, deduplicated and tagged (ETag) by."""
    return hashlib.sha256(data).digest()


def etag(sha256: bytes) -> str:
    """A strong entity tag: the same bytes, the same tag."""
    return '"' + sha256.hex() + '"'
