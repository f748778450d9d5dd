"""Webhook fan-out in the ``make run`` configuration against a plain aiohttp client, same run.

Run::

    .venv/bin/python -m benchmarks.makerun [--members 20000] [--repeat 3] [--processes N]

What it does:

* embedded PostgreSQL + Redis in a temp dir (as ``benchmarks.fanout``), N members with one webhook
  contact each pointing at the counting, signature-checking receiver of ``benchmarks.harness``;
* starts ``notifier dev`` (what ``make run`` runs: the API in one process and ``--processes``
  worker processes, default the CPU count) against those servers, and waits for ``/healthz``;
* per round, interleaved: the **plain client** -- one process, one ``aiohttp.ClientSession``
  (keep-alive, ``delivery_concurrency`` requests in flight), posting N Standard-Webhooks-signed
  JSON bodies to the same receiver -- then **ours**: ``POST /v1/notices`` (a DING to the whole
  tree, webhook) with the clock started at the 202, until the receiver counted N new distinct,
  correctly signed messages and every recipient is final;
* prints per round the seconds, rates, ours / plain, and CPU: worker processes per delivery
  against the plain client per request, and PostgreSQL per delivery; min and median over rounds.

Targets (issue 13): ours >= 1.3x the plain client; worker CPU per delivery <= 1.2x the plain
client's CPU per request; PostgreSQL <= 25 us per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from benchmarks.fanout.org import create_org
from benchmarks.harness.cpu import _cpu_of, _tree_cpu, find_server_pids, machine_idle_check
from benchmarks.harness.receiver import Receiver
from benchmarks.harness.servers import ROOT, BenchError, code_version, connected, servers, stop_on_sigterm
from notifier.channels.webhook import decode_secret, sign
from notifier.embedded import free_port
from notifier.settings import Settings

WARMUP = 256
PROGRESS = """
SELECT n.state, coalesce(sum(c.recipients), 0)::bigint AS recipients,
       coalesce(sum(c.delivered), 0)::bigint + coalesce(sum(c.failed), 0)::bigint AS final,
       coalesce(sum(c.failed), 0)::bigint AS failed
