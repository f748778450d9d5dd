"""Fan-out benchmark: one notice to a whole unit tree, in-app and webhook, against a naive baseline.

Run::

    .venv/bin/python -m benchmarks.fanout [--members N] [--workers W] [--channels inapp,webhook]

What it does:

* starts embedded PostgreSQL + Redis in a temp dir (``fast=True``) unless NOTIFIER_DATABASE_URL
  and NOTIFIER_REDIS_URL are set, and migrates;
* creates N members under a small unit tree (1 root, 4 branches, 16 groups; every 10th member
  also sits in its branch) with one webhook contact each, set-based in SQL (setup, not measured);
* starts a webhook receiver in its own process (a minimal asyncio HTTP/1.1 keep-alive server that
  verifies every Standard Webhooks signature and counts distinct message ids in shared memory);
* starts W ``notifier worker`` processes (NOTIFIER_* env; any NOTIFIER_* you export, e.g.
  NOTIFIER_DELIVERY_BATCH_SIZE, reaches them too), waits until each has its database pool, warms
  them up with a small notice, then for each channel inserts a notice to the whole tree, starts the
  clock when it commits (what the API answers 202 after), enqueues the fan-out and polls until every
  recipient is final (delivered + failed == recipients == N, state 'active'; webhook: and the
  receiver has counted N distinct, correctly signed messages);
* the naive baseline: one arq job per recipient (enqueued by the benchmark acting as the fan-out,
  after one audience query), each job POSTs one signed webhook (webhook only) and INSERTs one
  delivery row; W naive worker processes with the same max_jobs / poll delay / JSON serializer.
  It is capped at --naive-cap recipients (default 5,000) to bound the run time;
* prints a table (seconds to final, deliveries/s, ratio vs naive) and where the CPU went.

Every wait is bounded, and every process and server this script started is stopped at the end,
also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from arq.connections import ArqRedis
from arq.worker import Worker, func
from pydantic import SecretStr

from notifier.channels.webhook import decode_secret, sign
from notifier.db import notices
from notifier.db.migrations import migrate
from notifier.db.pool import Pool, create_pool
from notifier.db.units import SUBTREE_CTE
from notifier.embedded import EmbeddedServers
from notifier.settings import Settings
from notifier.workers.queue import create_queue, enqueue_fanout
from notifier.workers.settings import queue_settings

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("inapp", "webhook")
BRANCHES = 4
GROUPS = 16
WARMUP_MEMBERS = 256
POLL_SECONDS = 0.02
REPORT_EVERY = 5.0
NAIVE_JOB = "naive_deliver"

# Shared counters of the receiver process (one int64 array in shared memory).
PORT, REQUESTS, DISTINCT, DUPLICATES, REJECTED = range(5)
N_COUNTERS = 5


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# The webhook receiver (runs in its own process)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------


@dataclass
class ProcGroup:
    """Worker processes we started (own sessions, so Ctrl-C reaches only us; we stop them)."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        self.logs.append(log)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise BenchError(f"{self.name} pid {proc.pid} exited with {proc.returncode}; see {log}")

    def tails(self, lines: int = 25) -> str:
        out = []
        for log in self.logs:
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def _with_app_name(database_url: str, name: str) -> str:
    """asyncpg passes unknown DSN query parameters as server settings: tag each pool's sessions."""
    parts = urllib.parse.urlsplit(database_url)
    query = urllib.parse.parse_qsl(parts.query) + [("application_name", name)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def start_workers(
    name: str, argv: list[str], settings: Settings, count: int, app_prefix: str, log_dir: Path
) -> ProcGroup:
    group = ProcGroup(name)
    try:
        for i in range(count):
            env = {
                **os.environ,
                "NOTIFIER_DATABASE_URL": _with_app_name(settings.database_url, f"{app_prefix}{i}"),
                "NOTIFIER_REDIS_URL": settings.redis_url,
                "NOTIFIER_QUEUE_NAME": settings.queue_name,
                "NOTIFIER_WEBHOOK_SECRET": settings.webhook_secret.get_secret_value(),
                "NOTIFIER_ALLOW_PRIVATE_TARGETS": "true",
                "NOTIFIER_LINK_SECRET": os.environ.get("NOTIFIER_LINK_SECRET") or secrets.token_urlsafe(24),
                "NOTIFIER_PUBLIC_URL": os.environ.get("NOTIFIER_PUBLIC_URL") or "http://127.0.0.1:8080",
            }
            group.spawn(argv, env, log_dir / f"{name.replace(' ', '-')}-{i}.log")
    except BaseException:
        group.stop()
        raise
    return group


async def wait_workers_ready(pool: Pool, group: ProcGroup, app_prefix: str, within: float = 60.0) -> None:
    """Ready = every worker process has opened its database pool (done in arq's on_startup)."""
    deadline = time.monotonic() + within
    while True:
        group.check_alive()
        names = await pool.fetchval(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity WHERE application_name LIKE $1",
            app_prefix + "%",
        )
        if names >= len(group.procs):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{group.name}: {names}/{len(group.procs)} ready after {within}s")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------
# The naive baseline: one arq job per recipient, one INSERT (and one POST) per job
# --------------------------------------------------------------------------------------------

NAIVE_INSERT = """
INSERT INTO deliveries (notice_id, member_id, channel, state, attempts, error)
VALUES ($1, $2, $3, $4, 1, $5)"""


async def naive_deliver(
    ctx: dict[str, Any], notice_id: str, member_id: str, channel: str, url: str | None, title: str, body: str
) -> str:
    """arq job (naive baseline): deliver one notice to one member, then record it with one INSERT."""
    state, error = "delivered", None
    if channel == "webhook":
        if url is None:
            state, error = "failed", "no contact"
        else:
            payload = json.dumps(
                {
                    "notice_id": notice_id,
                    "member_id": member_id,
                    "kind": "notice",
                    "title": title,
                    "body": body,
                },
                separators=(",", ":"),
            ).encode()
            msg_id = f"naive_{notice_id}_{member_id}"
            now = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": sign(ctx["naive_key"], msg_id, now, payload),
            }
            session: aiohttp.ClientSession = ctx["naive_session"]
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    await resp.read()
                    if not 200 <= resp.status < 300:
                        state, error = "failed", f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                state, error = "failed", type(exc).__name__
    pool: asyncpg.Pool[asyncpg.Record] = ctx["naive_pool"]
    await pool.execute(NAIVE_INSERT, notice_id, member_id, channel, state, error)
    return state


