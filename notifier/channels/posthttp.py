"""A small HTTP/1.1 client for one thing: POST a body on a kept-alive connection, read the status.

The webhook channel sends one request per recipient; a general client's machinery per request
(request and response objects, header multidicts, payload wrappers, tracing hooks, timers) cost
about as much CPU as everything else the worker does per delivery (issue 13: a profile of one
worker on 20,000 webhook deliveries spent most of it inside aiohttp's client). This one writes the
request in one ``transport.write`` and parses the answer in ``data_received`` as it arrives:
status line, the few headers it needs (Content-Length, Transfer-Encoding, Connection,
Retry-After), the body skipped up to a cap. Connections are pooled per (scheme, host, port) and
reused while the server keeps them alive; a reused connection that turns out to be closed before
any answer byte arrived is replaced once (a webhook carries its ``webhook-id``: a resend is safe).

Names are resolved through the SSRF guard (``netguard.GuardedResolver``) on every new connection;
redirects are never followed; ``https`` verifies certificates with the system's default context.
Credentials in a URL (``https://user:pass@host/...``) go as HTTP Basic authorization, as aiohttp
sent them; never on the request line nor in Host, and this module logs nothing.

Idle connections: reused newest first; one unused for ``IDLE_SECONDS`` is closed. After a burst
a host keeps at most ``MAX_IDLE_PER_HOST`` of them: the others are closed ``SPARE_SECONDS`` after
their answer unless used again by then (the next batch, milliseconds later, reuses them rather
than connecting again). A sweep on a timer does this, also for hosts never posted to again.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import SplitResult, quote, unquote, urlsplit

from notifier.channels.netguard import GuardedResolver, check_literal

MAX_HEAD_BYTES = 64 * 1024
IDLE_SECONDS = 15.0  # a pooled connection unused this long is closed rather than reused
# Kept idle per host once a burst is over (per worker process): enough for a receiver's steady
# trickle, without holding a small receiver's sockets (a thread each on many servers) for
# IDLE_SECONDS after every burst -- one process may have delivery_concurrency (256) at once.
MAX_IDLE_PER_HOST = 16
SPARE_SECONDS = 1.0  # how long the idle connections beyond that cap wait for the next batch
_NO_BODY = frozenset({204, 304})
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as this client reads it."""


class ServerDisconnectedError(ConnectionError):
    """The connection closed before the whole answer arrived."""


