"""``notifier send [--watch]``, ``status`` and ``roll-call`` as subprocesses against a real server on
loopback (create_app + a worker, real PostgreSQL and Redis)."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from notifier.app import create_app
from notifier.client import Client, Conflict
from notifier.client.models import MemberBatchItem, UnitIn
from notifier.settings import Settings
from tests.conftest import ADMIN_TOKEN, running_worker, wait_until

WAIT = 30.0
MEMBERS = [f"{b}{i}" for b in ("east", "west") for i in (1, 2)]


@pytest.fixture
async def live(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[str]:
    """A county with two branches of two members, served on a loopback port with a worker."""
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        async with Client(url, ADMIN_TOKEN) as api:
            await api.put_unit("county", UnitIn(name="County"))
            for b in ("east", "west"):
                await api.put_unit(b, UnitIn(name=b.title(), parent_id="county"))
            await api.put_members(
                [MemberBatchItem(id=m, name=f"Officer {m}", units=[m[:4]]) for m in MEMBERS]
            )
        async with running_worker(settings):
            yield url
    finally:
        await server.close()


async def cli(url: str, *args: str, token: str | None = ADMIN_TOKEN) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env["NOTIFIER_URL"] = url
    if token is not None:
        env["NOTIFIER_TOKEN"] = token
    env["COLUMNS"] = "160"
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifier",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(WAIT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def sent_id(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT):
        line = (await proc.stdout.readline()).decode()
    assert line.startswith("sent notice "), line
    return line.split()[2]


async def read_all(url: str, notice_id: str, members: list[str]) -> None:
    async with Client(url, ADMIN_TOKEN) as api:
        for m in members:

            async def recorded(member: str = m) -> bool:
                try:
                    await api.read(notice_id, member)
                except Conflict:  # still fanning out
                    return False
                return True

            await wait_until(recorded)


SEND = ("send", "--unit", "county", "--title", "Muster", "--body", "Report in", "--channels", "inapp")


async def test_send_watch_follows_the_reads_until_everyone_has_read(live: str) -> None:
    proc = await cli(live, *SEND, "--watch")
    nid = await sent_id(proc)
    await read_all(live, nid, MEMBERS)
    code, out, err = await finish(proc)
    assert code == 0, err
    assert f"everyone has read notice {nid}" in out
    assert "read 4/4" in out and "unread 0" in out
    assert "East (east)" in out and "West (west)" in out
    async with Client(live, ADMIN_TOKEN) as api:
        assert (await api.get_notice(nid)).counts.read == 4


async def test_ctrl_c_stops_the_watch_cleanly(live: str) -> None:
    proc = await cli(live, *SEND, "--watch")
    nid = await sent_id(proc)
    await read_all(live, nid, MEMBERS[:1])
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT):
        assert (await proc.stdout.readline()).decode().startswith(f"watching notice {nid}")
    proc.send_signal(signal.SIGINT)
    code, out, err = await finish(proc)
    assert code == 0, err
    assert "Traceback" not in err
    assert f"stopped watching notice {nid}" in out


async def test_send_uses_one_idempotency_key_once(live: str) -> None:
    first = await cli(live, *SEND, "--idempotency-key", "muster-7")
    again = await cli(live, *SEND, "--idempotency-key", "muster-7")
    (c1, o1, _), (c2, o2, _) = await finish(first), await finish(again)
    assert c1 == c2 == 0
    assert o1.split()[2] == o2.split()[2]
    fresh = await finish(await cli(live, *SEND))
    assert fresh[1].split()[2] != o1.split()[2]


async def test_status_and_roll_call(live: str) -> None:
    nid = await sent_id(await cli(live, *SEND))
    await read_all(live, nid, ["east1"])
    code, out, err = await finish(await cli(live, "status", nid, "--unit", "county"))
    assert code == 0, err
    assert "Muster [ding, active]" in out and "read 1/4" in out and "unread 3" in out
    code, out, err = await finish(await cli(live, "roll-call", nid))
    assert code == 0, err
    assert {m for m in MEMBERS if m in out} == {"east2", "west1", "west2"}
    code, out, err = await finish(await cli(live, "roll-call", nid, "--csv"))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["member_id"] for r in rows) == ["east2", "west1", "west2"]


async def test_errors_are_one_line(live: str) -> None:
    code, _, err = await finish(await cli(live, "status", "00000000-0000-0000-0000-000000000000"))
    assert code == 1 and "404 Not Found" in err and "Traceback" not in err
    code, _, err = await finish(await cli(live, *SEND[:-1], "carrier-pigeon"))
    assert code == 1 and "channels[0]" in err
    code, _, err = await finish(await cli(live, "status", "x", token=None))
    assert code == 1 and "NOTIFIER_TOKEN" in err
