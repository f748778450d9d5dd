"""The watcher hub: one per API process, it keeps what the live streams show up to date.

Streams (api/stream.py) watch a *slice*: a (notice, slice unit) pair. Streams of one slice share one
``Watch``, so a thousand secretaries of one branch watching one notice cost one row set, not a
thousand. The hub polls every watched slice with ONE statement (db/unit_counts.py ``WATCHED``)
every ``stream_poll_seconds``, and polls the slices of a notice early when told it changed: by a
worker's Redis hint (``notifier:notice-changed``, workers/queue.py ``hint_changed``) or in-process
(``changed``, e.g. by the receipts API; the hub then forwards the hint to the other API processes,
batched). It never polls more often than every ``stream_min_interval_seconds``, which bounds the
events of a notice to 4 a second however fast it is read. A hint lost (Redis away) only delays an
update to the next regular poll. PostgreSQL's counters stay the only truth.

A poll that finds a slice unchanged (same version: a digest of the event's data) wakes nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from notifier.api.notices import Counts
from notifier.api.unit_counts import rollup_rows
from notifier.db import unit_counts
from notifier.db.pool import Pool, Record
from notifier.settings import Settings
from notifier.workers.queue import CONNECT_TIMEOUT_SECONDS, NOTICE_CHANGED, REDIS_UNAVAILABLE, hint_changed

log = logging.getLogger(__name__)

LISTEN_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # reconnecting to Redis for hints: waits, then the last


def event_data(notice_id: str, unit: str | None, rows: list[Record]) -> dict[str, Any]:
    """A stream event's JSON: the notice's state, the slice's counts (as GET /v1/notices/{id}?unit=
    has them) and the roll-up rows (as GET /v1/notices/{id}/units?parent= has them)."""
    head, rollup = rows[0], rows[1:]
    counts = {c: int(head[c]) for c in ("recipients", "queued", "sent", "delivered", "failed", "cancelled")}
    counts["read"] = int(head["read"])
    counts["unread"] = counts["recipients"] - counts["read"]
    return {
        "notice_id": notice_id,
        "unit": unit,
        "state": head["state"],
        "counts": Counts.model_validate(counts).model_dump(mode="json"),
        "units": rollup_rows(rollup),
    }


def version_of(data: bytes) -> int:
    """A slice's version: a digest of its event data (the same in every process, so a client
    resuming with ``Last-Event-ID`` on another process is not sent what it has)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "big")


class Subscriber:
    """One stream's mailbox: woken when its slice changes, the hub closes, or the sweep finds its
    client gone (``gone``)."""

    __slots__ = ("wake", "gone")

    def __init__(self, gone: Callable[[], bool]) -> None:
        self.wake = asyncio.Event()
        self.gone = gone


@dataclass(eq=False)
class Watch:
    """One watched slice and the streams watching it."""

    notice_id: str
    unit: str | None  # the slice unit (None: the whole notice, an admin's)
    parent: str | None  # whose child units the event's roll-up shows (None: none)
    subscribers: set[Subscriber] = field(default_factory=set)
    version: int | None = None
    data: bytes | None = None  # the event's JSON line
    frame: bytes = b""  # the whole SSE frame of it, built once for every stream
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the first load, once

    def publish(self, data: bytes) -> bool:
        version = version_of(data)
        if version == self.version:
            return False
        self.version, self.data = version, data
        self.frame = b"id: %d\nevent: counts\ndata: %s\n\n" % (version, data)
        for s in self.subscribers:
            s.wake.set()
        return True