def naive_worker_settings(settings: Settings) -> dict[str, Any]:
    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["naive_pool"] = await asyncpg.create_pool(
            settings.database_url, min_size=2, max_size=max(4, settings.db_pool_max)
        )
        ctx["naive_session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.delivery_concurrency),
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
        )
        ctx["naive_key"] = decode_secret(settings.webhook_secret.get_secret_value())

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "naive_session" in ctx:
            await ctx["naive_session"].close()
        if "naive_pool" in ctx:
            await ctx["naive_pool"].close()

    return {
        "functions": [func(naive_deliver, name=NAIVE_JOB, timeout=60, keep_result=0, max_tries=3)],
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        **queue_settings(settings),  # the same queue tuning as ours: only the job design differs
    }


async def _run_naive_worker(settings: Settings) -> None:
    worker = Worker(**naive_worker_settings(settings))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    task = asyncio.ensure_future(worker.async_run())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        # Until told to stop, the worker fails, or the benchmark that started us is gone.
        while not stopped.done() and not task.done() and os.getppid() == parent:
            await asyncio.wait({task, stopped}, timeout=1.0)
    finally:
        stopped.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc (Linux; silently empty elsewhere or for remote servers)
# --------------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm) "


def _cpu_of(pid: int, reaped_children: bool = False) -> float:
    f = _stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if reaped_children else 0)
    return ticks / _CLK_TCK


