"""Where a benchmark runs: PostgreSQL and Redis, the commit it measures, and how it stops.

``connected`` migrates and opens a pool and the queue.

``servers`` gives NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL when set, else embedded servers in a
temp dir (``fast=True``: no fsync), stopped on exit, also on error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from arq.connections import ArqRedis

from notifier.db.migrations import migrate
from notifier.db.pool import Pool, create_pool
from notifier.embedded import EmbeddedServers
from notifier.settings import Settings
from notifier.workers.queue import create_queue

ROOT = Path(__file__).resolve().parents[2]


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, a wait ran out): reported, exit status 1."""


@contextlib.contextmanager
def servers(tmp: Path) -> Iterator[tuple[str, str]]:
    """(database_url, redis_url): the ones in the environment, else embedded servers in ``tmp``."""
    db_url = os.environ.get("NOTIFIER_DATABASE_URL", "")
    redis_url = os.environ.get("NOTIFIER_REDIS_URL", "")
    if db_url and redis_url:
        yield db_url, redis_url
        return
    with EmbeddedServers(tmp, fast=True) as embedded:
        yield db_url or embedded.postgres.url, redis_url or embedded.redis.url


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the same clean-up as Ctrl-C


def stop_on_sigterm() -> None:
    """SIGTERM cleans up as Ctrl-C does: every process and server started is stopped."""
    signal.signal(signal.SIGTERM, _terminate)


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


@contextlib.asynccontextmanager
async def connected(
    settings: Settings, min_size: int = 1, max_size: int = 4
) -> AsyncIterator[tuple[Pool, ArqRedis]]:
    """The database migrated, a pool and the queue's Redis, closed on exit."""
    await migrate(settings.database_url)
    pool = await create_pool(settings, min_size=min_size, max_size=max_size)
    try:
        queue = await create_queue(settings)
        try:
            yield pool, queue
        finally:
            await queue.aclose()
    finally:
        await pool.close()
