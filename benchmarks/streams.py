"""One API process holding many live streams of one notice under a read storm, against the same
process under the same storm with no stream and with one.

    .venv/bin/python -m benchmarks.streams [--streams 1000] [--reads 1500] [--members 3000]

The API runs in its own process (``notifier`` app, as ``serve`` runs it) on loopback, so its CPU is
read from /proc alone; this process fans the notices out (the worker's own ``fanout_notice``) and
posts the receipts (16 at a time); a third process holds the streams (aiohttp, counting
``event: counts`` frames). Three phases, each on a fresh notice to the same ``--members``
members, each storm the same ``--reads`` receipts: 0 streams (the baseline: what the storm itself
costs), 1 stream, ``--streams`` streams, after an unreported warm-up storm. Printed per phase: the
streams held to the end, the updates each stream received (after its first event), the API
process's CPU-seconds, and its CPU per update per stream: all of it, and what the streams added
over the baseline; "storm s" is how long the reads took to post. Bounded: every wait has a limit.
Embedded PostgreSQL and Redis unless NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL are set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from benchmarks.harness.cpu import _cpu_of, machine_busy
from benchmarks.harness.servers import BenchError, code_version, connected, servers, stop_on_sigterm
from notifier.channels.registry import build_registry
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.fanout import fanout_notice

TOKEN = "bench-streams-admin-token"
CONCURRENT_READS = 16
WAIT_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve() -> None:
    """The API process (``--serve``): the app from the environment's settings, until SIGTERM."""
    from notifier.__main__ import run_api

    asyncio.run(run_api(Settings()))


@dataclass
class Phase:
    name: str
    streams: int
    held: int
    updates: list[int]
    cpu: float
    seconds: float


class Watcher:
    """One stream: counts its events, and knows when it has seen every read."""

    def __init__(self) -> None:
        self.events = 0
        self.done = asyncio.Event()
        self.opened = asyncio.Event()
        self.held = False

    async def run(self, session: aiohttp.ClientSession, url: str, reads: int) -> None:
        target = f'"read":{reads},'.encode()
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as resp:
            if resp.status != 200:
                raise BenchError(f"stream answered {resp.status}")
            async for line in resp.content:
                if line.startswith(b"event: counts"):
                    self.events += 1
                elif line.startswith(b"data: "):
                    self.opened.set()
                    if target in line:
                        self.held = True
                        self.done.set()
                        return


async def api(
    session: aiohttp.ClientSession, base: str, method: str, path: str, body: Any, status: int
) -> Any:
    async with session.request(method, base + path, json=body) as resp:
        if resp.status != status:
            raise BenchError(f"{method} {path}: {resp.status} {await resp.text()}")
        return await resp.json()


async def hold(args: argparse.Namespace) -> None:
    """The stream holder (``--hold N``): N streams of ``--url``; prints ``open`` once every one has
    its first event, then ``done [updates after the first, per stream]`` once each has seen
    ``--reads`` reads."""
    watchers = [Watcher() for _ in range(args.hold)]
    headers = {"Authorization": f"Bearer {os.environ['BENCH_TOKEN']}"}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        tasks = [asyncio.create_task(w.run(session, args.url, args.reads)) for w in watchers]
        async with asyncio.timeout(WAIT_SECONDS):
            for w in watchers:
                await w.opened.wait()
        first = [w.events for w in watchers]
        print("open", flush=True)
        async with asyncio.timeout(WAIT_SECONDS):
            for w in watchers:
                await w.done.wait()
        updates = [w.events - f for w, f in zip(watchers, first, strict=True)]
        print("done", json.dumps({"updates": updates, "held": sum(w.held for w in watchers)}), flush=True)
        await asyncio.gather(*tasks, return_exceptions=True)


async def line_of(proc: asyncio.subprocess.Process, expected: str) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT_SECONDS):
        line = (await proc.stdout.readline()).decode()
    if not line.startswith(expected):
        raise BenchError(f"the stream holder said {line!r}, not {expected!r}")
    return line[len(expected) :].strip()


