"""Applying provider reports to deliveries, recipients and counters (shared by the callback API
and by the delivery writer, which applies reports that arrived before the provider id was known)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from notifier.db import notices, recipients, reports
from notifier.db.pool import Connection


async def apply_reports(conn: Connection, channel: str, items: Sequence[Any]) -> int:
    """Apply reports (objects or records with provider_ref, state, error, read) inside the caller's
    transaction. Returns how many deliveries moved; unmatched reports are parked for later."""
    moved = 0
    pairs: list[tuple[str, str]] = []
    for item in items:
        ref, state, error, read = (
            (item["provider_ref"], item["state"], item["error"], item["read"])
            if not hasattr(item, "provider_ref")
            else (item.provider_ref, item.state, item.error, item.read)
        )
        target = await reports.find(conn, channel, ref)
        if target is None:
            await reports.park(conn, channel, ref, state, error, read)
            continue
        changed = await reports.apply(conn, channel, ref, state, error)
        moved += len(changed)
        pairs += [(str(r["notice_id"]), r["member_id"]) for r in changed]
        if read and await recipients.mark_read(
            conn, str(target["notice_id"]), target["member_id"], via=channel
        ):
            await notices.add_read(conn, str(target["notice_id"]))
    if pairs:
        await recipients.roll_up(conn, [p[0] for p in pairs], [p[1] for p in pairs], notices.shard())
    return moved
