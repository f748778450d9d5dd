"""Delivery: claim a batch of due deliveries, hand it to the channel, write the outcomes back.

The channel never sees the database; this module maps its ``Result``s to delivery states:
delivered / sent / failed, or back to queued with a backoff when the error is transient and the
channel's attempt budget is not spent.
"""

from __future__ import annotations

import logging
from typing import Any

from notifier.channels.base import Channel, NoticeContent, Outcome, Outgoing, Result
from notifier.db import contacts, deliveries, notices, recipients
from notifier.db.deliveries import Claimed, Written
from notifier.domain.retry import backoff_seconds
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps

log = logging.getLogger(__name__)


def to_written(claimed: Claimed, result: Result, channel: Channel, settings: Settings) -> Written:
    max_attempts = channel.capabilities.max_attempts
    if result.outcome is Outcome.RETRY:
        if claimed.attempt >= max_attempts:
            return Written(
                claimed.id,
                claimed.attempt,
                "failed",
                f"{result.error} (gave up after {claimed.attempt} attempts)",
                0.0,
                None,
            )
        delay = backoff_seconds(
            claimed.attempt,
            base=settings.retry_base_seconds,
            cap=settings.retry_max_seconds,
            retry_after=result.retry_after,
        )
        return Written(claimed.id, claimed.attempt, "queued", result.error, delay, None)
    state = {Outcome.DELIVERED: "delivered", Outcome.SENT: "sent", Outcome.FAILED: "failed"}[result.outcome]
    return Written(claimed.id, claimed.attempt, state, result.error, 0.0, result.provider_ref)


async def _send(channel: Channel, batch: list[Outgoing]) -> dict[int, Result]:
    if not batch:
        return {}
    try:
        results = await channel.send(batch)
    except Exception as exc:  # a channel bug must not lose the batch: retry it
        log.exception("channel %s raised while sending a batch", channel.id)
        results = [
            Result(o.delivery_id, Outcome.RETRY, error=f"channel error: {type(exc).__name__}") for o in batch
        ]
    by_id = {r.delivery_id: r for r in results}
    for item in batch:
        by_id.setdefault(
            item.delivery_id, Result(item.delivery_id, Outcome.RETRY, error="no result from channel")
        )
    return by_id


async def deliver_batch(
    deps: WorkerDeps, channel: Channel, content: NoticeContent, claimed: list[Claimed]
) -> None:
    outgoing: list[Outgoing] = []
    written: list[Written] = []
    for c in claimed:
        if channel.capabilities.needs_contact and c.target is None:
            written.append(Written(c.id, c.attempt, "failed", "contact removed or disabled", 0.0, None))
        elif c.attempt > channel.capabilities.max_attempts:
            written.append(Written(c.id, c.attempt, "failed", "attempts exhausted", 0.0, None))
        else:
            outgoing.append(Outgoing(c.id, c.member_id, c.target, content, c.attempt))
    results = await _send(channel, outgoing)
    by_id = {c.id: c for c in claimed}
    disable: list[str] = []
    reasons: list[str] = []
    for delivery_id, result in results.items():
        claim = by_id[delivery_id]
        written.append(to_written(claim, result, channel, deps.settings))
        if result.disable_contact and claim.contact_id is not None:
            disable.append(str(claim.contact_id))
            reasons.append(result.error or "rejected by provider")
    async with deps.pool.acquire() as conn, conn.transaction():
        changed = await deliveries.record(conn, written)
        await recipients.roll_up(
            conn, [str(r["notice_id"]) for r in changed], [r["member_id"] for r in changed], notices.shard()
        )
        await contacts.disable_many(conn, disable, reasons)


async def deliver_notice_channel(deps: WorkerDeps, notice_id: str, channel_id: str) -> int:
    """Drain every due delivery of one notice on one channel; returns how many were handled."""
    channel = deps.channels.get(channel_id)
    row = await notices.get(deps.pool, notice_id)
    if row is None:
        return 0
    content = NoticeContent(str(row["id"]), row["kind"], row["title"], row["body"])
    batch_size = min(deps.settings.delivery_batch_size, channel.capabilities.max_batch)
    handled = 0
    while True:
        claimed = await deliveries.claim(
            deps.pool, notice_id, channel_id, batch_size, deps.settings.delivery_lease_seconds
        )
        if not claimed:
            return handled
        await deliver_batch(deps, channel, content, claimed)
        handled += len(claimed)


async def deliver(ctx: dict[str, Any], notice_id: str, channel_id: str) -> int:
    """arq job."""
    return await deliver_notice_channel(ctx["deps"], notice_id, channel_id)
