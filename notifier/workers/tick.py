"""The time engine's tick (arq cron, every second; also woken early when a timer is created).

Every timer is a PostgreSQL row with a due time. Each part claims due rows with
``FOR UPDATE SKIP LOCKED`` and acts in one transaction per row, so two workers or two schedulers
never act twice, and a crash leaves the row due for the next tick.
"""

from __future__ import annotations

import logging
from typing import Any

from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import advance_escalations, release_scheduled
from notifier.workers.lessons import send_due_lessons

log = logging.getLogger(__name__)

TICK = "tick"


async def tick_once(deps: WorkerDeps) -> dict[str, int]:
    return {
        "scheduled": await release_scheduled(deps),
        "escalations": await advance_escalations(deps),
        "lessons": await send_due_lessons(deps),
    }


async def tick(ctx: dict[str, Any]) -> dict[str, int]:
    """arq job (cron and early wake-ups)."""
    return await tick_once(ctx["deps"])
