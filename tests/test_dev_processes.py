"""``notifier dev --processes 2`` (what ``make run`` starts, with the CPU count as default): the API
in the parent and two worker processes that deliver; a worker killed from outside is replaced;
Ctrl-C (SIGINT) stops everything -- every child gone, exit status 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from notifier.embedded import free_port
from notifier.settings import Settings
from tests.conftest import ADMIN_TOKEN, WEBHOOK_SECRET, auth, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (zombies count as gone)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == str(pid) and fields[0] != "Z":
            out.add(int(entry.name))
    return out


def _workers(pid: int) -> set[int]:
    found = set()
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.add(child)
    return found


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "notifier", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _sync(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def predicate() -> bool:
        return check()

    return predicate


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


async def test_dev_runs_worker_processes_and_ctrl_c_stops_them_all(
    client: TestClient[Any, Any],
    receiver: WebhookReceiver,
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await build_org(client, groups=1, members=4)
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{receiver.url}"}}',
    )
    port = free_port()
    env = {
        **os.environ,
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_REDIS_URL": settings.redis_url,
        "NOTIFIER_DATA_DIR": str(tmp_path / "data"),
        "NOTIFIER_HOST": "127.0.0.1",
        "NOTIFIER_PORT": str(port),
        "NOTIFIER_ADMIN_TOKEN": ADMIN_TOKEN,
        "NOTIFIER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NOTIFIER_QUEUE_NAME": "notifier:dev-processes",
    }
    log = tmp_path / "dev.log"
    dev = _start(["dev", "--processes", "2"], env, log)
    seen: set[int] = set()
    try:
        await wait_until(_sync(lambda: len(_workers(dev.pid)) == 2), within=60)
        first = _workers(dev.pid)
        seen |= first
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:

            async def api_up() -> bool:
                try:
                    async with http.get(f"{url}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(api_up, within=60)
            ding = {"kind": "ding", "title": "t", "body": "b", "audience": {"units": ["g0"]}}
            async with http.post(
                f"{url}/v1/notices", json={**ding, "channels": ["webhook"]}, headers=auth()
            ) as resp:
                assert resp.status == 202, await resp.text()
            # The worker processes deliver (the API process runs no worker).
            await wait_until(_sync(lambda: len(receiver.messages) >= 4), within=60)

        # Requests first (workers/priority.py): the workers run at the configured niceness, and so
        # do their backends of this (local) PostgreSQL; the API process and other sessions do not.
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert {os.getpriority(os.PRIO_PROCESS, w) for w in first} == {max(base, Settings().worker_nice)}
        assert os.getpriority(os.PRIO_PROCESS, dev.pid) == base
        backends: list[int] = []
        niced: list[int] = []

        async def both_pools_niced() -> bool:
            # Two per worker pool at least. A worker that took no job may still be opening its
            # pool when the other has delivered everything: wait for it, not for a moment.
            rows = await db.fetch("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'")
            backends[:] = [r["pid"] for r in rows]
            niced[:] = [pid for pid in backends if os.getpriority(os.PRIO_PROCESS, pid) > base]
            return len(niced) >= 4

        try:
            await wait_until(both_pools_niced, within=30)
        except AssertionError:
            raise AssertionError(("fewer than 4 niced backends", backends, niced)) from None
        assert os.getpriority(os.PRIO_PROCESS, db.get_server_pid()) == base
        assert len(backends) > len(niced) + 1  # the API's sessions keep their priority

        # A worker killed from outside is replaced; N holds.
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        now: set[int] = set()

        def replaced() -> bool:  # one read of the workers: the one checked is the one kept
            now.clear()
            now.update(_workers(dev.pid))
            return len(now) == 2 and victim not in now

        await wait_until(_sync(replaced), within=60)
        seen |= now
        assert dev.poll() is None, log.read_text()
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(60)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait()
    assert dev.returncode == 0, log.read_text()[-4000:]
    assert len(seen) == 3
    assert not [pid for pid in seen if _alive(pid)], log.read_text()[-4000:]
    assert not _children(dev.pid)
    assert "notifier stopped" in log.read_text()
