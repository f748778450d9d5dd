"""Member-supplied URLs (webhook targets, web-push endpoints).

One parser for every channel that posts to a URL a caller gave us: it refuses what the sender
could not use later (a malformed IPv6 literal, a port outside 1..65535, whitespace, a host no
resolver accepts, more than ``MAX_URL_BYTES`` of UTF-8) and raises nothing but ``InvalidTarget``
naming the field, so a bad target is a 422, never a 500. And the redacted form of a URL shown to
callers who may read a contact but do not own it: the URL's path and query often *are* the
secret (a Slack hook, a push endpoint's token), so only the origin is left.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from notifier.channels.base import InvalidTarget
from notifier.channels.netguard import BlockedAddress, check_literal

# Bytes, not characters: 2048 characters of CJK are 6 KB, more than a btree row may hold.
MAX_URL_BYTES = 2048
_IPV6_NETLOC = re.compile(r"\[[0-9A-Fa-f:.]+\](?::[0-9]+)?")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
REDACTED = "***"


def _host_ok(host: str, netloc: str) -> bool:
    if "[" in netloc or "]" in netloc:  # an IPv6 literal, bracketed, and nothing glued to it
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return _IPV6_NETLOC.fullmatch(netloc) is not None
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return False
    labels = ascii_host.rstrip(".").split(".")
    return len(ascii_host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def parse_target_url(
    url: object,
    field: str,
    *,
    allow_private: bool,
    what: str = "url",
    schemes: tuple[str, ...] = ("http", "https"),
    allow_fragment: bool = True,
) -> SplitResult:
    """The parts of an absolute http(s) URL we may send to, or ``InvalidTarget`` for ``field``."""
    if not isinstance(url, str) or not url or len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
        raise InvalidTarget(f"{what} must be a string of at most {MAX_URL_BYTES} bytes", field=field)
    try:
        parts = urlsplit(url)  # raises on a malformed IPv6 literal such as "http://[::1"
        host = parts.hostname
    except ValueError:
        raise InvalidTarget(f"{what} is not a valid URL: malformed host", field=field) from None
    if parts.scheme not in schemes or not host:
        scheme = "http(s)" if schemes == ("http", "https") else "/".join(schemes)
        raise InvalidTarget(f"{what} must be an absolute {scheme} URL", field=field)
    try:
        port = parts.port  # raises on a port that is not a number or exceeds 65535
    except ValueError:
        port = 0
    if not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidTarget(f"{what} must not contain whitespace or control characters", field=field)
    if port == 0:
        raise InvalidTarget(f"{what} must have a port between 1 and 65535", field=field)
    if parts.username is not None or parts.password is not None:
        raise InvalidTarget(f"{what} must not carry credentials", field=field)
    if parts.fragment and not allow_fragment:
        raise InvalidTarget(f"{what} must not carry a fragment", field=field)
    if not _host_ok(host, parts.netloc):
        raise InvalidTarget(f"{what} has an invalid host name", field=field)
    try:
        check_literal(host, allow_private)
    except BlockedAddress as exc:
        raise InvalidTarget(str(exc), field=field) from None
    return parts


def redact_url(url: object) -> str:
    """``https://hooks.example.org/***?***``: the origin stays (which service the member uses),
    credentials, path and query go (they are how such URLs carry their secrets)."""
    if not isinstance(url, str):
        return REDACTED
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = "/" if parts.path in ("", "/") else "/" + REDACTED
    query = "?" + REDACTED if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{query}"