class WatchHub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.watches: dict[tuple[str, str | None], Watch] = {}
        self.closed = False
        self.polls = 0  # statements run (the tests read it)
        self._pool: Pool | None = None
        self._hinted: set[str] = set()
        self._forward: set[str] = set()  # changed here: tell the other API processes
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Redis | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, pool: Pool) -> None:
        self._pool = pool
        self._redis = Redis.from_url(self.settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._listen())]

    def close_streams(self) -> None:
        """Every stream ends (app shutdown: before the server waits for its handlers)."""
        self.closed = True
        for w in self.watches.values():
            for s in w.subscribers:
                s.wake.set()
        self._wake.set()

    async def stop(self) -> None:
        self.close_streams()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- streams ---------------------------------------------------------------------------
    def subscribe(self, notice_id: str, unit: str | None, parent: str | None, sub: Subscriber) -> Watch:
        key = (notice_id, unit)
        w = self.watches.get(key)
        if w is None:
            w = self.watches[key] = Watch(notice_id, unit, parent)
        w.subscribers.add(sub)
        return w

    def unsubscribe(self, w: Watch, sub: Subscriber) -> None:
        w.subscribers.discard(sub)
        if not w.subscribers and self.watches.get((w.notice_id, w.unit)) is w:
            del self.watches[(w.notice_id, w.unit)]

    async def load(self, w: Watch) -> None:
        """The slice's current state, for a stream's first event (one load however many join)."""
        async with w.lock:
            if w.data is None:
                await self.refresh([w])

    def changed(self, notice_id: str) -> None:
        """This process changed the notice's counters: poll it early, and tell the others."""
        self._forward.add(notice_id)
        self.hint(notice_id)

    def hint(self, notice_id: str) -> None:
        self._hinted.add(notice_id)
        self._wake.set()

    # -- polling ---------------------------------------------------------------------------
    async def refresh(self, watches: list[Watch]) -> None:
        """One statement for every slice given; wakes the streams of those that changed."""
        assert self._pool is not None
        self.polls += 1
        results = await unit_counts.watched(self._pool, [(w.notice_id, w.unit, w.parent) for w in watches])
        for w, rows in zip(watches, results, strict=True):
            data = event_data(w.notice_id, w.unit, rows)
            w.publish(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())

    def sweep(self) -> None:
        """Wake the streams whose client has gone, so they end now (not at their next write)."""
        for w in list(self.watches.values()):
            for s in w.subscribers:
                if s.gone():
                    s.wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        poll, gap = self.settings.stream_poll_seconds, self.settings.stream_min_interval_seconds
        last_full = last_poll = loop.time()
        failing = False
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last_full + poll - loop.time())):
                    await self._wake.wait()
            if self.closed:
                return
            # Coalescing: at most one poll per gap, whatever the hints say.
            if (since := loop.time() - last_poll) < gap:
                await asyncio.sleep(gap - since)
            self._wake.clear()
            now = last_poll = loop.time()
            if now >= last_full + poll:
                last_full = now
                targets = list(self.watches.values())
                self.sweep()
            else:
                targets = [w for w in self.watches.values() if w.notice_id in self._hinted]
            self._hinted.clear()
            forward, self._forward = self._forward, set()
            try:
                if targets:
                    await self.refresh(targets)
                if forward and self._redis is not None:
                    await hint_changed(self._redis, *forward)
            except Exception as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("watched counters could not be read (%s); retrying", type(exc).__name__)
                failing = True
            else:
                if failing:
                    log.info("watched counters readable again")
                failing = False

    async def _listen(self) -> None:
        """Hints from the workers (and the other API processes); reconnects while Redis is away."""
        failures = 0
        while not self.closed:
            assert self._redis is not None
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(NOTICE_CHANGED)
                failures = 0
                while not self.closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self.hint(data.decode() if isinstance(data, bytes) else str(data))
            except REDIS_UNAVAILABLE as exc:
                if failures == 0:
                    log.warning("no notice-changed hints from Redis (%s); polling only", type(exc).__name__)
                await asyncio.sleep(LISTEN_RETRY_SECONDS[min(failures, len(LISTEN_RETRY_SECONDS) - 1)])
                failures += 1
            finally:
                with contextlib.suppress(*REDIS_UNAVAILABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
