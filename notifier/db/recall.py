"""Recall: a notice and the summaries its escalation produced stop at once. Pending deliveries
are cancelled and the escalation timers stopped; work already handed to a provider finishes, and
late read receipts are still recorded."""

from __future__ import annotations

from notifier.db import dingtalk, timeline
from notifier.db.escalations import UNSPENT_RESERVATION
from notifier.db.pool import Connection

# Wait for an escalation step that is running right now, so the statements after it see the
# reminders and the summary that step made.
WAIT_FOR_STEP = "SELECT 1 FROM escalations WHERE notice_id = $1 FOR UPDATE"
RECALL = """
UPDATE notices SET state = 'recalled', recalled_at = (SELECT notifier_now()), updated_at = (SELECT notifier_now())
WHERE (id = $1 OR parent_notice_id = $1) AND state <> 'recalled'
RETURNING id"""
CANCEL_PENDING = """
UPDATE deliveries SET state = 'cancelled', error = 'recalled', lease_until = NULL, wait_reason = NULL,
    updated_at = (SELECT notifier_now())
WHERE notice_id = ANY($1::uuid[]) AND state = 'queued'"""
STOP_TIMERS = f"""
UPDATE escalations e SET state = 'stopped', sends = e.sends - {UNSPENT_RESERVATION},
    updated_at = (SELECT notifier_now())
WHERE notice_id = ANY($1::uuid[]) AND state = 'active'"""


async def recall(conn: Connection, notice_id: str, by: str) -> list[str]:
    """Recall the notice and its summaries (idempotent); returns the ids recalled by this call.
    Call inside a transaction."""
    await conn.execute(WAIT_FOR_STEP, notice_id)
    recalled = [str(r["id"]) for r in await conn.fetch(RECALL, notice_id)]
    if recalled:
        await conn.execute(CANCEL_PENDING, recalled)
        await conn.execute(STOP_TIMERS, recalled)
        await dingtalk.request_recall(conn, recalled)  # messages DingTalk holds are withdrawn there
        await timeline.record(conn, notice_id, "recalled", {"by": by, "notices": recalled})
    return recalled
