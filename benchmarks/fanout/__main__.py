"""``python -m benchmarks.fanout``: see the package docstring."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from benchmarks import fanout
from benchmarks.fanout import CHANNELS, Options, engine, naive
from benchmarks.fanout.org import BRANCHES, GROUPS, create_org
from benchmarks.fanout.report import format_report
from benchmarks.harness.cpu import CpuMeter, find_server_pids, machine_idle_check
from benchmarks.harness.measure import Bench, CaseResult
from benchmarks.harness.receiver import Receiver
from benchmarks.harness.servers import BenchError, connected, servers, stop_on_sigterm
from notifier.settings import Settings


async def run_benchmark(
    opts: Options, settings: Settings, receiver: Receiver, log_dir: Path
) -> list[CaseResult]:
    async with connected(settings) as (pool, queue):
        postmaster, redis_pid = await find_server_pids(pool, queue)
        meter = CpuMeter(postgres=postmaster, redis=redis_pid, receiver=receiver.pid)
        prefix = "bench" + secrets.token_hex(3)
        bench = Bench(settings, pool, queue, receiver, meter, prefix, opts.timeout)
        t = time.perf_counter()
        root = await create_org(pool, prefix, opts.members, receiver.url)
        print(
            f"setup: {opts.members:,} members under {root} ({1 + BRANCHES + GROUPS} units), "
            f"webhook contacts -> {receiver.url} in {time.perf_counter() - t:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        results = await engine.phase(bench, opts, root, log_dir)
        if opts.naive:
            results += await naive.phase(bench, opts, root, log_dir)
        return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout", description=(fanout.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--members", type=int, default=10_000, help="recipients (default 10,000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--channels", default=",".join(CHANNELS), help="comma-separated cases to run: inapp,webhook"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--naive-cap", type=int, default=5_000, help="max naive recipients (default 5,000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the median is reported")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-case bound in seconds")
    parser.add_argument("--naive-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    if not channels or any(c not in CHANNELS for c in channels):
        parser.error(f"--channels takes a comma-separated subset of {','.join(CHANNELS)}")
    if min(args.members, args.workers, args.naive_cap, args.repeat) < 1:
        parser.error("--members, --workers, --naive-cap and --repeat must be positive")
    args.channels = channels
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_worker:
        naive.run_worker()
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_on_sigterm()
    opts = Options(
        args.members,
        args.workers,
        args.channels,
        not args.no_naive,
        args.naive_cap,
        args.timeout,
        args.repeat,
    )
    secret = (
        os.environ.get("NOTIFIER_WEBHOOK_SECRET")
        or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-bench-")))
            db_url, redis_url = stack.enter_context(servers(tmp))
            machine_idle_check()
            receiver = Receiver(secret)
            stack.callback(receiver.stop)
            receiver.start()
            settings = Settings(
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"notifier:bench:{secrets.token_hex(4)}",
                webhook_secret=SecretStr(secret),
                allow_private_targets=True,
            )
            results = asyncio.run(run_benchmark(opts, settings, receiver, tmp))
            print(format_report(results, opts, settings, receiver.snapshot()), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started by the benchmark was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
