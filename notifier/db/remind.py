"""Remind-now bookkeeping (POST /v1/notices/{id}/remind): presses of one notice are taken one
at a time, each gets the next manual step number, and the last press of a slice says whether
another comes too soon. The reminders themselves are escalations.REMIND_WITHIN; each press is a
``remind_now`` event naming the members it reached."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.db.pool import Connection, Record
from notifier.db.timeline import EVENT_FOR_MEMBERS

EVENT = "remind_now"

# Held to the end of the transaction: a second press of the same notice waits for the first.
LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('remind:' || $1::text, 727004))"

# Read after LOCK (and after the timer row's lock): a recall or expiry that committed meanwhile
# is seen. The next step is one above the last press (the first: $2); the slice's last press is
# the one with the same scope ($3: the unit, '' for an admin's whole notice).
PRESS = f"""
SELECT n.state, n.expires_at IS NOT NULL AND n.expires_at <= (SELECT notifier_now()) AS expired,
       (SELECT notifier_now()) AS now,
       (SELECT coalesce(max((e.detail->>'step')::int) + 1, $2) FROM notice_events e
        WHERE e.notice_id = n.id AND e.member_id IS NULL AND e.kind = '{EVENT}') AS step,
       (SELECT max(e.at) FROM notice_events e
        WHERE e.notice_id = n.id AND e.member_id IS NULL AND e.kind = '{EVENT}' AND e.detail->>'scope' = $3) AS last_at
FROM notices n WHERE n.id = $1"""


async def lock(conn: Connection, notice_id: str) -> None:
    await conn.execute(LOCK, notice_id)


async def press(conn: Connection, notice_id: str, first_step: int, scope: str) -> Record:
    """(state, expired, now, step, last_at) of the notice for this press."""
    row = await conn.fetchrow(PRESS, notice_id, first_step, scope)
    assert row is not None
    return row


def seconds_since(row: Record) -> float | None:
    last: datetime | None = row["last_at"]
    return None if last is None else (row["now"] - last).total_seconds()


async def record_press(
    conn: Connection, notice_id: str, member_ids: list[str], detail: dict[str, Any]
) -> None:
    """The press, as one event naming the members it reached -- none, too: it still takes its
    step, and spacing counts from it (and an empty list puts it on no recipient's timeline)."""
    await conn.execute(
        EVENT_FOR_MEMBERS, notice_id, EVENT, {**detail, "members": len(member_ids)}, member_ids
    )