FROM notices n LEFT JOIN notice_counts c ON c.notice_id = n.id WHERE n.id = $1 GROUP BY n.id"""


@dataclass
class Round:
    plain_s: float
    plain_cpu: float
    ours_s: float
    workers_cpu: float
    api_cpu: float
    pg_cpu: float
    failed: int


# --- the plain client (its own process: one process, one session) -----------------------------


async def _plain(url: str, n: int, secret: str, concurrency: int) -> dict[str, float]:
    key = decode_secret(secret)
    run = secrets.token_hex(4)
    sem = asyncio.Semaphore(concurrency)
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            body = json.dumps(
                {"notice_id": run, "member_id": f"m{i}", "kind": "ding", "title": "t", "body": "b"},
                separators=(",", ":"),
            ).encode()
            msg_id = f"plain_{run}_{i}"
            now = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": sign(key, msg_id, now, body),
            }
            async with sem:
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        cpu0 = sum(os.times()[:2])
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - t0
        cpu = sum(os.times()[:2]) - cpu0
    return {"seconds": seconds, "cpu": cpu, "errors": errors}


def plain_client_main(url: str, n: int, concurrency: int) -> None:
    secret = os.environ["NOTIFIER_WEBHOOK_SECRET"]
    print(json.dumps(asyncio.run(_plain(url, n, secret, concurrency))), flush=True)


def run_plain(url: str, n: int, secret: str, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.makerun", "--plain-client", url, str(n), str(concurrency)],
        env={**os.environ, "NOTIFIER_WEBHOOK_SECRET": secret},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise BenchError(f"plain client: {result['errors']} of {n} requests failed")
    return result


# --- ours: notifier dev ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                if stat[stat.rindex(")") + 2 :].split()[1] == str(pid):
                    out.append(int(entry.name))
    return out


class Dev:
    """``notifier dev --processes N`` against the benchmark's servers."""

    def __init__(self, settings: Settings, processes: int, log: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(16)
        env = {
            **os.environ,
            "NOTIFIER_DATABASE_URL": settings.database_url,
            "NOTIFIER_REDIS_URL": settings.redis_url,
            "NOTIFIER_QUEUE_NAME": settings.queue_name,
            "NOTIFIER_WEBHOOK_SECRET": settings.webhook_secret.get_secret_value(),
            "NOTIFIER_ADMIN_TOKEN": self.token,
            "NOTIFIER_HOST": "127.0.0.1",
            "NOTIFIER_PORT": str(self.port),
            "NOTIFIER_DATA_DIR": str(log.parent / "dev-data"),
        }
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notifier", "dev", "--processes", str(processes)],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return [p for p in _children(self.proc.pid) if b"spawn_main" in _cmdline(p)]

    def cpu(self) -> tuple[float, float]:
        """(worker processes, the API process)."""
        return sum(_cpu_of(p) for p in self.workers()), _cpu_of(self.proc.pid)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"notifier dev exited with {self.proc.returncode}; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: what Ctrl-C sends
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def wait_ready(dev: Dev, http: aiohttp.ClientSession, processes: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dev.check()
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{dev.url}/readyz") as resp:
                if resp.status == 200 and len(dev.workers()) == processes:
                    return
        await asyncio.sleep(0.1)
    raise BenchError(f"notifier dev not ready within 120s; see {dev.log}")


async def send_ding(
    dev: Dev, http: aiohttp.ClientSession, audience: dict[str, Any], channels: list[str] | None = None
) -> tuple[str, float]:
    body = {"kind": "ding", "title": "Benchmark", "body": "make run benchmark", "audience": audience}
    body["channels"] = channels or ["webhook"]
    headers = {"Authorization": f"Bearer {dev.token}"}
    async with http.post(f"{dev.url}/v1/notices", json=body, headers=headers) as resp:
        text = await resp.text()
        if resp.status != 202:
            raise BenchError(f"POST /v1/notices answered {resp.status}: {text[:300]}")
        return str(json.loads(text)["id"]), time.perf_counter()


async def run_ours(
    dev: Dev, http: aiohttp.ClientSession, pool: Any, receiver: Receiver, audience: dict[str, Any], n: int
) -> tuple[float, int]:
    hooks0 = receiver.distinct()
    notice_id, start = await send_ding(dev, http, audience)
    deadline = start + 600
    while True:
        # The receiver's count is shared memory (free to read); the database is asked only once
        # every message arrived, so the benchmark's polling does not add to PostgreSQL's CPU.
        hooks = receiver.distinct() - hooks0
        if hooks >= n:
            r = await pool.fetchrow(PROGRESS, notice_id)
            if r["state"] == "active" and r["recipients"] == n and r["final"] == n:
                return time.perf_counter() - start, int(r["failed"])
        if time.perf_counter() > deadline:
            raise BenchError(f"ours not final within 600s: webhooks={hooks}")
        dev.check()
        await asyncio.sleep(0.005 if hooks < n else 0.02)


async def benchmark(
    opts: argparse.Namespace, settings: Settings, receiver: Receiver, tmp: Path
) -> list[Round]:
    async with connected(settings) as (pool, queue):
        postmaster, _ = await find_server_pids(pool, queue)
        prefix = "mr" + secrets.token_hex(3)
        root = await create_org(pool, prefix, opts.members, receiver.url)
        dev = Dev(settings, opts.processes, tmp / "dev.log")
        rounds = []
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(dev, http, opts.processes)
                warm = {"members": [f"{prefix}-m{i:07d}" for i in range(WARMUP)]}
                await run_ours(dev, http, pool, receiver, warm, WARMUP)
                concurrency = settings.delivery_concurrency
                await asyncio.to_thread(
                    run_plain, receiver.url, WARMUP, settings.webhook_secret.get_secret_value(), concurrency
                )
                for i in range(opts.repeat):
                    plain = await asyncio.to_thread(
                        run_plain,
                        receiver.url,
                        opts.members,
                        settings.webhook_secret.get_secret_value(),
                        concurrency,
                    )
                    w0, a0 = dev.cpu()
                    pg0 = _tree_cpu(postmaster) if postmaster else 0.0
                    seconds, failed = await run_ours(
                        dev, http, pool, receiver, {"units": [root]}, opts.members
                    )
                    w1, a1 = dev.cpu()
                    pg1 = _tree_cpu(postmaster) if postmaster else 0.0
                    r = Round(plain["seconds"], plain["cpu"], seconds, w1 - w0, a1 - a0, pg1 - pg0, failed)
                    rounds.append(r)
                    print(f"  round {i + 1}: {format_round(r, opts.members)}", file=sys.stderr, flush=True)
        except BaseException:
            print(dev.log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            await asyncio.to_thread(dev.stop)
        return rounds


def format_round(r: Round, n: int) -> str:
    return (
        f"plain {r.plain_s:.3f}s ({n / r.plain_s:,.0f}/s, {r.plain_cpu / n * 1e6:.0f} us CPU/request)  "
        f"ours {r.ours_s:.3f}s ({n / r.ours_s:,.0f}/s)  ours/plain {r.plain_s / r.ours_s:.2f}x  "
        f"workers {r.workers_cpu / n * 1e6:.0f} us/delivery ({r.workers_cpu / r.plain_cpu:.2f}x plain)  "
        f"api {r.api_cpu:.2f}s  postgres {r.pg_cpu / n * 1e6:.1f} us/delivery  failed {r.failed}"
    )


def report(rounds: list[Round], opts: argparse.Namespace) -> str:
    n = opts.members

    def mm(values: list[float], form: str) -> str:
        return f"min {form.format(min(values))}  median {form.format(statistics.median(values))}"

    speed = [r.plain_s / r.ours_s for r in rounds]
    worker_ratio = [r.workers_cpu / r.plain_cpu for r in rounds]
    pg_us = [r.pg_cpu / n * 1e6 for r in rounds]
    lines = [
        "",
        f"make-run webhook benchmark: {n:,} recipients, notifier dev --processes {opts.processes}, "
        f"{os.cpu_count()} CPUs, {len(rounds)} interleaved rounds, code {code_version()}",
        *(f"  round {i + 1}: {format_round(r, n)}" for i, r in enumerate(rounds)),
        "",
        f"ours / plain client (deliveries/s over requests/s): {mm(speed, '{:.2f}x')}   target >= 1.30x",
        f"worker CPU per delivery / plain client CPU per request: {mm(worker_ratio, '{:.2f}x')}"
        "   target <= 1.20x",
        f"PostgreSQL CPU per delivery: {mm(pg_us, '{:.1f} us')}   target <= 25 us",
        f"failed deliveries: {sum(r.failed for r in rounds)}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.makerun", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (plain, ours)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="notifier dev --processes")
    parser.add_argument("--plain-client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_client:
        url, n, concurrency = args.plain_client
        plain_client_main(url, int(n), int(concurrency))
        return 0
    stop_on_sigterm()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-makerun-")))
            db_url, redis_url = stack.enter_context(servers(tmp))
            machine_idle_check()
            receiver = Receiver(secret)
            stack.callback(receiver.stop)
            receiver.start()
            settings = Settings(
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"notifier:makerun:{secrets.token_hex(4)}",
                webhook_secret=SecretStr(secret),
                allow_private_targets=True,
            )
            rounds = asyncio.run(benchmark(args, settings, receiver, tmp))
            print(report(rounds, args), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started by the benchmark was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
