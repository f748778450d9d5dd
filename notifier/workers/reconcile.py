"""The reconciler (arq cron): PostgreSQL says what is pending; wake workers for anything that
nobody is working on. A lost Redis job, a wiped Redis or a killed worker delays work by at most
a few cycles; it never loses it."""

from __future__ import annotations

import logging
import time
from typing import Any

from notifier import metrics
from notifier.db import deliveries, notices, reports, unit_reports
from notifier.workers.context import WorkerDeps
from notifier.workers.queue import enqueue_deliveries, enqueue_fanout
from notifier.workers.reports import apply_parked

log = logging.getLogger(__name__)


async def reconcile_once(deps: WorkerDeps) -> dict[str, int]:
    settings = deps.settings
    stall = settings.reconcile_stall_seconds
    # Tag job ids with a time bucket: within one bucket a duplicate wake-up is a no-op, and a job
    # id left behind by a killed worker blocks nothing for longer than one bucket.
    tag = f"r{int(time.time() // max(stall, 1.0))}"
    no_resend = [c.id for c in deps.channels if not c.capabilities.resend_when_ambiguous]
    # Recipient statuses and counters follow these changes by themselves (schemas/0006).
    async with deps.pool.acquire() as conn, conn.transaction():
        expired = await deliveries.requeue_expired(conn, no_resend)
        unknown = [r for r in expired if r["state"] == "unknown"]
    if expired:
        log.warning("%d deliveries' leases expired (%d now unknown)", len(expired), len(unknown))
    stalled = await notices.stalled_fanouts(deps.pool, stall)
    for notice_id in stalled:
        await enqueue_fanout(deps.queue, notice_id, tag=tag)
    async with deps.pool.acquire() as conn, conn.transaction():
        moot = await deliveries.cancel_moot(conn)
    groups = await deliveries.due_groups(deps.pool, stall, deps.channels.ids())
    for g in groups:
        await enqueue_deliveries(deps.queue, settings, str(g["notice_id"]), g["channel"], g["n"], tag=tag)
    # A provider report parked while the write-back that recorded its provider id was committing
    # found nothing to apply to, and that write-back had already looked: apply it now.
    async with deps.pool.acquire() as conn, conn.transaction():
        parked = await apply_parked(conn)
    async with deps.pool.acquire() as conn:
        await conn.execute(notices.IDEMPOTENCY_PURGE, float(settings.idempotency_ttl_seconds))
        await reports.purge(conn, settings.provider_event_ttl_seconds)
        # Report slots no longer hot: their counter shards folded into one row each.
        await unit_reports.compact(conn)
    found = {
        "parked_reports": parked,
        "expired_leases": len(expired),
        "cancelled": len(moot),
        "fanouts": len(stalled),
        "delivery_groups": len(groups),
    }
    for kind in metrics.REPAIR_KINDS:
        if found[kind]:
            metrics.RECONCILER_REPAIRS.labels(kind).inc(found[kind])
    return found


async def reconcile(ctx: dict[str, Any]) -> dict[str, int]:
    """arq cron job."""
    return await reconcile_once(ctx["deps"])
