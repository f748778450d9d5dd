"""A second ``make run`` in the same checkout: the embedded servers already running there are
detected (pid alive, port answering) and reported, and their lock files are left alone; a lock
whose server is gone is cleared."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from notifier.embedded import AlreadyRunning, EmbeddedRedis, EmbeddedServers, free_port


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
    proc.wait()
    return proc.pid


async def test_second_dev_refuses_a_checkout_whose_servers_run(tmp_path: Path) -> None:
    with EmbeddedServers(tmp_path, fast=True) as first:
        lock = first.postgres.data_dir / "postmaster.pid"
        before = lock.read_text()
        env = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFIER_DATABASE_URL", "NOTIFIER_REDIS_URL")
        }
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "notifier",
            "dev",
            env={**env, "NOTIFIER_DATA_DIR": str(tmp_path), "NOTIFIER_PORT": str(free_port())},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            _, stderr = await second.communicate()
        assert second.returncode != 0
        message = stderr.decode()
        assert "PostgreSQL is already running" in message, message
        assert str(first.postgres.port) in message
        # The first server keeps its lock and keeps serving.
        assert lock.read_text() == before
        conn = await asyncpg.connect(first.postgres.url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        # The same refusal from the library, for each server, with the lock left as it was.
        with pytest.raises(AlreadyRunning, match="PostgreSQL is already running"):
            EmbeddedServers(tmp_path, fast=True).start()
        with pytest.raises(AlreadyRunning, match="Redis is already running") as refused:
            EmbeddedRedis(first.redis.data_dir, free_port()).start()
        assert refused.value.port == first.redis.port
        assert lock.read_text() == before
        assert first.redis.lock_file.exists()
        redis = Redis.from_url(first.redis.url)
        try:
            assert await redis.ping()
        finally:
            await redis.aclose()


def test_a_lock_whose_server_is_gone_is_cleared(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    redis = EmbeddedRedis(data, free_port())
    with socket.socket() as unused:  # a live pid (ours) that answers on no port: a reused pid
        unused.bind(("127.0.0.1", 0))
        for pid, port in ((_dead_pid(), redis.port), (os.getpid(), unused.getsockname()[1])):
            redis.lock_file.write_text(f"{pid}\n{data}\n\n{port}\n")
            redis.start()
            try:
                assert redis.lock_file.read_text().splitlines()[0] == str(redis.pid)
            finally:
                redis.stop()
            assert not redis.lock_file.exists()