@dataclass(slots=True)
class Answer:
    status: int
    retry_after: str | None


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used_at = time.monotonic()
        self.requests = 0
        self._buf = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._got_bytes = False
        self._head: tuple[int, str | None, bool] | None = None  # status, retry-after, keep-alive
        self._length: int | None = None  # body bytes still expected (Content-Length)
        self._chunked = False
        self._until_close = False
        self._body_seen = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head is not None and self._until_close:
            self._finish(keep=False)
            return
        waiter.set_exception(ServerDisconnectedError("the server closed the connection"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted any more
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._waiter.set_exception(exc)
            self.close()

    # -- the request ---------------------------------------------------------------------------
    @property
    def answered_anything(self) -> bool:
        return self._got_bytes

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._got_bytes = False
        self._buf.clear()
        self._head = None
        self._length = None
        self._chunked = self._until_close = False
        self._body_seen = 0
        self.requests += 1
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self, keep: bool) -> None:
        assert self._waiter is not None and self._head is not None
        status, retry_after, keep_alive = self._head
        if not (keep and keep_alive) or self._buf:
            self.close()
        self.used_at = time.monotonic()
        if not self._waiter.done():
            self._waiter.set_result(Answer(status, retry_after))

    def _parse(self) -> None:
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                return
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            status = self._read_head(head)
            if status is None:  # 1xx: another head follows
                self._parse()
                return
        if self._chunked:
            self._read_chunks()
        elif self._length is not None:
            take = min(self._length, len(self._buf))
            del self._buf[:take]
            self._length -= take
            if self._length == 0:
                self._finish(keep=True)
        elif self._until_close:
            self._body_seen += len(self._buf)
            self._buf.clear()
            if self._body_seen > self._max_body:
                self._finish(keep=False)
        else:
            self._finish(keep=True)

    def _read_head(self, head: bytes) -> int | None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
            raise ProtocolError("not an HTTP/1.x status line")
        if not parts[1].isdigit():
            raise ProtocolError("not an HTTP/1.x status line")
        status = int(parts[1])
        if 100 <= status < 200:
            return None
        length, chunked, connection, retry_after = _headers(lines[1:])
        keep_alive = connection == b"keep-alive" or (parts[0] == b"HTTP/1.1" and connection != b"close")
        self._head = (status, retry_after, keep_alive)
        if status in _NO_BODY:
            self._length = 0
        elif chunked:
            self._chunked = True
        elif length is not None:
            if length > self._max_body:  # the status is the answer: not worth reading
                self._head = (status, retry_after, False)
                self._length = 0
            else:
                self._length = length
        else:
            self._until_close = True
            self._head = (status, retry_after, False)
        return status

    def _read_chunks(self) -> None:
        while True:
            if self._length is not None and self._length > 0:  # inside a chunk (+ its CRLF)
                take = min(self._length, len(self._buf))
                del self._buf[:take]
                self._length -= take
                if self._length:
                    return
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                if len(self._buf) > 1024:
                    raise ProtocolError("chunk size line too long")
                return
            size_text = bytes(self._buf[:line_end]).split(b";", 1)[0].strip()
            if size_text == b"":  # the CRLF after a chunk's data, or a trailer's end
                del self._buf[: line_end + 2]
                if self._length == -1:  # the blank line after the last chunk (and trailers)
                    self._finish(keep=True)
                    return
                continue
            if self._length == -1:  # a trailer line: skipped
                del self._buf[: line_end + 2]
                continue
            if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise ProtocolError("invalid chunk size")  # hex digits only: no sign, prefix or '_'
            size = int(size_text, 16)
            del self._buf[: line_end + 2]
            if size == 0:
                self._length = -1  # trailers, then a blank line
                continue
            self._body_seen += size
            if self._body_seen > self._max_body:
                self._length = 0
                self._finish(keep=False)
                return
            self._length = size


def _headers(lines: list[bytes]) -> tuple[int | None, bool, bytes | None, str | None]:
    """(Content-Length, chunked, the Connection token, Retry-After) of a response head."""
    length: int | None = None
    coding: bytes | None = None  # the Transfer-Encoding list, lower case
    connection: bytes | None = None
    retry_after: str | None = None
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError("malformed header line")
        key = name.strip().lower()
        if key == b"content-length":
            text = value.strip()
            if not text.isdigit() or (length is not None and int(text) != length):
                raise ProtocolError("invalid Content-Length")
            length = int(text)
        elif key == b"transfer-encoding":
            # Several headers are one list; chunked must be the last coding (RFC 9112 6.1).
            codings = (coding if coding is not None else b"") + b"," + value.strip().lower()
            coding = codings.strip(b", ")
        elif key == b"connection":
            connection = value.strip().lower()
        elif key == b"retry-after":
            retry_after = value.strip().decode("latin-1")
    if coding is None:
        return length, False, connection, retry_after
    # A Transfer-Encoding overrides Content-Length; a response with both is read as chunked and
    # its connection not reused (RFC 9112 6.3: it may be a smuggling attempt). Chunked not last:
    # the body ends when the connection closes.
    chunked = coding.rsplit(b",", 1)[-1].strip() == b"chunked"
    if length is not None or not chunked:
        connection = b"close"
    return None, chunked, connection, retry_after


def basic_authorization(parts: SplitResult) -> str:
    """The ``Authorization`` value for a URL's user information (percent-decoded, UTF-8)."""
    user = unquote(parts.username or "")
    if ":" in user:  # RFC 7617: the user-id cannot hold a colon (the password may)
        raise ValueError("the user name in the URL holds ':'")
    secret = f"{user}:{unquote(parts.password or '')}".encode()
    return "Basic " + base64.b64encode(secret).decode("ascii")


class PostClient:
    """POST bodies to http(s) URLs over pooled keep-alive connections."""

    def __init__(
        self,
        allow_private: bool,
        max_body: int,
        *,
        idle_per_host: int = MAX_IDLE_PER_HOST,
        idle_seconds: float = IDLE_SECONDS,
        spare_seconds: float = SPARE_SECONDS,
    ) -> None:
        self._resolver = GuardedResolver(allow_private)
        self._allow_private = allow_private
        self._max_body = max_body
        self._idle_per_host = idle_per_host
        self._idle_seconds = idle_seconds
        self._spare_seconds = spare_seconds
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}  # newest last
        self._sweep: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """The status (and Retry-After) of POSTing ``body`` to ``url``. Raises OSError (connect),
        ``ServerDisconnectedError``, ``ProtocolError``; the caller bounds the time."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in ("http", "https") or not host:
            raise ValueError("not an http(s) URL")
        if not host.isascii():  # an internationalised name: its ASCII (IDNA) form on the wire
            host = host.encode("idna").decode("ascii")
        port = parts.port or (443 if scheme == "https" else 80)
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_PATH_SAFE)
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None and parts.port != (443 if scheme == "https" else 80):
            host_header += f":{parts.port}"
        lines = [f"POST {path} HTTP/1.1", f"host: {host_header}"]
        if "@" in parts.netloc and not any(k.lower() == "authorization" for k in headers):
            lines.append(f"authorization: {basic_authorization(parts)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"content-length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        key = (scheme, host, port)
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(key, conn, request)
            except ServerDisconnectedError:
                if conn.answered_anything:
                    raise
                # The server closed the kept-alive connection before reading this request.
        conn = await self._connect(scheme, host, port)
        return await self._exchange(key, conn, request)

    async def _exchange(self, key: tuple[str, str, int], conn: _Connection, request: bytes) -> Answer:
        try:
            answer = await conn.send(request)
        except BaseException:
            conn.close()
            raise
        if not conn.closed:
            self._idle.setdefault(key, []).append(conn)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(self._spare_seconds, self._trim)
        return answer

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.used_at < self._idle_seconds:
                return conn
            conn.close()
        return None

    def _trim(self) -> None:
        """Close what the pool no longer keeps: connections closed by the server or idle for
        ``idle_seconds``, and per host those beyond ``idle_per_host`` (the oldest first) once
        idle for ``spare_seconds``; again on a timer while any connection is idle."""
        self._sweep = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            kept: list[_Connection] = []
            for conn in reversed(idle):  # newest first
                age = now - conn.used_at
                stale = conn.closed or age >= self._idle_seconds
                if stale or (len(kept) >= self._idle_per_host and age >= self._spare_seconds):
                    conn.close()
                else:
                    kept.append(conn)
            if kept:
                kept.reverse()
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle:
            self._sweep = asyncio.get_running_loop().call_later(self._spare_seconds, self._trim)

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            addresses = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        else:
            check_literal(host, self._allow_private)
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            addresses = [
                {"hostname": host, "host": host, "port": port, "family": family, "proto": 0, "flags": 0}
            ]
        last: OSError | None = None
        for address in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_body),
                    address["host"],
                    address["port"],
                    family=address["family"],
                    ssl=ctx,
                    server_hostname=host if ctx is not None else None,
                )
            except OSError as exc:
                last = exc
                continue
            return conn
        raise last or OSError(f"no address for {host}")

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await self._resolver.close()