def _tree_cpu(parent: int) -> float:
    """A server and its live children (PostgreSQL backends); exited children are in cutime."""
    total = _cpu_of(parent, reaped_children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _stat(int(entry.name))
            if f is not None and f[1] == str(parent):
                total += _cpu_of(int(entry.name))
    return total


def _machine_busy() -> float:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK  # minus idle and iowait


@dataclass
class CpuMeter:
    postgres: int | None = None
    redis: int | None = None
    receiver: int | None = None
    workers: list[int] = field(default_factory=list)

    def snapshot(self) -> dict[str, float]:
        snap = {
            "workers": sum(_cpu_of(p) for p in self.workers),
            "bench": sum(os.times()[:2]),
            "machine": _machine_busy(),
        }
        if self.postgres is not None:
            snap["postgres"] = _tree_cpu(self.postgres)
        if self.redis is not None:
            snap["redis"] = _cpu_of(self.redis)
        if self.receiver is not None:
            snap["receiver"] = _cpu_of(self.receiver)
        return snap


async def find_server_pids(pool: Pool, queue: ArqRedis) -> tuple[int | None, int | None]:
    """The postmaster (parent of our backend) and redis-server, when they run on this machine."""
    backend = await pool.fetchval("SELECT pg_backend_pid()")
    stat = _stat(int(backend))
    postmaster = int(stat[1]) if stat is not None else None
    info = await queue.info("server")
    redis_pid = int(info.get("process_id", 0)) or None
    if redis_pid is not None and _stat(redis_pid) is None:
        redis_pid = None
    return postmaster, redis_pid


# --------------------------------------------------------------------------------------------
# Setup (set-based SQL; not measured)
# --------------------------------------------------------------------------------------------


MEMBER_ID_SQL = "$1 || '-m' || lpad(i::text, 7, '0')"  # must match member_id()


async def create_org(pool: Pool, prefix: str, n: int, hook_url: str) -> str:
    """root -> 4 branches -> 16 groups; member i in group i % 16, every 10th also in its branch."""
    root = f"{prefix}-root"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO units (id, name) VALUES ($1, 'Benchmark committee')", root)
        await conn.execute(
            "INSERT INTO units (id, name, parent_id) SELECT $1 || '-b' || b, 'Branch ' || b, $2 "
            "FROM generate_series(0, $3 - 1) b",
            prefix,
            root,
            BRANCHES,
        )
        await conn.execute(
            "INSERT INTO units (id, name, parent_id) SELECT $1 || '-g' || g, 'Group ' || g, "
            "$1 || '-b' || (g % $3) FROM generate_series(0, $2 - 1) g",
            prefix,
            GROUPS,
            BRANCHES,
        )
        await conn.execute(
            f"INSERT INTO members (id, name) SELECT {MEMBER_ID_SQL}, 'Member ' || i "
            "FROM generate_series(0, $2 - 1) i",
            prefix,
            n,
        )
        await conn.execute(
            f"INSERT INTO member_units (member_id, unit_id) SELECT {MEMBER_ID_SQL}, "
            "$1 || '-g' || (i % $3) FROM generate_series(0, $2 - 1) i "
            f"UNION ALL SELECT {MEMBER_ID_SQL}, $1 || '-b' || ((i % $3) % $4) "
            "FROM generate_series(0, $2 - 1, 10) i",
            prefix,
            n,
            GROUPS,
            BRANCHES,
        )
        await conn.execute(
            f"INSERT INTO contacts (member_id, channel, target) SELECT {MEMBER_ID_SQL}, "
            "'webhook', jsonb_build_object('url', $3::text) FROM generate_series(0, $2 - 1) i",
            prefix,
            n,
            hook_url,
        )
    # What autovacuum does shortly after a bulk import (statistics for the planner, hint bits and
    # the visibility map): a real member table has been vacuumed long before a notice goes out.
    await pool.execute("VACUUM (ANALYZE) units, members, member_units, contacts")
    return root


def member_id(prefix: str, i: int) -> str:
    return f"{prefix}-m{i:07d}"


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

PROGRESS = """
SELECT n.state, n.fanned_out_at - n.created_at AS fanout,
       coalesce(sum(c.recipients), 0)::bigint AS recipients, coalesce(sum(c.queued), 0)::bigint AS queued,
       coalesce(sum(c.sent), 0)::bigint AS sent, coalesce(sum(c.delivered), 0)::bigint AS delivered,
       coalesce(sum(c.failed), 0)::bigint AS failed
FROM notices n LEFT JOIN notice_counts c ON c.notice_id = n.id
WHERE n.id = $1 GROUP BY n.id"""


@dataclass
class CaseResult:
    case: str
    channel: str
    recipients: int
    seconds: float
    delivered: int
    failed: int
    fanout_seconds: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.recipients / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Bench:
    settings: Settings
    pool: Pool
    queue: ArqRedis
    receiver: Receiver
    meter: CpuMeter
    prefix: str
    timeout: float
    procs: ProcGroup | None = None


async def poll_until(
    bench: Bench, what: str, start: float, check: Callable[[], Awaitable[tuple[bool, str]]]
) -> float:
    """Poll ``check`` until it holds; returns seconds since ``start``. Bounded by bench.timeout."""
    last_report = start
    while True:
        done, progress = await check()
        now = time.perf_counter()
        if done:
            return now - start
        if now - start > bench.timeout:
            raise BenchError(f"{what}: not final within {bench.timeout:.0f}s ({progress})")
        if bench.procs is not None:
            bench.procs.check_alive()
        if now - last_report >= REPORT_EVERY:
            print(f"  .. {what} {now - start:6.1f}s: {progress}", file=sys.stderr, flush=True)
            last_report = now
        await asyncio.sleep(POLL_SECONDS)


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if k in before}


