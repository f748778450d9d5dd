"""A webhook receiver in its own process: a minimal asyncio HTTP/1.1 keep-alive server that verifies
every Standard Webhooks signature and counts distinct message ids in shared memory, so that the
benchmark's own event loop and CPU figures stay apart from the receiving end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import multiprocessing
import os
import signal
import time
from typing import Any

from benchmarks.harness.servers import BenchError
from notifier.channels.webhook import decode_secret

# Shared counters of the receiver process (one int64 array in shared memory).
PORT, REQUESTS, DISTINCT, DUPLICATES, REJECTED = range(5)
N_COUNTERS = 5

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 411: "Length Required"}
_OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


def _response(status: int, body: bytes = b"", close: bool = False) -> bytes:
    if status == 200 and not body and not close:
        return _OK_EMPTY
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode() + body


class _ReceiverState:
    """Verifies Standard Webhooks signatures and counts messages (by webhook-id)."""

    def __init__(self, key: bytes, counters: Any, tolerance_seconds: int = 300) -> None:
        self.key = key
        self.counters = counters
        self.tolerance = tolerance_seconds
        self.seen: set[str] = set()

    def verified_id(self, headers: dict[str, str], body: bytes) -> str | None:
        msg_id = headers.get("webhook-id", "")
        signature = headers.get("webhook-signature", "")
        try:
            ts = int(headers.get("webhook-timestamp", ""))
        except ValueError:
            return None
        if not msg_id or abs(time.time() - ts) > self.tolerance:
            return None
        digest = hmac.new(self.key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        expected = base64.b64encode(digest).decode()
        for part in signature.split(" "):
            if part.startswith("v1,") and hmac.compare_digest(part[3:], expected):
                return msg_id
        return None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        c = self.counters
        if method == "GET" and path == "/count":
            names = ("port", "requests", "distinct", "duplicates", "rejected")
            return 200, json.dumps({n: c[i] for i, n in enumerate(names)}).encode()
        if method != "POST":
            return 404, b""
        c[REQUESTS] += 1
        msg_id = self.verified_id(headers, body)
        if msg_id is None:
            c[REJECTED] += 1
            return 401, b""
        if msg_id in self.seen:
            c[DUPLICATES] += 1
        else:
            self.seen.add(msg_id)
            c[DISTINCT] += 1
        return 200, b""


class _HookProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; Content-Length bodies only (what aiohttp sends)."""

    def __init__(self, state: _ReceiverState) -> None:
        self._state = state
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _fail(self, status: int) -> None:
        if self._transport is not None:
            self._transport.write(_response(status, close=True))
            self._transport.close()
            self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self._transport is not None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    self._fail(400)
                return
            request_line, *lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                self._fail(411)
                return
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= _MAX_BODY:
                self._fail(400)
                return
            total = end + 4 + length
            if len(self._buf) < total:
                return
            body = bytes(self._buf[end + 4 : total])
            del self._buf[:total]
            method, _, rest = request_line.partition(" ")
            status, payload = self._state.handle(method, rest.partition(" ")[0], headers, body)
            close = headers.get("connection", "").lower() == "close"
            self._transport.write(_response(status, payload, close))
            if close:
                self._transport.close()
                self._transport = None


async def _serve_receiver(secret: str, counters: Any, parent: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    state = _ReceiverState(decode_secret(secret), counters)
    server = await loop.create_server(lambda: _HookProtocol(state), "127.0.0.1", 0, backlog=4096)
    counters[PORT] = server.sockets[0].getsockname()[1]
    async with server:
        while not stop.is_set() and os.getppid() == parent:  # also stop if the benchmark died
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def _receiver_main(secret: str, counters: Any, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark stops us (SIGTERM), not the tty
    asyncio.run(_serve_receiver(secret, counters, parent))


class Receiver:
    def __init__(self, secret: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.counters: Any = ctx.RawArray("q", N_COUNTERS)
        self._proc = ctx.Process(
            target=_receiver_main,
            args=(secret, self.counters, os.getpid()),
            name="bench-webhook-receiver",
            daemon=True,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.counters[PORT]}/hook"

    def distinct(self) -> int:
        return int(self.counters[DISTINCT])

    def snapshot(self) -> dict[str, int]:
        names = ("port", "requests", "distinct", "duplicates", "rejected")
        return {n: int(self.counters[i]) for i, n in enumerate(names)}

    def start(self, timeout: float = 30.0) -> Receiver:
        self._proc.start()
        deadline = time.monotonic() + timeout
        while not self.counters[PORT]:
            if not self._proc.is_alive():
                raise BenchError(f"webhook receiver exited with code {self._proc.exitcode}")
            if time.monotonic() > deadline:
                raise BenchError(f"webhook receiver did not listen within {timeout}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._proc.pid is None:
            return
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
