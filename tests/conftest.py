"""Test fixtures: one real PostgreSQL and one real Redis per session (embedded, unless
NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL point at servers), a clean state per test, the app
behind a real HTTP server, an in-process arq worker and a fake webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from notifier.app import create_app
from notifier.db.migrations import migrate
from notifier.embedded import EmbeddedServers
from notifier.settings import Settings
from notifier.workers.settings import create_worker, stop_worker
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import WebhookReceiver

ADMIN_TOKEN = "test-admin-token"
WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNpZ25pbmcta2V5LTAx"
TABLES = ", ".join(
    [
        "idempotency_keys",
        "fanout_parts",
        "escalation_parts",
        "notice_counts",
        "notice_unit_counts",
        "unit_report_slots",
        "notice_reach",
        "deliveries",
        "recipients",
        "notices",
        "contacts",
        "api_keys",
    ]
    + ["member_units", "members", "units"]
    + ["engine_clock", "rate_buckets", "circuit_breakers", "provider_events", "audit_log"]
    + ["dingtalk_read_polls", "dingtalk_dings", "unit_posts", "unit_contacts"]
    + ["console_sessions", "console_links"]
    + ["unit_budgets", "budget_spend"]
    + ["quiz_results", "quiz_attempts", "quizzes"]
    + ["point_rules", "point_awards", "notice_views"]
    + ["exams", "exam_excused", "ranking_settings"]
    + ["meeting_photos", "meeting_records", "meeting_absences", "meeting_checkins", "meetings"]
)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs a ``notifier`` command in-process (``main([...])``) reconfigures the root
    logger onto the stream pytest captured for that test; later tests would log to a closed file."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    db, redis = os.environ.get("NOTIFIER_DATABASE_URL"), os.environ.get("NOTIFIER_REDIS_URL")
    if db and redis:
        yield db, redis
        return
    with tempfile.TemporaryDirectory(prefix="notifier-test-") as tmp:
        servers = EmbeddedServers(Path(tmp), fast=True).start()
        try:
            yield db or servers.postgres.url, redis or servers.redis.url
        finally:
            servers.stop()


def make_settings(urls: tuple[str, str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": urls[0],
        "redis_url": urls[1],
        "admin_token": SecretStr(ADMIN_TOKEN),
        "webhook_secret": SecretStr(WEBHOOK_SECRET),
        "allow_private_targets": True,
        "reconcile_interval_seconds": 1,
        "reconcile_stall_seconds": 1.0,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.5,
        "delivery_lease_seconds": 5.0,
        "queue_name": "notifier:test",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def settings(server_urls: tuple[str, str]) -> Settings:
    return make_settings(server_urls)


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> None:
    await migrate(settings.database_url)


# The tables a reset empties: TABLES and every table referencing one of them (which TRUNCATE ...
# CASCADE would empty too).
REACHED_TABLES = """
WITH RECURSIVE reach(rel) AS (
    SELECT unnest($1::regclass[])
    UNION
    SELECT c.conrelid::regclass FROM pg_constraint c JOIN reach ON c.confrelid = reach.rel
    WHERE c.contype = 'f'
)
SELECT rel::text AS name FROM reach
"""
# Those written since they were last emptied (their heap has a page), with its size and whether
# it has planner statistics (analysed or vacuumed since: a TRUNCATE leaves none, reltuples -1).
WRITTEN_TABLES = """
SELECT rel::text AS name, pg_relation_size(rel) AS bytes, c.reltuples <> -1 AS analysed
FROM unnest($1::regclass[]) rel JOIN pg_class c ON c.oid = rel
WHERE pg_relation_size(rel) > 0 OR c.reltuples <> -1
"""
# Their sequences, back to where RESTART IDENTITY would put them.
RESTART_SEQUENCES = """
SELECT setval(q.seqrelid, q.seqstart, false)
FROM pg_sequence q JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = q.seqrelid
WHERE d.refobjid = ANY($1::regclass[]) AND pg_sequence_last_value(q.seqrelid) IS NOT NULL
"""
# A table up to this size is emptied by DELETE, a larger one by TRUNCATE (so big tables' dead rows
# do not linger), and so is one with planner statistics (a DELETE would keep them: the next test's
# plans would depend on the test before, not start from a fresh deployment's). TRUNCATE costs a few
# ms per table -- new files for the table, its indexes and sequences -- and took ~0.1 s of every
# test's setup for ~50 tables, most empty or nearly.
DELETE_UP_TO_BYTES = 8 * 8192


async def reset_state(settings: Settings, conn: asyncpg.Connection) -> None:
    """An empty database and Redis: every table as TRUNCATE ... RESTART IDENTITY CASCADE would
    leave it (no rows, sequences at their start)."""
    tables = [r["name"] for r in await conn.fetch(REACHED_TABLES, TABLES.split(", "))]
    try:
        async with conn.transaction():
            # Rows go in any order, with no trigger (counters, audit) firing: everything goes.
            await conn.execute("SET LOCAL session_replication_role = replica")
            # Like TRUNCATE's lock, this waits for writes still in flight (a process a test
            # stopped may have sent one) and holds off new ones until the tables are empty.
            await conn.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE")
            written = await conn.fetch(WRITTEN_TABLES, tables)
            large = [r["name"] for r in written if r["bytes"] > DELETE_UP_TO_BYTES or r["analysed"]]
            small = [r["name"] for r in written if r["bytes"] <= DELETE_UP_TO_BYTES and not r["analysed"]]
            if large:
                await conn.execute(f"TRUNCATE {', '.join(large)} RESTART IDENTITY CASCADE")
            if small:
                await conn.execute("".join(f"DELETE FROM {name};" for name in small))
            await conn.execute(RESTART_SEQUENCES, tables)
    except asyncpg.InsufficientPrivilegeError:  # not a superuser: a server that is not ours
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    redis = Redis.from_url(settings.redis_url)
    await redis.flushdb()
    await redis.aclose()


@pytest.fixture
async def db(settings: Settings, migrated: None) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, and a clean database and Redis for every test."""
    conn = await asyncpg.connect(settings.database_url)
    await reset_state(settings, conn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def client(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[TestClient[Any, Any]]:
    server = TestServer(create_app(settings), host="127.0.0.1")
    async with TestClient(server) as c:
        yield c


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    """An in-process arq worker (with its cron jobs) built from ``settings``, for the block."""
    w = create_worker(settings)
    task = asyncio.ensure_future(w.async_run())
    try:
        yield
    finally:
        await stop_worker(w, task)


@pytest.fixture
async def worker(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[None]:
    async with running_worker(settings):
        yield


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = await WebhookReceiver(secret=WEBHOOK_SECRET).start()
    yield r
    await r.stop()


async def advance_clock(db: asyncpg.Connection, seconds: float) -> None:
    """Move the engine's clock (notifier_now()) forward: GoAlert's FastForward, no sleeping."""
    await db.execute(
        "INSERT INTO engine_clock (id, offset_interval) VALUES (true, make_interval(secs => $1)) "
        "ON CONFLICT (id) DO UPDATE "
        "SET offset_interval = engine_clock.offset_interval + excluded.offset_interval",
        float(seconds),
    )


@contextlib.asynccontextmanager
async def frozen_clock(db: asyncpg.Connection) -> AsyncIterator[None]:
    """Stop the engine's clock where it is: notifier_now() moves only by advance_clock, so a
    test's "not due yet, due one second later" does not depend on how fast a loaded machine runs.
    The function is put back afterwards (it is shared by every test of the session)."""
    original = await db.fetchval("SELECT pg_get_functiondef('notifier_now()'::regprocedure)")
    base = await db.fetchval("SELECT now()")
    await db.execute(
        "CREATE OR REPLACE FUNCTION notifier_now() RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE"
        " AS $$"
        f" SELECT '{base.isoformat()}'::timestamptz"
        " + coalesce((SELECT offset_interval FROM engine_clock), interval '0') $$"
    )
    try:
        yield
    finally:
        await db.execute(original)


@pytest.fixture
async def twilio_fake() -> AsyncIterator[FakeTwilio]:
    fake = await FakeTwilio().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def aliyun_fake() -> AsyncIterator[FakeAliyun]:
    fake = await FakeAliyun().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def dingtalk_fake() -> AsyncIterator[FakeDingTalk]:
    """The fake DingTalk open platform (work notifications, DING, robots, events, contacts)."""
    fake = await FakeDingTalk().start()
    yield fake
    await fake.stop()


def auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], within: float = 30.0, every: float = 0.05
) -> None:
    """Poll until ``predicate`` holds (a bound, not a performance assertion)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)