async def run_ours(
    bench: Bench, case: str, channels: list[str], audience: dict[str, Any], n: int
) -> CaseResult:
    async with bench.pool.acquire() as conn, conn.transaction():
        row = await notices.insert(
            conn,
            kind="notice",
            title=f"Benchmark {case}",
            body="Fan-out benchmark notice.",
            audience=audience,
            channels=channels,
            scope_unit_id=None,
            created_by=None,
        )
    start = time.perf_counter()  # committed: the API would answer 202 now
    cpu0 = bench.meter.snapshot()
    notice_id = str(row["id"])
    hooks0 = bench.receiver.distinct()
    await enqueue_fanout(bench.queue, notice_id)
    want_hooks = n if "webhook" in channels else 0
    last: dict[str, Any] = {}

    async def check() -> tuple[bool, str]:
        r = await bench.pool.fetchrow(PROGRESS, notice_id)
        assert r is not None
        last.update(r)
        hooks = bench.receiver.distinct() - hooks0
        final = r["delivered"] + r["failed"]
        done = r["state"] == "active" and r["recipients"] == n and final == n and hooks >= want_hooks
        return done, (
            f"state={r['state']} recipients={r['recipients']} final={final} queued={r['queued']} "
            f"failed={r['failed']} webhooks={hooks}"
        )

    seconds = await poll_until(bench, case, start, check)
    fanout = last.get("fanout")
    return CaseResult(
        case,
        "+".join(channels),
        n,
        seconds,
        int(last["delivered"]),
        int(last["failed"]),
        fanout.total_seconds() if fanout is not None else None,
        _cpu_delta(cpu0, bench.meter.snapshot()),
    )


NAIVE_AUDIENCE = (
    SUBTREE_CTE
    + """
SELECT a.member_id, k.target->>'url' AS url
FROM (SELECT DISTINCT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id) a
LEFT JOIN LATERAL (
    SELECT target FROM contacts
    WHERE contacts.member_id = a.member_id AND contacts.channel = 'webhook' AND contacts.disabled_at IS NULL
    ORDER BY created_at DESC LIMIT 1
) k ON true
ORDER BY a.member_id LIMIT $2"""
)


