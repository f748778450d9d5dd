"""Resources a worker holds for its lifetime (created in on_startup, closed in on_shutdown)."""

from __future__ import annotations

from dataclasses import dataclass, field

from arq.connections import ArqRedis

from notifier.channels.registry import ChannelRegistry
from notifier.clock import Clock, SystemClock
from notifier.db.pool import Pool
from notifier.settings import Settings


@dataclass(slots=True)
class WorkerDeps:
    settings: Settings
    pool: Pool
    queue: ArqRedis
    channels: ChannelRegistry
    clock: Clock = field(default_factory=SystemClock)
