"""Applying provider reports to deliveries, recipients and counters (shared by the callback API
and by the delivery writer, which applies reports that arrived before the provider id was known)."""

from __future__ import annotations

from collections.abc import Sequence

from notifier.channels.base import StatusUpdate
from notifier.db import receipts, reports
from notifier.db.pool import Connection, Record


def _as_update(item: StatusUpdate | Record) -> StatusUpdate:
    if isinstance(item, StatusUpdate):
        return item
    return StatusUpdate(item["provider_ref"], item["state"], item["error"], bool(item["read"]))


async def apply_reports(conn: Connection, channel: str, items: Sequence[StatusUpdate | Record]) -> int:
    """Apply reports inside the caller's transaction, set-based. Returns how many deliveries
    moved; unmatched reports are parked for later."""
    if not items:
        return 0
    updates = [_as_update(i) for i in items]
    rows = await reports.apply_many(
        conn,
        channel,
        [u.provider_ref for u in updates],
        [u.state for u in updates],
        [u.error for u in updates],
        [u.read for u in updates],
        [u.delivery_id for u in updates],
    )
    moved = [r for r in rows if r["what"] == "moved"]
    read = [r for r in rows if r["what"] == "read"]
    if read:
        await receipts.mark_read_many(
            conn, [str(r["notice_id"]) for r in read], [r["member_id"] for r in read], channel
        )
    return len(moved)


async def apply_parked(conn: Connection) -> int:
    """Apply parked reports whose message can be matched now; returns how many were taken."""
    taken = await reports.take_matched(conn)
    by_channel: dict[str, list[Record]] = {}
    for row in taken:
        by_channel.setdefault(row["channel"], []).append(row)
    for channel, rows in sorted(by_channel.items()):
        await apply_reports(conn, channel, rows)
    return len(taken)