async def run_naive(bench: Bench, case: str, channel: str, root: str, n: int, cap_note: str) -> CaseResult:
    title, body = f"Benchmark {case}", "Fan-out benchmark notice."
    notice_id = str(
        await bench.pool.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels, state) "
            "VALUES ('notice', $1, $2, $3, $4, 'active') RETURNING id",
            title,
            body,
            {"units": [root]},
            [channel],
        )
    )
    start = time.perf_counter()
    cpu0 = bench.meter.snapshot()
    hooks0 = bench.receiver.distinct()
    # The naive fan-out: one audience query, then one job per recipient.
    rows = await bench.pool.fetch(NAIVE_AUDIENCE, [root], n)
    limit = asyncio.Semaphore(64)

    async def enqueue(member: str, url: str | None) -> None:
        async with limit:
            await bench.queue.enqueue_job(
                NAIVE_JOB,
                notice_id,
                member,
                channel,
                url,
                title,
                body,
                _job_id=f"naive:{notice_id}:{member}",
                _queue_name=bench.settings.queue_name,
            )

    enqueuing = asyncio.ensure_future(asyncio.gather(*(enqueue(r["member_id"], r["url"]) for r in rows)))
    want_hooks = n if channel == "webhook" else 0
    counts: dict[str, int] = {}

    async def check() -> tuple[bool, str]:
        if enqueuing.done():
            enqueuing.result()  # surface enqueue errors
        r = await bench.pool.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE state = 'failed') AS failed "
            "FROM deliveries WHERE notice_id = $1",
            notice_id,
        )
        assert r is not None
        counts.update(total=r["total"], failed=r["failed"])
        hooks = bench.receiver.distinct() - hooks0
        return r["total"] >= n and hooks >= want_hooks, f"rows={r['total']} webhooks={hooks}"

    try:
        seconds = await poll_until(bench, case, start, check)
    finally:
        if not enqueuing.done():
            enqueuing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await enqueuing
    return CaseResult(
        case,
        channel,
        n,
        seconds,
        counts["total"] - counts["failed"],
        counts["failed"],
        cpu=_cpu_delta(cpu0, bench.meter.snapshot()),
        note=cap_note,
    )


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


@dataclass
class Options:
    members: int
    workers: int
    channels: list[str]
    naive: bool
    naive_cap: int
    timeout: float
    repeat: int = 1


