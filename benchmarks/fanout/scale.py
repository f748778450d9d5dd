"""In-app fan-out at growing audiences in the ``make run`` configuration: seconds from the 202 to
final and the peak memory of every process, per audience size (issue 13, targets 3 and 8).

Run::

    .venv/bin/python -m benchmarks.fanout.scale [--sizes 10000,100000] [--million] [--repeat 3]

Per size, in one embedded PostgreSQL + Redis: an organisation of that many members (set-based
SQL, not measured), then a fresh ``notifier dev --processes N`` (API + N worker processes, as
``make run``), a warm-up notice, and ``--repeat`` DINGs in the app to the whole tree, each timed
from the API's 202 until every recipient is final (delivered + failed == recipients == size and
the notice ``active``). While they run, the memory of every process is sampled every 20 ms:
the API process, each worker process, and each PostgreSQL backend (resident private memory,
``RssAnon``; the backends' shared buffers are the server's cache, not the audience's cost);
``VmHWM`` (the kernel's high-water mark of each process's whole resident set) is printed too.
``notifier dev`` is stopped after each size, so each size's high-water marks are its own.

Cost grows linearly when seconds per 100,000 recipients stay flat across sizes, and memory must
not grow with the audience (no process holds the list of recipients). ``--million`` adds the
1,000,000 size, run once (minutes: setting up a million members takes most of it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from pydantic import SecretStr

from benchmarks.fanout.org import create_org, member_id
from benchmarks.harness.cpu import _stat, _tree_cpu, find_server_pids, machine_idle_check
from benchmarks.harness.servers import BenchError, code_version, connected, servers, stop_on_sigterm
from benchmarks.makerun import PROGRESS, Dev, send_ding, wait_ready
from notifier.db.pool import Pool
from notifier.settings import Settings

WARMUP = 256
SAMPLE_SECONDS = 0.02


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _backends(postmaster: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _stat(int(entry.name))
            if f is not None and f[1] == str(postmaster):
                out.append(int(entry.name))
    return out


@dataclass
class Peaks:
    """The highest private resident memory seen per process role (kB), and VmHWM."""

    anon: dict[str, int] = field(default_factory=dict)
    hwm: dict[str, int] = field(default_factory=dict)

    def see(self, role: str, pid: int) -> None:
        self.anon[role] = max(self.anon.get(role, 0), _status_kb(pid, "RssAnon"))
        self.hwm[role] = max(self.hwm.get(role, 0), _status_kb(pid, "VmHWM"))


def sample(peaks: Peaks, dev: Dev, postmaster: int | None) -> None:
    peaks.see("api", dev.proc.pid)
    for i, pid in enumerate(sorted(dev.workers())):
        peaks.see(f"worker{i + 1}", pid)
    if postmaster is not None:
        for pid in _backends(postmaster):
            peaks.see("postgres (largest process)", pid)


@dataclass
class SizeResult:
    size: int
    seconds: list[float]
    failed: int
    peaks: Peaks
    cpu: dict[str, float]  # CPU seconds over all rounds: postgres, workers, api


async def one_round(
    dev: Dev, http: aiohttp.ClientSession, pool: Pool, audience: dict[str, Any], n: int
) -> tuple[float, int]:
    notice_id, start = await send_ding(dev, http, audience, ["inapp"])
    deadline = start + 900
    while True:
        r = await pool.fetchrow(PROGRESS, notice_id)
        assert r is not None
        if r["state"] == "active" and r["recipients"] == n and r["final"] == n:
            return time.perf_counter() - start, int(r["failed"])
        if time.perf_counter() > deadline:
            raise BenchError(f"{n} in-app recipients not final within 900s: {dict(r)}")
        dev.check()
        await asyncio.sleep(0.01)


async def run_size(opts: argparse.Namespace, settings: Settings, size: int, tmp: Path) -> SizeResult:
    async with connected(settings) as (pool, queue):
        postmaster, _ = await find_server_pids(pool, queue)
        prefix = "sc" + secrets.token_hex(3)
        t = time.perf_counter()
        # Setup statements over a million rows outlast the engine pool's command timeout.
        setup = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1, command_timeout=None)
        try:
            root = await create_org(setup, prefix, size, "http://127.0.0.1:9/hook")
        finally:
            await setup.close()
        print(f"setup: {size:,} members in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
        dev = Dev(settings, opts.processes, tmp / f"dev-{size}.log")
        peaks = Peaks()
        seconds: list[float] = []
        failed = 0
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(dev, http, opts.processes)
                warm = {"members": [member_id(prefix, i) for i in range(min(WARMUP, size))]}
                await one_round(dev, http, pool, warm, min(WARMUP, size))
                stop = asyncio.Event()

                async def sampler() -> None:
                    while not stop.is_set():
                        sample(peaks, dev, postmaster)
                        await asyncio.sleep(SAMPLE_SECONDS)

                task = asyncio.create_task(sampler())
                w0, a0 = dev.cpu()
                pg0 = _tree_cpu(postmaster) if postmaster else 0.0
                try:
                    for i in range(1 if size >= 1_000_000 else opts.repeat):  # a million: once
                        s, f = await one_round(dev, http, pool, {"units": [root]}, size)
                        seconds.append(s)
                        failed += f
                        print(f"  {size:,} round {i + 1}: {s:.3f}s", file=sys.stderr, flush=True)
                finally:
                    stop.set()
                    await task
                w1, a1 = dev.cpu()
                pg1 = _tree_cpu(postmaster) if postmaster else 0.0
                sample(peaks, dev, postmaster)
        except BaseException:
            print(dev.log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            await asyncio.to_thread(dev.stop)
        cpu = {"postgres": pg1 - pg0, "workers": w1 - w0, "api": a1 - a0}
        return SizeResult(size, seconds, failed, peaks, cpu)


def report(results: list[SizeResult], opts: argparse.Namespace) -> str:
    roles = sorted({r for res in results for r in res.peaks.anon}, key=lambda r: (r != "api", r))
    base = results[0]
    base_per = statistics.median(base.seconds) / base.size
    lines = [
        "",
        f"in-app fan-out scale: notifier dev --processes {opts.processes}, {opts.repeat} rounds per size "
        f"(median; min in brackets), code {code_version()}, "
        f"fanout_parts={os.environ.get('NOTIFIER_FANOUT_PARTS', Settings().fanout_parts)}",
        f"{'recipients':>10} {'s to final':>18} {'s per 100k':>10} {'vs linear':>9} {'failed':>6} "
        f"{'CPU us/recipient pg/workers':>27}  " + "  ".join(f"{r:>12}" for r in roles),
    ]
    for res in results:
        med = statistics.median(res.seconds)
        linear = med / (base_per * res.size)
        per = 1e6 / (res.size * len(res.seconds))
        cpu_pg, cpu_w = res.cpu["postgres"] * per, res.cpu["workers"] * per
        mem = "  ".join(f"{res.peaks.anon[r] / 1024:>5.0f}/{res.peaks.hwm[r] / 1024:<5.0f}MB" for r in roles)
        lines.append(
            f"{res.size:>10,} {med:>9.3f} ({min(res.seconds):.3f}) {med / res.size * 1e5:>10.3f} "
            f"{linear:>8.2f}x {res.failed:>6} {cpu_pg:>17.1f} / {cpu_w:<7.1f}  {mem}"
        )
    lines += [
        "memory: peak private resident (RssAnon) / high-water resident set (VmHWM), per process;",
        f"'vs linear': seconds against the {base.size:,} run scaled to the size (1.00x = linear)",
    ]
    for res in results:
        if res.size == 100_000:
            med = statistics.median(res.seconds)
            lines.append(
                f"target: 100,000 in-app final <= 1.0 s after the 202: {med:.3f} s "
                f"-> {'PASS' if med <= 1.0 and res.failed == 0 else 'MISS'}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout.scale", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated audience sizes")
    parser.add_argument("--million", action="store_true", help="add the 1,000,000 size (minutes)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="notifier dev --processes")
    parser.add_argument(
        "--parts", type=int, default=None, help="fanout_parts of notifier dev (default: its own; 1: serial)"
    )
    opts = parser.parse_args(argv)
    if opts.parts is not None:
        os.environ["NOTIFIER_FANOUT_PARTS"] = str(opts.parts)  # notifier dev inherits the environment
    sizes = sorted(
        {int(s) for s in opts.sizes.split(",") if s.strip()} | ({1_000_000} if opts.million else set())
    )
    if not sizes or min(sizes) < 1 or opts.repeat < 1:
        parser.error("--sizes must be positive integers and --repeat at least 1")
    stop_on_sigterm()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    results = []
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-scale-")))
            db_url, redis_url = stack.enter_context(servers(tmp))
            machine_idle_check()
            settings = Settings(
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"notifier:scale:{secrets.token_hex(4)}",
                webhook_secret=SecretStr(secret),
                allow_private_targets=True,
            )
            for size in sizes:
                results.append(asyncio.run(run_size(opts, settings, size, tmp)))
            print(report(results, opts), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started by the benchmark was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
