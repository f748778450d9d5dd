"""Fan-out: turn a notice's audience into recipients and deliveries, chunk by chunk, in SQL.

Each chunk commits on its own (cursor on the notice row), so a killed worker resumes where the
last commit left off, and delivery of the first chunk starts while later chunks are planned.
"""

from __future__ import annotations

import logging
from typing import Any

from notifier.channels.registry import UnknownChannel
from notifier.db import fanout as fanout_db
from notifier.db import notices, timeline
from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import start_escalation
from notifier.workers.queue import enqueue_deliveries, hint_changed, wake_tick_in

log = logging.getLogger(__name__)


async def fanout_notice(deps: WorkerDeps, notice_id: str) -> int:
    """Fan the notice out completely; returns the number of recipients this call added."""
    chunk_size = deps.settings.fanout_chunk_size
    total = 0
    chunk_no = 0
    while True:
        first_step_in: float | None = None
        async with deps.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(notices.CLAIM_FANOUT, notice_id)
            if row is None:
                return total  # finished already, or another worker holds this notice right now
            try:
                channels = [deps.channels.get(c) for c in row["channels"]]
                # A unit-level channel posts once per unit (unit_posts, started when the notice
                # goes out), not once per member.
                channels = [c for c in channels if not c.capabilities.unit_level]
            except UnknownChannel as exc:
                # Configured when the notice was accepted, gone from this deployment now: say so
                # on the notice instead of retrying forever.
                await conn.execute(notices.MARK_FAILED, notice_id)
                await timeline.record(
                    conn, notice_id, "fanout_failed", {"reason": f"channel {exc} is not configured"}
                )
                log.error("notice %s names channel %s, which is not configured", notice_id, exc)
                return total
            result = await fanout_db.fanout_chunk(
                conn,
                notice_id,
                units=list(row["audience"].get("units", [])),
                members=list(row["audience"].get("members", [])),
                cursor=row["fanout_cursor"],
                limit=chunk_size,
                channels=[c.id for c in channels],
                needs_contact=[c.capabilities.needs_contact for c in channels],
                on_insert=[c.capabilities.delivers_on_insert for c in channels],
                fallback=row["fallback"],
            )
            n: int = result["n"]
            done = n < chunk_size
            if done and row["escalation"] is not None:
                first_step_in = await start_escalation(conn, notice_id, row["went_out_at"], row["escalation"])
            await conn.execute(
                notices.ADVANCE_FANOUT,
                notice_id,
                result["last_member"] or row["fanout_cursor"],
                "active" if done else "fanning_out",
            )
        total += n
        await hint_changed(deps.queue, notice_id)  # live streams: poll its counters now
        for channel in result["queued_channels"]:
            await enqueue_deliveries(deps.queue, deps.settings, notice_id, channel, n, tag=f"f{chunk_no}")
        chunk_no += 1
        if done and first_step_in is not None:
            await wake_tick_in(deps.queue, first_step_in)
        if done:
            log.info("notice %s fanned out", notice_id)
            return total


async def fanout(ctx: dict[str, Any], notice_id: str) -> int:
    """arq job."""
    return await fanout_notice(ctx["deps"], notice_id)
