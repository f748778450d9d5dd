"""Measuring a case: the context a case runs in, bounded polling until its outcome is final,
repeated runs (the median stands), and figures against a baseline measured in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from arq.connections import ArqRedis

from benchmarks.harness.cpu import CpuMeter
from benchmarks.harness.receiver import Receiver
from benchmarks.harness.servers import BenchError
from benchmarks.harness.workers import ProcGroup, running
from notifier.db.pool import Pool
from notifier.settings import Settings

POLL_SECONDS = 0.02
REPORT_EVERY = 5.0


@dataclass
class CaseResult:
    case: str
    channel: str
    recipients: int
    seconds: float
    delivered: int
    failed: int
    fanout_seconds: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.recipients / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Bench:
    """What a case runs against: the database, the queue, the receiver, the CPU meter, the workers."""

    settings: Settings
    pool: Pool
    queue: ArqRedis
    receiver: Receiver
    meter: CpuMeter
    prefix: str
    timeout: float
    procs: ProcGroup | None = None


@contextlib.asynccontextmanager
async def with_workers(
    bench: Bench, name: str, argv: list[str], count: int, log_dir: Path, settings: Settings | None = None
) -> AsyncIterator[Bench]:
    """The bench with ``count`` processes of ``argv`` running (ready, watched by ``poll_until``,
    their CPU metered) for the block; stopped after it."""
    settings = settings or bench.settings
    prefix = f"{bench.prefix}-{name.replace(' ', '-')}-"
    async with running(name, argv, settings, count, prefix, log_dir, bench.pool) as group:
        bench.meter.workers = group.pids
        try:
            yield dataclasses.replace(bench, settings=settings, procs=group)
        finally:
            bench.meter.workers = []


async def poll_until(
    bench: Bench, what: str, start: float, check: Callable[[], Awaitable[tuple[bool, str]]]
) -> float:
    """Poll ``check`` until it holds; returns seconds since ``start``. Bounded by bench.timeout, and
    stops early when one of the bench's worker processes died."""
    last_report = start
    while True:
        done, progress = await check()
        now = time.perf_counter()
        if done:
            return now - start
        if now - start > bench.timeout:
            raise BenchError(f"{what}: not final within {bench.timeout:.0f}s ({progress})")
        if bench.procs is not None:
            bench.procs.check_alive()
        if now - last_report >= REPORT_EVERY:
            print(f"  .. {what} {now - start:6.1f}s: {progress}", file=sys.stderr, flush=True)
            last_report = now
        await asyncio.sleep(POLL_SECONDS)


class Timed(Protocol):
    seconds: float
    note: str


R = TypeVar("R", bound=Timed)


async def repeated(times: int, run: Callable[[], Awaitable[R]]) -> R:
    """Run a case ``times`` times; the median run stands for it (min-max in the note)."""
    runs = [await run() for _ in range(times)]
    runs.sort(key=lambda r: r.seconds)
    median = runs[len(runs) // 2]
    if len(runs) > 1:
        spread = f"median of {len(runs)} ({runs[0].seconds:.3f}-{runs[-1].seconds:.3f}s)"
        median.note = f"{median.note}; {spread}" if median.note else spread
    return median


async def each_case(repeat: int, cases: dict[str, Callable[[], Awaitable[CaseResult]]]) -> list[CaseResult]:
    """Every case ``repeat`` times, one after another (the median stands), each reported on stderr."""
    results = []
    for label, run in cases.items():
        result = await repeated(repeat, run)
        results.append(result)
        print(f"  {label}: {result.seconds:.3f}s, {result.rate:,.0f} deliveries/s", file=sys.stderr)
    return results


def against(value: float, baseline: float | None, form: str = "{:.1f}x") -> str:
    """``value`` as a multiple of ``baseline`` ("-" without one)."""
    if baseline is None or baseline == 0 or value != value or baseline != baseline:  # NaN: not measured
        return "-"
    return form.format(value / baseline)
