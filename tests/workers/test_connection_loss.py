"""A connection that dies inside a transaction block: asyncpg reports the loss, then raises an
InterfaceError ("the underlying connection is closed") as the block ends. The write-back must
read that as the database being away -- retry while the lease holds -- and not as a row the
database refused (which writes the batch row by row and may drop what the provider said)."""

from __future__ import annotations

import asyncpg
import pytest

from notifier.db.pool import unavailable
from notifier.workers import deliver


def closed_under_a_transaction() -> asyncpg.InterfaceError:
    """What ``async with conn.transaction()`` raises when its connection died mid-statement."""
    exc = asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed")
    exc.__context__ = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    return exc


class Lease:
    def remaining(self) -> float:
        return 60.0


class Channel:
    id = "sms"


def test_the_interface_error_of_a_lost_connection_means_unavailable() -> None:
    assert unavailable(closed_under_a_transaction())
    assert unavailable(asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"))
    # A real programming error is not the database being away.
    assert not unavailable(
        asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed")
    )


async def test_a_write_back_that_loses_its_connection_inside_the_transaction_is_retried() -> None:
    calls = 0

    async def write() -> list[asyncpg.Record]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise closed_under_a_transaction()
        return []

    assert await deliver._retrying(Lease(), Channel(), write) == []  # type: ignore[arg-type]
    assert calls == 3


async def test_a_programming_error_is_not_retried() -> None:
    async def write() -> list[asyncpg.Record]:
        raise asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed")

    with pytest.raises(asyncpg.InterfaceError):
        await deliver._retrying(Lease(), Channel(), write)  # type: ignore[arg-type]
