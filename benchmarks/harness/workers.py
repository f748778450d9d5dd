"""Worker processes a benchmark starts (each in its own session, so Ctrl-C reaches only the
benchmark, which stops them), tagged per process in pg_stat_activity so that "ready" means every
one has opened its database pool."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness.servers import ROOT, BenchError
from notifier.db.pool import Pool
from notifier.settings import Settings


@dataclass
class ProcGroup:
    """Worker processes we started (own sessions, so Ctrl-C reaches only us; we stop them)."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        self.logs.append(log)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise BenchError(f"{self.name} pid {proc.pid} exited with {proc.returncode}; see {log}")

    def tails(self, lines: int = 25) -> str:
        out = []
        for log in self.logs:
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def _with_app_name(database_url: str, name: str) -> str:
    """asyncpg passes unknown DSN query parameters as server settings: tag each pool's sessions."""
    parts = urllib.parse.urlsplit(database_url)
    query = urllib.parse.parse_qsl(parts.query) + [("application_name", name)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def start_workers(
    name: str, argv: list[str], settings: Settings, count: int, app_prefix: str, log_dir: Path
) -> ProcGroup:
    group = ProcGroup(name)
    try:
        for i in range(count):
            env = {
                **os.environ,
                "NOTIFIER_DATABASE_URL": _with_app_name(settings.database_url, f"{app_prefix}{i}"),
                "NOTIFIER_REDIS_URL": settings.redis_url,
                "NOTIFIER_QUEUE_NAME": settings.queue_name,
                "NOTIFIER_WEBHOOK_SECRET": settings.webhook_secret.get_secret_value(),
                "NOTIFIER_ALLOW_PRIVATE_TARGETS": "true",
                "NOTIFIER_LINK_SECRET": os.environ.get("NOTIFIER_LINK_SECRET") or secrets.token_urlsafe(24),
                "NOTIFIER_PUBLIC_URL": os.environ.get("NOTIFIER_PUBLIC_URL") or "http://127.0.0.1:8080",
            }
            group.spawn(argv, env, log_dir / f"{name.replace(' ', '-')}-{i}.log")
    except BaseException:
        group.stop()
        raise
    return group


async def wait_workers_ready(pool: Pool, group: ProcGroup, app_prefix: str, within: float = 60.0) -> None:
    """Ready = every worker process has opened its database pool (done in arq's on_startup)."""
    deadline = time.monotonic() + within
    while True:
        group.check_alive()
        names = await pool.fetchval(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity WHERE application_name LIKE $1",
            app_prefix + "%",
        )
        if names >= len(group.procs):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{group.name}: {names}/{len(group.procs)} ready after {within}s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(
    name: str, argv: list[str], settings: Settings, count: int, app_prefix: str, log_dir: Path, pool: Pool
) -> AsyncIterator[ProcGroup]:
    """``count`` processes of ``argv``, ready when the block starts and stopped when it ends; when the
    block fails, the tails of their logs are printed."""
    group = start_workers(name, argv, settings, count, app_prefix, log_dir)
    try:
        await wait_workers_ready(pool, group, app_prefix)
        yield group
    except Exception:
        print(group.tails(), file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(group.stop)
