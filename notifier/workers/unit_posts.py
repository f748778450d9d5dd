"""Posting notices in units' group chats (a part of the tick): every due ``unit_posts`` row is
claimed, held back if its robot has used its posts for the minute (a token bucket per robot in
PostgreSQL, shared by every worker: ``throttle.reserve``), sent through its unit-level channel and
written back -- sent, failed with the reason (a robot whose security settings refuse us has its
contact disabled), or queued again after the wait."""

from __future__ import annotations

import logging

from notifier.channels.base import NoticeContent, Outcome, Outgoing, Result
from notifier.db import throttle, unit_posts
from notifier.db.pool import Connection, Record
from notifier.domain.retry import backoff_seconds
from notifier.workers.context import WorkerDeps

log = logging.getLogger(__name__)

POSTS_PER_TICK = 100
LEASE_SECONDS = 120.0


async def send_unit_posts(deps: WorkerDeps) -> int:
    """Send the due posts; returns how many were claimed."""
    if not any(c.capabilities.unit_level for c in deps.channels):
        return 0
    await unit_posts.cancel_moot(deps.pool)
    async with deps.pool.acquire() as conn, conn.transaction():
        claimed = await unit_posts.claim(conn, POSTS_PER_TICK, LEASE_SECONDS)
        go = await _within_rate(deps, conn, claimed)
    results: dict[int, Result] = {}
    for channel_id in sorted({r["channel"] for r in go}):
        results.update(await _send(deps, channel_id, [r for r in go if r["channel"] == channel_id]))
    if go:
        await _write_back(deps, go, results)
    return len(claimed)


async def _within_rate(deps: WorkerDeps, conn: Connection, claimed: list[Record]) -> list[Record]:
    """The posts whose robot has a slot now; the others go back with their wait."""
    go: list[Record] = []
    held: list[tuple[int, float]] = []
    for row in claimed:
        channel = deps.channels.get(row["channel"]) if row["channel"] in deps.channels else None
        per_minute = getattr(channel, "per_minute", None)
        # A post that waited for its slot has paid for it: it goes now (as in the delivery gate).
        paid = row["wait_reason"] == "throttled"
        if isinstance(per_minute, int) and per_minute > 0 and row["contact_id"] is not None and not paid:
            # Half at once, the rest spread over the minute: never more than per_minute in any
            # 60 seconds (burst + rate * 60), which is the platform's rule (then a 10-minute mute).
            burst = max(per_minute // 2, 1)
            rate = max(per_minute - burst, 1) / 60.0
            (wait,) = await throttle.reserve(
                conn, f"rate:{row['channel']}:{row['contact_id']}", 1, rate, burst=float(burst)
            )
            if wait > 0:
                held.append((row["id"], wait))
                continue
        go.append(row)
    if held:
        await unit_posts.hold(conn, [i for i, _ in held], [w for _, w in held])
    return go


async def _send(deps: WorkerDeps, channel_id: str, rows: list[Record]) -> dict[int, Result]:
    if channel_id not in deps.channels:
        return {r["id"]: Result(r["id"], Outcome.FAILED, "channel not configured") for r in rows}
    channel = deps.channels.get(channel_id)
    results = {
        r["id"]: Result(r["id"], Outcome.FAILED, "no working unit contact")
        for r in rows
        if r["target"] is None
    }
    batch = [
        Outgoing(
            r["id"],
            r["unit_id"],
            r["target"],
            NoticeContent(str(r["notice_id"]), r["kind"], r["title"], r["body"]),
            r["attempts"],
        )
        for r in rows
        if r["target"] is not None
    ]
    if not batch:
        return results
    try:
        sent = await channel.send(batch)
    except Exception:  # a channel bug must not lose the posts: retry them
        log.exception("channel %s raised while posting", channel_id)
        sent = [Result(o.delivery_id, Outcome.RETRY, "channel error") for o in batch]
    results.update({r.delivery_id: r for r in sent})
    return results


async def _write_back(deps: WorkerDeps, rows: list[Record], results: dict[int, Result]) -> None:
    settings = deps.settings
    ids, states, errors, waits, reasons = [], [], [], [], []
    disable: dict[str, str] = {}
    for row in rows:
        result = results.get(row["id"]) or Result(row["id"], Outcome.RETRY, "no result from channel")
        channel = deps.channels.get(row["channel"]) if row["channel"] in deps.channels else None
        budget = channel.capabilities.max_attempts if channel is not None else 0
        state, wait, reason = "failed", None, None
        if result.outcome in (Outcome.SENT, Outcome.DELIVERED):
            state = "sent"
        elif result.outcome is Outcome.RETRY and row["attempts"] < budget:
            state, reason = "queued", "retry"
            wait = backoff_seconds(
                row["attempts"],
                base=settings.retry_base_seconds,
                cap=settings.retry_max_seconds,
                retry_after=result.retry_after,
            )
        elif result.disable_contact and row["contact_id"] is not None:
            disable[str(row["contact_id"])] = result.error or "refused by the provider"
        ids.append(row["id"])
        states.append(state)
        errors.append(result.error)
        waits.append(wait)
        reasons.append(reason)
    async with deps.pool.acquire() as conn, conn.transaction():
        await unit_posts.finish(conn, ids, states, errors, waits, reasons)
        if disable:
            await unit_posts.disable_contacts(conn, sorted(disable), [disable[c] for c in sorted(disable)])
