"""Time as a dependency. The engine uses the database clock (``now()``); Python-side waits and
signatures take a ``Clock`` so tests can move time instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()


class FrozenClock:
    """A clock for tests: starts at ``start`` and moves only when told."""

    def __init__(self, start: float) -> None:
        self._now = start

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