async def repeated(opts: Options, run: Callable[[], Awaitable[CaseResult]]) -> CaseResult:
    """Run a case ``opts.repeat`` times; the median run stands for it (min-max in the note)."""
    runs = [await run() for _ in range(opts.repeat)]
    runs.sort(key=lambda r: r.seconds)
    median = runs[len(runs) // 2]
    if len(runs) > 1:
        spread = f"median of {len(runs)} ({runs[0].seconds:.3f}-{runs[-1].seconds:.3f}s)"
        median.note = f"{median.note}; {spread}" if median.note else spread
    return median


async def run_ours_phase(bench: Bench, opts: Options, root: str, log_dir: Path) -> list[CaseResult]:
    prefix = f"{bench.prefix}-w"
    argv = [sys.executable, "-m", "notifier", "worker"]
    group = start_workers("notifier worker", argv, bench.settings, opts.workers, prefix, log_dir)
    bench.procs, bench.meter.workers = group, group.pids
    try:
        await wait_workers_ready(bench.pool, group, prefix)
        warm = min(WARMUP_MEMBERS, opts.members)
        audience = {"members": [member_id(bench.prefix, i) for i in range(warm)]}
        await run_ours(bench, "warm-up", list(CHANNELS), audience, warm)
        results = []
        for channel in opts.channels:
            case = functools.partial(run_ours, bench, channel, [channel], {"units": [root]}, opts.members)
            result = await repeated(opts, case)
            results.append(result)
            print(f"  {channel}: {result.seconds:.3f}s, {result.rate:,.0f} deliveries/s", file=sys.stderr)
        return results
    except Exception:
        print(group.tails(), file=sys.stderr)
        raise
    finally:
        bench.procs, bench.meter.workers = None, []
        await asyncio.to_thread(group.stop)


async def run_naive_phase(bench: Bench, opts: Options, root: str, log_dir: Path) -> list[CaseResult]:
    prefix = f"{bench.prefix}-n"
    naive_settings = bench.settings.model_copy(update={"queue_name": bench.settings.queue_name + ":naive"})
    argv = [sys.executable, "-m", "benchmarks.fanout", "--naive-worker"]
    group = start_workers("naive worker", argv, naive_settings, opts.workers, prefix, log_dir)
    bench.meter.workers = group.pids
    naive_bench = dataclasses.replace(bench, settings=naive_settings, procs=group)
    n = min(opts.members, opts.naive_cap)
    note = f"capped at {n:,} of {opts.members:,}" if n < opts.members else ""
    try:
        await wait_workers_ready(bench.pool, group, prefix)
        await run_naive(naive_bench, "naive warm-up", "webhook", root, min(WARMUP_MEMBERS, n), "")
        results = []
        for channel in opts.channels:
            case = functools.partial(run_naive, naive_bench, f"naive {channel}", channel, root, n, note)
            result = await repeated(opts, case)
            results.append(result)
            print(f"  naive {channel}: {result.seconds:.3f}s, {result.rate:,.0f}/s", file=sys.stderr)
        return results
    except Exception:
        print(group.tails(), file=sys.stderr)
        raise
    finally:
        bench.procs, bench.meter.workers = None, []
        await asyncio.to_thread(group.stop)


def machine_idle_check(seconds: float = 1.0) -> None:
    """Other work on the machine skews every figure: say so up front."""
    before = _machine_busy()
    time.sleep(seconds)
    busy = (_machine_busy() - before) / seconds
    if busy > 0.25:
        print(
            f"warning: the machine is already {busy:.2f} cores busy before the benchmark; "
            "figures will be noisy (see 'other' in the CPU table)",
            file=sys.stderr,
            flush=True,
        )


async def run_benchmark(
    opts: Options, settings: Settings, receiver: Receiver, log_dir: Path
) -> list[CaseResult]:
    await migrate(settings.database_url)
    pool = await create_pool(settings, min_size=1, max_size=4)
    queue = await create_queue(settings)
    try:
        postmaster, redis_pid = await find_server_pids(pool, queue)
        meter = CpuMeter(postgres=postmaster, redis=redis_pid, receiver=receiver.pid)
        prefix = "bench" + secrets.token_hex(3)
        bench = Bench(settings, pool, queue, receiver, meter, prefix, opts.timeout)
        t = time.perf_counter()
        root = await create_org(pool, prefix, opts.members, receiver.url)
        print(
            f"setup: {opts.members:,} members under {root} ({1 + BRANCHES + GROUPS} units), "
            f"webhook contacts -> {receiver.url} in {time.perf_counter() - t:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        results = await run_ours_phase(bench, opts, root, log_dir)
        if opts.naive:
            results += await run_naive_phase(bench, opts, root, log_dir)
        return results
    finally:
        await queue.aclose()
        await pool.close()


def format_report(
    results: list[CaseResult], opts: Options, settings: Settings, receiver: dict[str, int]
) -> str:
    naive = {r.channel: r for r in results if r.case.startswith("naive")}
    lines = [
        "",
        f"fan-out benchmark: {opts.members:,} members, {opts.workers} worker process(es), "
        f"{os.cpu_count()} CPUs, code {code_version()}",
        f"worker settings: fanout_chunk_size={settings.fanout_chunk_size} "
        f"delivery_batch_size={settings.delivery_batch_size} "
        f"delivery_parallel_jobs={settings.delivery_parallel_jobs} "
        f"delivery_concurrency={settings.delivery_concurrency} worker_max_jobs={settings.worker_max_jobs} "
        f"db_pool_max={settings.db_pool_max}",
        "",
        f"{'case':<15} {'recipients':>10} {'s to final':>11} {'deliveries/s':>13} {'vs naive':>9} "
        f"{'fan-out s':>9} {'failed':>7}  note",
        "-" * 100,
    ]
    for r in results:
        base = naive.get(r.channel)
        ratio = f"{r.rate / base.rate:.1f}x" if base is not None and base is not r else "-"
        fan = f"{r.fanout_seconds:.3f}" if r.fanout_seconds is not None else "-"
        lines.append(
            f"{r.case:<15} {r.recipients:>10,} {r.seconds:>11.3f} {r.rate:>13,.0f} {ratio:>9} {fan:>9} "
            f"{r.failed:>7,}  {r.note}"
        )
    lines += [
        "",
        "CPU seconds during each case (other = processes the benchmark did not start; machine = all):",
    ]
    for r in results:
        ours = {k: v for k, v in r.cpu.items() if k != "machine"}
        parts = " ".join(f"{k}={v:.2f}" for k, v in sorted(ours.items()))
        other = max(0.0, r.cpu.get("machine", 0.0) - sum(ours.values()))
        busy = r.cpu.get("machine", 0.0) / r.seconds if r.seconds else 0.0
        lines.append(
            f"  {r.case:<15} wall={r.seconds:.2f} {parts} other={other:.2f} machine={busy:.2f} cores busy"
        )
    lines += ["", f"receiver: {receiver}"]
    lines += ["", *targets(results, opts)]
    return "\n".join(lines)


def code_version() -> str:
    """The commit measured, and whether the engine had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "notifier", "schemas"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def targets(results: list[CaseResult], opts: Options) -> list[str]:
    out = []
    for r in results:
        if r.case == "webhook" and r.recipients == 10_000:
            ok = r.rate >= 5_000 and r.failed == 0
            out.append(f"target 10,000 webhook >= 5,000 deliveries/s: {r.rate:,.0f}/s -> {_verdict(ok)}")
        if r.case == "inapp" and r.recipients == 100_000:
            ok = r.seconds <= 3.0 and r.failed == 0
            out.append(
                f"target 100,000 inapp final within 3 s of the 202: {r.seconds:.3f}s -> {_verdict(ok)}"
            )
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000, help="recipients (default 10,000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--channels", default=",".join(CHANNELS), help="comma-separated cases to run: inapp,webhook"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--naive-cap", type=int, default=5_000, help="max naive recipients (default 5,000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the median is reported")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-case bound in seconds")
    parser.add_argument("--naive-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    if not channels or any(c not in CHANNELS for c in channels):
        parser.error(f"--channels takes a comma-separated subset of {','.join(CHANNELS)}")
    if min(args.members, args.workers, args.naive_cap, args.repeat) < 1:
        parser.error("--members, --workers, --naive-cap and --repeat must be positive")
    args.channels = channels
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the same clean-up as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_worker:
        asyncio.run(_run_naive_worker(Settings()))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    opts = Options(
        args.members,
        args.workers,
        args.channels,
        not args.no_naive,
        args.naive_cap,
        args.timeout,
        args.repeat,
    )
    secret = (
        os.environ.get("NOTIFIER_WEBHOOK_SECRET")
        or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-bench-")))
            db_url = os.environ.get("NOTIFIER_DATABASE_URL", "")
            redis_url = os.environ.get("NOTIFIER_REDIS_URL", "")
            if not db_url or not redis_url:
                servers = EmbeddedServers(tmp, fast=True)
                stack.callback(servers.stop)
                servers.start()
                db_url, redis_url = db_url or servers.postgres.url, redis_url or servers.redis.url
            machine_idle_check()
            receiver = Receiver(secret)
            stack.callback(receiver.stop)
            receiver.start()
            settings = Settings(
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"notifier:bench:{secrets.token_hex(4)}",
                webhook_secret=SecretStr(secret),
                allow_private_targets=True,
            )
            results = asyncio.run(run_benchmark(opts, settings, receiver, tmp))
            print(format_report(results, opts, settings, receiver.snapshot()), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started by the benchmark was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