async def phase(
    name: str,
    n: int,
    args: argparse.Namespace,
    deps: WorkerDeps,
    session: aiohttp.ClientSession,
    base: str,
    pid: int,
) -> Phase:
    body = {"kind": "notice", "title": "Bench", "body": "Read me", "audience": {"units": ["county"]}}
    nid = (await api(session, base, "POST", "/v1/notices", body, 202))["id"]
    await fanout_notice(deps, nid)
    holder = None
    if n:
        url = f"{base}/v1/notices/{nid}/stream?unit=county"
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.streams",
            "--hold",
            str(n),
            "--url",
            url,
            "--reads",
            str(args.reads),
            env={**os.environ, "BENCH_TOKEN": TOKEN},
            stdout=asyncio.subprocess.PIPE,
        )
    try:
        if holder is not None:
            await line_of(holder, "open")
        cpu0, t0 = _cpu_of(pid), time.monotonic()
        queue: asyncio.Queue[str] = asyncio.Queue()
        for i in range(args.reads):
            queue.put_nowait(f"m{i:05d}")

        async def reader() -> None:
            while not queue.empty():
                m = queue.get_nowait()
                await api(
                    session,
                    base,
                    "POST",
                    f"/v1/notices/{nid}/receipts",
                    {"member_id": m, "type": "read"},
                    200,
                )

        await asyncio.gather(*(reader() for _ in range(CONCURRENT_READS)))
        storm = time.monotonic() - t0
        result: dict[str, Any] = {"updates": [], "held": 0}
        if holder is not None:
            result = json.loads(await line_of(holder, "done"))
        await asyncio.sleep(1.5)  # the hub's last regular poll, in every phase alike
        cpu = _cpu_of(pid) - cpu0
        return Phase(name, n, int(result["held"]), list(result["updates"]), cpu, storm)
    finally:
        if holder is not None and holder.returncode is None:
            holder.terminate()
            await holder.wait()


async def run(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp,
        servers(Path(tmp)) as (db_url, redis_url),
    ):
        port = free_port()
        settings = Settings(
            database_url=db_url,
            redis_url=redis_url,
            admin_token=SecretStr(TOKEN),
            host="127.0.0.1",
            port=port,
            queue_name="bench:streams",
        )
        async with connected(settings) as (pool, queue):
            env = {
                **os.environ,
                "NOTIFIER_DATABASE_URL": db_url,
                "NOTIFIER_REDIS_URL": redis_url,
                "NOTIFIER_ADMIN_TOKEN": TOKEN,
                "NOTIFIER_PORT": str(port),
                "NOTIFIER_HOST": "127.0.0.1",
                "NOTIFIER_QUEUE_NAME": "bench:streams",
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.streams", "--serve", env=env
            )
            base = f"http://127.0.0.1:{port}"
            try:
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
                    await until_up(session, base, proc)
                    await api(session, base, "PUT", "/v1/units/county", {"name": "County"}, 201)
                    for b in range(3):
                        await api(
                            session,
                            base,
                            "PUT",
                            f"/v1/units/b{b}",
                            {"name": f"Branch {b}", "parent_id": "county"},
                            201,
                        )
                    people = [
                        {"id": f"m{i:05d}", "name": f"Officer {i}", "units": [f"b{i % 3}"]}
                        for i in range(args.members)
                    ]
                    await api(session, base, "POST", "/v1/members:batch", {"members": people}, 200)
                    deps = WorkerDeps(settings, pool, queue, build_registry(settings))
                    busy0 = machine_busy()
                    await phase("warm-up", 1, args, deps, session, base, proc.pid)  # not reported
                    results = [
                        await phase(name, n, args, deps, session, base, proc.pid)
                        for name, n in (("baseline", 0), ("one stream", 1), ("many streams", args.streams))
                    ]
                    busy = machine_busy() - busy0
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
    report(args, results, busy)


async def until_up(session: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise BenchError("the API process exited")
        try:
            async with session.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise BenchError("the API process did not come up")


def report(args: argparse.Namespace, results: list[Phase], busy: float) -> None:
    base = results[0]
    print(
        f"benchmarks.streams at {code_version()}: {args.members} members, {args.reads} reads per storm "
        f"({CONCURRENT_READS} at a time), one API process"
    )
    print(
        f"{'phase':14} {'streams':>7} {'held':>5} {'updates/stream':>24} {'API CPU-s':>9} {'storm s':>7} "
        f"{'API CPU-ms per update per stream: all, added':>45}"
    )
    for r in results:
        ups = r.updates or [0]
        spread = f"{statistics.mean(ups):.1f} (min {min(ups)}, max {max(ups)})" if r.updates else "-"
        per = "-"
        total_updates = sum(r.updates)
        if total_updates:
            per = f"{1000 * r.cpu / total_updates:.3f}, {1000 * (r.cpu - base.cpu) / total_updates:.3f}"
        print(
            f"{r.name:14} {r.streams:>7} {r.held:>5} {spread:>24} {r.cpu:>9.2f} {r.seconds:>7.1f} {per:>45}"
        )
    many = results[-1]
    print(
        f"streams held: {many.held}/{many.streams}; CPU the {many.streams} streams added to the storm: "
        f"{many.cpu - base.cpu:.2f} s over {sum(many.updates)} updates delivered "
        f"({(many.cpu - base.cpu) / max(1, many.streams):.4f} s per stream)"
    )
    print(f"machine CPU-s busy during the phases (all processes, other load included): {busy:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=1500)
    parser.add_argument("--members", type=int, default=3000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.hold:
        asyncio.run(hold(args))
        return
    if args.reads > args.members:
        parser.error("--reads must not exceed --members")
    stop_on_sigterm()
    try:
        asyncio.run(run(args))
    except BenchError as exc:
        sys.exit(f"benchmarks.streams: {exc}")


if __name__ == "__main__":
    main()
