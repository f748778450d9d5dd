"""Background work yields the CPU to requests.

A worker process lowers its own scheduling priority (``worker_nice``): fanning out and delivering
a big notice may keep every core busy for seconds, and a member's read receipt or a secretary's
status read, served by the API process, should not wait behind it. On one machine with an
embedded or local PostgreSQL (``make run``, a small deployment) the database work a worker asks
for runs in the worker's own backends, so the worker lowers their priority too -- the API's
backends keep theirs. A backend is only touched when the server is on this host (a Unix socket
or a loopback address) and the process with that id is a PostgreSQL backend whose title names
this connection's client port; a remote server's backends are its own machine's
business.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


def lower_own_priority(nice: int) -> int:
    """Raise this process's niceness to ``nice`` (never lower it); returns the niceness now."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError:
            log.warning("could not lower the worker's scheduling priority", exc_info=True)
    return os.getpriority(os.PRIO_PROCESS, 0)


def database_is_local(database_url: str) -> bool:
    """Whether the server of ``database_url`` runs on this host (a Unix socket or loopback)."""
    parts = urlsplit(database_url)
    host = parts.hostname
    if host is None:  # libpq's default (a socket), or ?host=/path
        return True
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_our_backend(pid: int, client: str) -> bool:
    """Whether ``pid`` is the PostgreSQL backend serving the connection whose client end is
    ``client`` (``"[local]"`` on a Unix socket, else ``"(<port>)"``), as the backend's process
    title shows it: not a pid of another host or container, not the postmaster (whose children
    would inherit its priority), not a pooler. (The embedded server may run as its own user;
    renicing another user's process needs the right to, or fails harmlessly.)"""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return title.startswith("postgres: ") and client in title


def lower_backend_priority(pid: int, client: str, nice: int | None = None) -> bool:
    """Give the local PostgreSQL backend ``pid`` (serving ``client``: ``is_our_backend``) this
    process's niceness (or ``nice``) when that is lower priority than its own; True when it was
    changed."""
    nice = os.getpriority(os.PRIO_PROCESS, 0) if nice is None else nice
    if nice <= 0 or not is_our_backend(pid, client):
        return False
    with contextlib.suppress(OSError):  # gone, or not ours
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
            return True
    return False


def backend_priority_init(database_url: str, nice: int | None = None) -> Any:
    """An asyncpg pool ``init`` step for a worker's pool: its backends share the worker's
    (lowered) priority when the server is local; None when there is nothing to do. With ``nice``,
    that niceness instead (the API's pool for bulk work: its requests' backends keep theirs)."""
    wanted = os.getpriority(os.PRIO_PROCESS, 0) if nice is None else nice
    if wanted <= 0 or not database_is_local(database_url):
        return None

    async def init(conn: Any) -> None:
        port = await conn.fetchval("SELECT inet_client_port()")  # NULL on a Unix socket
        lower_backend_priority(conn.get_server_pid(), "[local]" if port is None else f"({port})", wanted)

    return init
