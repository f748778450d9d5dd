"""Where the CPU went: per process from /proc (Linux; silently empty elsewhere or for servers on
another machine), PostgreSQL with its backends, and the whole machine (to show other load)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from arq.connections import ArqRedis

from notifier.db.pool import Pool

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm) "


def _cpu_of(pid: int, reaped_children: bool = False) -> float:
    f = _stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if reaped_children else 0)
    return ticks / _CLK_TCK


def _tree_cpu(parent: int) -> float:
    """A server and its live children (PostgreSQL backends); exited children are in cutime."""
    total = _cpu_of(parent, reaped_children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _stat(int(entry.name))
            if f is not None and f[1] == str(parent):
                total += _cpu_of(int(entry.name))
    return total


def machine_busy() -> float:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK  # minus idle and iowait


@dataclass
class CpuMeter:
    postgres: int | None = None
    redis: int | None = None
    receiver: int | None = None
    workers: list[int] = field(default_factory=list)

    def snapshot(self) -> dict[str, float]:
        snap = {
            "workers": sum(_cpu_of(p) for p in self.workers),
            "bench": sum(os.times()[:2]),
            "machine": machine_busy(),
        }
        if self.postgres is not None:
            snap["postgres"] = _tree_cpu(self.postgres)
        if self.redis is not None:
            snap["redis"] = _cpu_of(self.redis)
        if self.receiver is not None:
            snap["receiver"] = _cpu_of(self.receiver)
        return snap


async def find_server_pids(pool: Pool, queue: ArqRedis) -> tuple[int | None, int | None]:
    """The postmaster (parent of our backend) and redis-server, when they run on this machine."""
    backend = await pool.fetchval("SELECT pg_backend_pid()")
    stat = _stat(int(backend))
    postmaster = int(stat[1]) if stat is not None else None
    info = await queue.info("server")
    redis_pid = int(info.get("process_id", 0)) or None
    if redis_pid is not None and _stat(redis_pid) is None:
        redis_pid = None
    return postmaster, redis_pid


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if k in before}


def machine_idle_check(seconds: float = 1.0) -> None:
    """Other work on the machine skews every figure: say so up front."""
    before = machine_busy()
    time.sleep(seconds)
    busy = (machine_busy() - before) / seconds
    if busy > 0.25:
        print(
            f"warning: the machine is already {busy:.2f} cores busy before the benchmark; "
            "figures will be noisy (see 'other' in the CPU table)",
            file=sys.stderr,
            flush=True,
        )
