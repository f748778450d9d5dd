"""Worker processes: ``notifier worker --processes N`` and ``notifier dev`` run N of them.

One Python process is one core; a delivery worker is CPU-bound (HTTP, signing, JSON), so the
default is one worker process per CPU the process may run on.

Each child is a fresh interpreter (multiprocessing ``spawn``: no event loop, pool or socket
crosses a fork) running the supervised worker of ``run_worker``. The children ignore SIGINT --
a Ctrl-C reaches the whole foreground process group, and the parent alone decides: on SIGINT or
SIGTERM it sends every child SIGTERM (each finishes its clean shutdown: jobs cut short, pools
closed; rows and leases hold the truth), waits for them up to ``STOP_WITHIN`` seconds, kills
what is left, and returns. A child that dies on its own is started again after a backoff, so N
holds; the children also stop when the parent is gone (they poll ``getppid``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Coroutine
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from notifier.logs import configure as configure_logging
from notifier.settings import Settings
from notifier.workers.priority import lower_own_priority

log = logging.getLogger(__name__)

STOP_WITHIN = 20.0  # seconds a child gets to shut down cleanly before it is killed
RESTART_BACKOFF = (0.5, 10.0)  # first and longest pause before a dead child is started again

T = TypeVar("T")


def event_loop_factory(choice: str, part: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``choice`` names (``worker_event_loop``, ``api_event_loop``): uvloop when asked
    for and installed, else asyncio's (None: the default). ``part`` names who runs on it (logs)."""
    if choice != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # not installed on this platform: asyncio's loop does the same, slower
        log.info("uvloop is not installed; the %s runs on asyncio's event loop", part)
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The worker's event loop (``worker_event_loop``)."""
    return event_loop_factory(settings.worker_event_loop, "worker")


def run_on_worker_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the worker's event loop."""
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        return runner.run(main)


def run_on_api_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the API's event loop (``api_event_loop``): ``serve`` and ``dev``."""
    with asyncio.Runner(loop_factory=event_loop_factory(settings.api_event_loop, "API")) as runner:
        return runner.run(main)


def default_processes() -> int:
    """The CPUs this process may run on (its affinity), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _child_main(settings: Settings, parent: int) -> None:
    """A worker process: SIGTERM (from the parent) stops it cleanly; SIGINT is the parent's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_format, settings.log_level)  # as the parent's (text or JSON)
    lower_own_priority(settings.worker_nice)  # requests first (workers/priority.py)
    run_on_worker_loop(settings, _child(settings, parent))


async def _child(settings: Settings, parent: int) -> None:
    from notifier.workers.settings import run_supervised

    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, resolve)

    async def orphaned() -> None:  # the parent was SIGKILLed: nobody will send us SIGTERM
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                resolve()
                return

    watch = asyncio.ensure_future(orphaned())
    try:
        await run_supervised(settings, stop)
    finally:
        watch.cancel()


class WorkerProcesses:
    """N worker processes kept running until ``stop()``."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self._ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self._stopping = False

    def _spawn(self) -> BaseProcess:
        proc = self._ctx.Process(
            target=_child_main, args=(self.settings, os.getpid()), name="notifier-worker", daemon=False
        )
        proc.start()
        return proc

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        log.info("started %d worker processes: %s", self.count, ", ".join(str(p.pid) for p in self.procs))

    async def keep_running(self, stop: asyncio.Future[None]) -> None:
        """Restart a child that died on its own, until ``stop`` resolves."""
        failures = 0
        while not stop.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stop), 0.5)
            if stop.done() or self._stopping:
                return
            for i, proc in enumerate(self.procs):
                if proc.is_alive():
                    continue
                failures += 1
                delay = min(RESTART_BACKOFF[1], RESTART_BACKOFF[0] * 2 ** min(failures - 1, 16))
                log.error(
                    "worker process %s exited with %s; starting another in %.1fs",
                    proc.pid,
                    proc.exitcode,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stop), delay)
                if stop.done():
                    return
                self.procs[i] = self._spawn()

    def stop(self, within: float = STOP_WITHIN) -> None:
        """SIGTERM every child, wait for them up to ``within`` seconds, then kill what is left."""
        self._stopping = True
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + within
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker process %s did not stop within %.0fs; killing it", proc.pid, within)
                proc.kill()
                proc.join(5)
        self.procs.clear()


async def run_worker_processes(settings: Settings, count: int, stop: asyncio.Future[None]) -> None:
    """Run ``count`` worker processes until ``stop`` resolves, then stop them all."""
    group = WorkerProcesses(settings, count)
    group.start()
    try:
        await group.keep_running(stop)
    finally:
        await asyncio.to_thread(group.stop)
