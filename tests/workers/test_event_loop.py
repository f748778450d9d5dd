"""The event loops (``worker_event_loop``, ``api_event_loop``): uvloop by default, asyncio's on request."""

from __future__ import annotations

import asyncio

import uvloop

from notifier.settings import Settings
from notifier.workers.processes import loop_factory, run_on_api_loop, run_on_worker_loop


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_workers_run_on_uvloop_unless_told_otherwise(settings: Settings) -> None:
    assert loop_factory(settings) is uvloop.new_event_loop
    assert run_on_worker_loop(settings, _loop_type()) is uvloop.Loop
    plain = settings.model_copy(update={"worker_event_loop": "asyncio"})
    assert loop_factory(plain) is None
    assert not issubclass(run_on_worker_loop(plain, _loop_type()), uvloop.Loop)


def test_the_api_runs_on_uvloop_unless_told_otherwise(settings: Settings) -> None:
    """``notifier serve`` and ``notifier dev`` run the API on ``api_event_loop``."""
    assert run_on_api_loop(settings, _loop_type()) is uvloop.Loop
    plain = settings.model_copy(update={"api_event_loop": "asyncio"})
    assert not issubclass(run_on_api_loop(plain, _loop_type()), uvloop.Loop)
