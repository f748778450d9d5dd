"""The asyncpg connection pool (JSON codecs registered on every connection)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from notifier.settings import Settings

Record: TypeAlias = asyncpg.Record
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# The database is unreachable right now (down, restarting, cut off, out of connections): the
# request was fine and the same statement will work again. The API answers 503 with
# Retry-After; the workers wait and retry.
UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # the connection failed or was lost mid-statement
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, crashed, still starting up
    asyncpg.TooManyConnectionsError,
    OSError,  # refused, reset, unreachable (ConnectionError and its relatives)
    TimeoutError,  # connecting or a statement timed out
)


DEADLOCK_RETRIES = 2
T = TypeVar("T")


async def again_after_deadlock(conn: Connection, run: Callable[[], Awaitable[T]]) -> T:
    """``run()`` (one statement), again after a deadlock when outside a transaction: the
    statement is atomic, so the deadlock undid all of it (another transaction took the same
    rows in another order). Inside one, the caller's transaction is lost: raised."""
    for _ in range(DEADLOCK_RETRIES):
        try:
            return await run()
        except asyncpg.DeadlockDetectedError:
            if conn.is_in_transaction():
                raise
    return await run()


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable right now: one of ``UNAVAILABLE``, or
    the InterfaceError asyncpg raises in its place when a transaction block ends on a connection
    that died under it ("the underlying connection is closed"; the loss is its context)."""
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and (
        "connection is closed" in str(exc) or isinstance(exc.__context__, UNAVAILABLE)
    )


async def _init_connection(conn: Any) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# The workers' sessions plan every execution with its parameters (a custom plan). Their statements
# take arrays of a batch (500 ids, members, states); a cached generic plan guesses 10 elements and
# the statistics' "no row is 'sending'", and chose plans whose cost grows with the whole table:
# a 500-row write-back went from 10 ms to 175 ms after the first ANALYZE of a busy deliveries
# table (benchmarks/pg_delivery.py). Planning once per batch costs well under a microsecond per
# row. It also governs the triggers those statements fire (PL/pgSQL plans through the same cache).
WORKER_SESSION = {"plan_cache_mode": "force_custom_plan"}
# The API's sessions too. A generic plan is cached after a statement's fifth execution on a
# connection and kept for the connection's life: nothing but an ANALYZE (or DDL) of its tables
# makes the server plan it again, and no size it grew to since. Prepared while ``deliveries`` was
# empty, a read receipt's (db/receipts.py) found the deliveries its read made moot by a nested loop
# over sequential scans of that table, and went on doing so while a 20,000-member fan-out filled
# it: each receipt seconds to a minute on CPU, then a 503 (benchmarks/scale.py, target 6). A
# custom plan is made with the table's size of the moment (its pages now, whatever the
# statistics say) and reaches those rows by index. Its price: planning on every execution, about
# 1 ms for a receipt statement (0.7-1.3 ms, EXPLAIN's planning time on a loaded 2-core box).
API_SESSION = {"plan_cache_mode": "force_custom_plan"}


async def _released(conn: Any) -> None:
    """What a connection goes back to the pool with (asyncpg rolls back an open transaction
    first). Its default also sends ``RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()``,
    one more round trip per acquire, for session state this code never leaves on a pooled
    connection: settings are given at connect (``server_settings``) or ``SET LOCAL``, locks are
    transaction-level (``pg_advisory_xact_lock``), cursors live in transactions, and nothing
    LISTENs on a pool (the one session lock, the migrations', is on a connection of its own)."""


async def create_pool(
    settings: Settings,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    server_settings: dict[str, str] | None = None,
    on_connect: Callable[[Any], Awaitable[None]] | None = None,
) -> Pool:
    """The pool; ``on_connect`` runs once on every new connection, after the codecs."""

    async def init(conn: Any) -> None:
        await _init_connection(conn)
        if on_connect is not None:
            await on_connect(conn)

    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max if max_size is None else max_size,
        init=init,
        reset=_released,
        command_timeout=60,
        server_settings=server_settings,
    )
    assert pool is not None
    return pool
