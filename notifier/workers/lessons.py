"""The daily lesson: at each unit's local lesson time, once per day.

Called by the one-second tick. One statement finds every unit whose lesson for its own local
"today" is due and has not gone out (time zone and lesson time inherited up the tree); one more,
in the same transaction, inserts a ``lesson_runs`` row per lesson and a ``lesson`` notice for each
run it actually inserted. The run's primary key (unit, day) decides, so two schedulers never send
a lesson twice, and a scheduler that was down at the lesson time sends it late, once, when it comes
back -- on the same local day. A lesson for a day that is over is never sent late; nothing is
recorded for it (the lessons API shows it as ``missed``).

The notice reaches the unit's whole subtree in the inbox and on every push channel this
deployment has, each used only for the members with a working contact there (optional channels,
schemas/0038: a member without an APNs token gets no failed APNs delivery every day); quiet hours
hold the pushes until the member's morning (the delivery gate). With
a reminder time later than the lesson time, the notice carries a one-step escalation snapshot
that reminds the unread on the same push channels at that local time; the escalation engine
skips those who have read it.
"""

from __future__ import annotations

import logging
from typing import Any

from notifier import metrics
from notifier.db import lessons
from notifier.domain.escalation import PolicyRules, Step
from notifier.workers.context import WorkerDeps
from notifier.workers.queue import enqueue_fanout

log = logging.getLogger(__name__)

PUSH_CHANNELS = ("webpush", "fcm", "apns", "jpush")
REMINDER_POLICY = "lesson-reminder"
MAX_PER_TICK = 500


def lesson_channels(deps: WorkerDeps) -> list[str]:
    """The inbox, plus every push channel this deployment has registered."""
    return ["inapp", *(c for c in PUSH_CHANNELS if c in deps.channels)]


def reminder_snapshot(remind_after: float | None, push: list[str]) -> dict[str, Any] | None:
    """One step, ``remind_after`` seconds after the lesson time, on the push channels."""
    if remind_after is None or remind_after <= 0 or not push:
        return None
    return PolicyRules(steps=[Step(after=remind_after, remind=push)]).snapshot(REMINDER_POLICY)


async def send_due_lessons(deps: WorkerDeps) -> int:
    """Create today's lesson notice for every unit whose local lesson time has passed; returns how many."""
    channels = lesson_channels(deps)
    push = [c for c in channels if c != "inapp"]
    async with deps.pool.acquire() as conn, conn.transaction():
        due = await lessons.due(conn, MAX_PER_TICK)
        sent = await lessons.send(
            conn,
            [
                {
                    "unit_id": r["unit_id"],
                    "day": r["day"].isoformat(),
                    "due_at": r["due_at"].isoformat(),
                    "escalation": reminder_snapshot(r["remind_after"], push),
                }
                for r in due
            ],
            channels,
            push,
        )
    metrics.LESSON_RUNS.inc(len(sent))
    for row in sent:
        notice_id = str(row["notice_id"])
        log.info("lesson notice %s for unit %s", notice_id, row["unit_id"])
        try:
            await enqueue_fanout(deps.queue, notice_id, tag="lesson")
        except Exception:  # the reconciler finds the queued notice in PostgreSQL; nothing is lost
            log.warning(
                "could not enqueue fan-out for lesson %s; the reconciler will", notice_id, exc_info=True
            )
    return len(sent)
