"""Which processes a worker lowers the priority of (workers/priority.py): only the PostgreSQL
backend serving its own connection, found by the client port in the backend's title; never the
postmaster (its children would inherit the priority), another connection's backend, or a process
that is not PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from notifier.workers.priority import database_is_local, is_our_backend


async def test_only_the_backend_of_this_connection_is_ours(db: asyncpg.Connection) -> None:
    port = await db.fetchval("SELECT inet_client_port()")
    pid = db.get_server_pid()
    assert is_our_backend(pid, f"({port})")
    assert not is_our_backend(pid, f"({port + 1})")  # another connection's port
    stat = Path(f"/proc/{pid}/stat").read_text()  # noqa: ASYNC240 -- procfs, no disk
    parent = int(stat.rsplit(")", 1)[1].split()[1])  # the postmaster
    assert not is_our_backend(parent, f"({port})")
    assert not is_our_backend(os.getpid(), f"({port})")  # not PostgreSQL
    assert not is_our_backend(2**22 + 1, f"({port})")  # no such process


def test_only_a_server_on_this_host_is_local() -> None:
    assert database_is_local("postgresql://u@127.0.0.1:5432/db")
    assert database_is_local("postgresql://u@[::1]:5432/db")
    assert database_is_local("postgresql://u@localhost/db")
    assert database_is_local("postgresql:///db?host=/run/postgresql")
    assert not database_is_local("postgresql://u@10.0.0.5:5432/db")
    assert not database_is_local("postgresql://u@db.internal:5432/db")
