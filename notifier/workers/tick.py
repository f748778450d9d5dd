"""The time engine's tick (arq cron, every second; also woken early when a timer is created).

Every timer is a PostgreSQL row with a due time. Each part claims due rows with
``FOR UPDATE SKIP LOCKED`` and acts in one transaction per row, so two workers or two schedulers
never act twice, and a crash leaves the row due for the next tick.

After its parts a tick looks one period ahead: an escalation step, a daily lesson or a scheduled
notice due before the next cron tick gets a wake-up at its due time (``wake_tick_in``), so it
goes out on time instead of up to a second late. The cron tick stays the guarantee; the wake-up
only makes it punctual.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from notifier.db import escalations, lessons, schedule
from notifier.workers.context import WorkerDeps
from notifier.workers.dingtalk import poll_dingtalk_reads, withdraw_recalled, withdraw_recalled_dings
from notifier.workers.escalate import advance_escalations
from notifier.workers.lessons import send_due_lessons
from notifier.workers.queue import wake_tick_in
from notifier.workers.quizzes import submit_overdue
from notifier.workers.schedule import release_scheduled
from notifier.workers.unit_posts import send_unit_posts

log = logging.getLogger(__name__)

TICK = "tick"
# The cron's period, and a little more: a tick that ran late must not leave the next step to the
# cron tick after next. A step woken twice is claimed once (the second tick finds it done).
LOOK_AHEAD_SECONDS = 1.5


PARTS: dict[str, Callable[[WorkerDeps], Awaitable[int]]] = {
    "scheduled": release_scheduled,
    "escalations": advance_escalations,
    "lessons": send_due_lessons,
    "dingtalk_reads": poll_dingtalk_reads,
    "dingtalk_recalls": withdraw_recalled,
    "dingtalk_ding_recalls": withdraw_recalled_dings,
    "unit_posts": send_unit_posts,
    "quiz_deadlines": submit_overdue,
}


async def tick_once(deps: WorkerDeps) -> dict[str, int]:
    """Run every part; one failing part does not hold up the others (its rows stay due)."""
    done: dict[str, int] = {}
    for name, part in PARTS.items():
        try:
            done[name] = await part(deps)
        except Exception:
            log.exception("tick part %s failed; its timers stay due for the next tick", name)
            done[name] = 0
    try:
        await wake_for_next_timer(deps)
    except Exception:
        log.exception("tick look-ahead failed; the next cron tick fires what is due")
    return done


# The timers a tick looks ahead for: each answers the seconds to its soonest due row (None: none).
NEXT_DUE = (escalations.seconds_to_next_due, lessons.seconds_to_next_due, schedule.seconds_to_next_due)


async def wake_for_next_timer(deps: WorkerDeps) -> float | None:
    """Wake the engine at the due time of the next escalation step, daily lesson or scheduled
    notice when that comes before the next cron tick; returns the seconds it was woken in (None:
    not woken)."""
    async with deps.pool.acquire() as conn:
        found = [s for s in [await next_due(conn) for next_due in NEXT_DUE] if s is not None]
    seconds = min(found, default=None)
    if seconds is None or seconds > LOOK_AHEAD_SECONDS:
        return None
    await wake_tick_in(deps.queue, seconds)
    return seconds


async def tick(ctx: dict[str, Any]) -> dict[str, int]:
    """arq job (cron and early wake-ups)."""
    return await tick_once(ctx["deps"])
