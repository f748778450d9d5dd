"""Delivery: claim a batch of due deliveries, let the shared limits decide what may go now, hand
the rest back with a visible reason and time, send, and write every outcome back.

The channel never sees the database. This module maps its ``Result``s to delivery states:
delivered / sent / failed / unknown, or back to queued with a backoff when the error is
transient and the channel's attempt budget is not spent. Everything here is driven by the
channel's declared capabilities, never by its name.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import asyncpg

from notifier import metrics
from notifier.channels.base import Channel, NoticeContent, Outcome, Outgoing, Result, budget_key
from notifier.db import budgets, contacts, deliveries, notices, reports, throttle
from notifier.db.deliveries import Claimed, Released, Written
from notifier.db.pool import UNAVAILABLE, Connection, Record, unavailable
from notifier.db.quiet import quiet_now
from notifier.domain.escalation import mode_of_step, step_modes
from notifier.domain.retry import backoff_seconds
from notifier.links import read_link
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.lease import LeaseKeeper
from notifier.workers.queue import enqueue_deliveries, hint_changed
from notifier.workers.reports import apply_reports

log = logging.getLogger(__name__)

WRITE_BACK_FIRST_DELAY = 0.05  # seconds; doubles on each failure ...
WRITE_BACK_MAX_DELAY = 1.0  # ... up to this, for as long as the lease holds
LEASE_MARGIN = 0.5  # stop retrying this long before the lease runs out
UNSTORABLE = "the provider's answer could not be recorded"
ERROR_CLASSES = {Outcome.RETRY: "transient", Outcome.FAILED: "permanent", Outcome.UNKNOWN: "ambiguous"}
RETRYABLE_DB_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    *UNAVAILABLE,
)


def retryable(exc: BaseException) -> bool:
    """A deadlock, a serialization failure or the database away (``pool.unavailable``: also a
    transaction block ending on a connection that died under it)."""
    return isinstance(exc, RETRYABLE_DB_ERRORS) or unavailable(exc)


def to_written(claimed: Claimed, result: Result, channel: Channel, settings: Settings) -> Written:
    caps = channel.capabilities
    outcome = result.outcome
    if outcome is Outcome.UNKNOWN and caps.resend_when_ambiguous:
        outcome = Outcome.RETRY  # push: a resend carries the same collapse id, the phone shows one
    if outcome is Outcome.RETRY:
        if claimed.attempt >= caps.max_attempts:
            error = f"{result.error} (gave up after {claimed.attempt} attempts)"
            return Written(claimed.id, claimed.attempt, "failed", error, 0.0, None)
        delay = backoff_seconds(
            claimed.attempt,
            base=settings.retry_base_seconds,
            cap=settings.retry_max_seconds,
            retry_after=result.retry_after,
        )
        return Written(claimed.id, claimed.attempt, "queued", result.error, delay, None)
    state = {
        Outcome.DELIVERED: "delivered",
        Outcome.SENT: "sent",
        Outcome.FAILED: "failed",
        Outcome.UNKNOWN: "unknown",
    }[outcome]
    return Written(claimed.id, claimed.attempt, state, result.error, 0.0, result.provider_ref)


async def _send(channel: Channel, batch: list[Outgoing]) -> dict[int, Result]:
    if not batch:
        return {}
    try:
        with metrics.Timer() as took:
            results = await channel.send(batch)
        metrics.SEND_SECONDS.labels(channel.id).observe(took.seconds)
    except Exception as exc:  # a channel bug must not lose the batch: retry it
        log.exception("channel %s raised while sending a batch", channel.id)
        error = f"channel error: {type(exc).__name__}"
        results = [Result(o.delivery_id, Outcome.RETRY, error=error) for o in batch]
        metrics.PROVIDER_ERRORS.labels(channel.id, "exception").inc(len(batch))
    else:
        for r in results:
            error_class = ERROR_CLASSES.get(r.outcome)
            if error_class is not None:
                metrics.PROVIDER_ERRORS.labels(channel.id, error_class).inc()
    by_id = {r.delivery_id: r for r in results}
    for item in batch:
        by_id.setdefault(
            item.delivery_id, Result(item.delivery_id, Outcome.RETRY, error="no result from channel")
        )
    return by_id


async def gate(
    conn: Connection, settings: Settings, channel: Channel, content: NoticeContent, claimed: list[Claimed]
) -> list[Claimed]:
    """Apply quiet hours, the provider's circuit breaker, per-contact cap and account rate to a
    claimed batch.

    Returns what may be sent now; the rest goes back to the queue (without spending an attempt)
    with the reason and the time it is expected to go.
    """
    caps = channel.capabilities
    # Last check before a reminder or a held row leaves: a read (or a recall) that committed
    # since the claim wins.
    readable = [c.id for c in claimed if moot_after_read(c)]
    moot = {int(r["id"]) for r in await deliveries.cancel_moot(conn, readable)} if readable else set()
    go = [c for c in claimed if c.id not in moot]
    held: list[Released] = []
    if not content.urgent:  # a DING ignores quiet hours; lessons and notices wait for the morning
        quiet = await quiet_now(conn, sorted({c.member_id for c in go}))
        held += [
            Released(c.id, c.attempt, "quiet_hours", max(quiet[c.member_id], 1.0))
            for c in go
            if c.member_id in quiet
        ]
        go = [c for c in go if c.member_id not in quiet]
    if caps.circuit_breaker:
        state = await throttle.breaker_state(conn, channel.id, settings.breaker_threshold)
        if state.is_open:
            held += [Released(c.id, c.attempt, "circuit_open", state.open_for) for c in go]
            go = []
        elif state.half_open and len(go) > 1:
            held += [Released(c.id, c.attempt, "circuit_open", 1.0) for c in go[1:]]
            go = go[:1]  # one probe
    if caps.per_target_limit is not None and go:
        limit, window = caps.per_target_limit
        ids = sorted({str(c.contact_id) for c in go if c.contact_id is not None})
        await conn.execute(deliveries.LOCK_CONTACTS, ids)  # concurrent batches count one after another
        recent = await throttle.recent_per_contact(conn, ids, channel.id, window)
        used = {cid: int(r["n"]) for cid, r in recent.items()}
        keep = []
        for c in go:
            cid = str(c.contact_id)
            if used.get(cid, 0) >= limit:
                frees_in = float(recent[cid]["frees_in"]) if cid in recent else window
                held.append(Released(c.id, c.attempt, "capped", max(frees_in, 0.05)))
            else:
                used[cid] = used.get(cid, 0) + 1
                keep.append(c)
        go = keep
    if caps.rate_per_second and go:
        # Rows that waited for their slot have paid for it; new rows reserve one.
        paid = [c for c in go if c.prior_wait == "throttled"]
        fresh = [c for c in go if c.prior_wait != "throttled"]
        rate = caps.rate_per_second
        waits = await throttle.reserve(conn, f"rate:{channel.id}", len(fresh), rate, burst=max(rate, 1.0))
        held += [
            Released(c.id, c.attempt, "throttled", w) for c, w in zip(fresh, waits, strict=True) if w > 0
        ]
        go = paid + [c for c, w in zip(fresh, waits, strict=True) if w <= 0]
    if (caps.paid or caps.paid_modes) and go:
        # Last: only what really leaves is charged.
        over = await charge_budgets(conn, channel, content, go)
        waiting = {r.id for r in over}
        go = [c for c in go if c.id not in waiting]
        held += over
    await deliveries.release(conn, held)
    for reason, n in Counter(h.reason for h in held).items():
        metrics.HELD.labels(channel.id, reason).inc(n)
    if caps.per_target_limit is not None or not caps.resend_when_ambiguous:
        await conn.execute(deliveries.HANDED_OVER, [c.id for c in go])
    return go


async def charge_budgets(
    conn: Connection, channel: Channel, content: NoticeContent, go: list[Claimed]
) -> list[Released]:
    """Charge each send to its budget (a DING by SMS or phone to its mode's, in the app to none):
    returns the rows beyond a budget, which wait for the day's end (or an admin's raise),
    visibly; the notice's free channels and modes are not affected."""
    by_key: dict[str, list[Claimed]] = {}
    for c in go:
        key = budget_key(channel.id, channel.capabilities, mode_of_step(content.step_modes, c.step))
        if key is not None:
            by_key.setdefault(key, []).append(c)
    return [r for key in sorted(by_key) for r in await _charge(conn, content, key, by_key[key])]


async def _charge(conn: Connection, content: NoticeContent, key: str, rows: list[Claimed]) -> list[Released]:
    """Charge ``rows`` to the budgets ``key`` governing them; returns those that wait for a budget."""
    waiting: list[Released] = []
    for charge in await budgets.charge(conn, content.notice_id, key, [c.member_id for c in rows]):
        if not charge.held:
            continue
        over = [rows[i] for i in charge.held]
        wait = max(charge.resets_in, 1.0)
        told = await budgets.exhausted(conn, content.notice_id, key, charge, len(over))
        log.warning(
            "%s budget of unit %s spent (%s a day): %d deliveries held for %.0fs, %d secretaries told",
            key,
            charge.unit_id,
            charge.daily_limit,
            len(over),
            wait,
            len(told),
        )
        waiting += [Released(c.id, c.attempt, "budget_exhausted", wait) for c in over]
    return waiting


def moot_after_read(c: Claimed) -> bool:
    """A reminder, or a step-0 row that was held back: a read stops it (deliveries.MOOT_AFTER_READ)."""
    return c.step > 0 or c.prior_wait in deliveries.HELD_REASONS


def needs_gate(channel: Channel, content: NoticeContent, claimed: list[Claimed]) -> bool:
    """Whether anything in ``gate`` applies to this batch (most DING batches: no)."""
    caps = channel.capabilities
    return bool(
        not content.urgent
        or caps.circuit_breaker
        or caps.per_target_limit
        or caps.rate_per_second
        or caps.paid
        or caps.paid_modes
        or not caps.resend_when_ambiguous
        or any(moot_after_read(c) for c in claimed)
    )


async def deliver_batch(
    deps: WorkerDeps,
    channel: Channel,
    content: NoticeContent,
    claimed: list[Claimed],
    lease: LeaseKeeper | None = None,
) -> None:
    """Gate, send and record one claimed batch, renewing its lease until the outcomes are written."""
    if lease is None:
        lease = LeaseKeeper(
            deps.pool, claimed, deps.settings.delivery_lease_seconds, asyncio.get_running_loop().time()
        )
    async with lease:
        await _deliver_batch(deps, channel, content, claimed, lease)


async def _deliver_batch(
    deps: WorkerDeps, channel: Channel, content: NoticeContent, claimed: list[Claimed], lease: LeaseKeeper
) -> None:
    settings = deps.settings
    caps = channel.capabilities
    written: list[Written] = []
    ready: list[Claimed] = []
    for c in claimed:
        if caps.needs_contact and c.target is None:
            written.append(Written(c.id, c.attempt, "failed", "contact removed or disabled", 0.0, None))
        elif c.attempt > caps.max_attempts:
            written.append(Written(c.id, c.attempt, "failed", "attempts exhausted", 0.0, None))
        else:
            ready.append(c)
    if ready and needs_gate(channel, content, ready):
        try:
            async with deps.pool.acquire() as conn, conn.transaction():
                ready = await gate(conn, settings, channel, content, ready)
        except Exception:
            # Nothing has left yet: hand the batch back (no attempt spent) rather than let the
            # lease run out and make SMS look "maybe sent".
            log.exception("delivery gate failed for %s; batch handed back", channel.id)
            back = [Released(c.id, c.attempt, "retry", 5.0) for c in ready]

            async def hand_back() -> list[Record]:
                await deliveries.release(deps.pool, back)
                return []

            await _retrying(lease, channel, hand_back)  # a database blip must not cost a lease
            ready = []
    secret = settings.link_secret.get_secret_value().encode()
    expires = int(deps.clock.time() + settings.link_ttl_seconds)
    base = settings.effective_public_url

    def link(member_id: str) -> str | None:
        return read_link(base, secret, content.notice_id, member_id, expires) if caps.read_link else None

    outgoing = [
        Outgoing(
            c.id,
            c.member_id,
            c.target,
            content,
            c.attempt,
            read_link=link(c.member_id),
            mode=mode_of_step(content.step_modes, c.step),
        )
        for c in ready
    ]
    results = await _send(channel, outgoing)
    by_id = {c.id: c for c in ready}
    disable: dict[int, tuple[str, str]] = {}  # delivery id -> (contact to disable, why)
    for delivery_id, result in results.items():
        claim = by_id[delivery_id]
        written.append(to_written(claim, result, channel, settings))
        if result.disable_contact and claim.contact_id is not None:
            disable[delivery_id] = (str(claim.contact_id), result.error or "rejected by provider")
    handed_over = await _write_back(deps, channel, lease, written, disable, list(results.values()))
    await hint_changed(deps.queue, content.notice_id)  # live streams: poll its counters now
    metrics.record_outcomes(channel.id, (w.state for w in written))
    # One wake-up per (notice, channel) the batch fell back to, not one per row.
    queued = Counter((str(r["notice_id"]), str(r["channel"])) for r in handed_over if r["state"] == "queued")
    for (notice_id, next_channel), n in sorted(queued.items()):
        await enqueue_deliveries(deps.queue, settings, notice_id, next_channel, n, tag="fallback")


async def _write_back(
    deps: WorkerDeps,
    channel: Channel,
    lease: LeaseKeeper,
    written: list[Written],
    disable: dict[int, tuple[str, str]],
    results: list[Result],
) -> list[Record]:
    """Record a batch's outcomes in one transaction.

    The results are the expensive part -- the messages have left -- so they are kept: a deadlock
    or a lost database is retried with backoff for as long as the lease holds (the lease keeper
    renews it whenever the database answers); the attempt number fences every row, so a repeat
    changes nothing twice. If the batch fails for any other reason (a row the database refuses),
    it is written row by row, so one bad row costs that row and not a resend of the batch."""
    contacts_, reasons = [d[0] for d in disable.values()], [d[1] for d in disable.values()]
    try:
        return await _retrying(
            lease, channel, partial(_write_back_once, deps, channel, written, contacts_, reasons, results)
        )
    except Exception as exc:
        if retryable(exc):
            raise  # the lease ran out while the database was away: the reconciler takes over
        log.warning(
            "write-back of a %d-row %s batch failed (%s); writing it row by row",
            len(written),
            channel.id,
            type(exc).__name__,
        )
    handed_over: list[Record] = []
    for w in written:
        one = disable.get(w.id)
        alone = partial(
            _write_back_once, deps, channel, [w], [one[0]] if one else [], [one[1]] if one else [], []
        )
        try:
            handed_over += await _retrying(lease, channel, alone)
            continue
        except Exception as exc:
            if retryable(exc):
                raise
            log.exception(
                "delivery %d: outcome %s could not be recorded; recording it plainly",
                w.id,
                w.state,
                extra={"delivery_id": w.id},
            )
        # The outcome without anything the provider said: the state still stands.
        retry_in = min(w.retry_in, deps.settings.retry_max_seconds)
        plain = Written(w.id, w.attempt, w.state, UNSTORABLE, retry_in, None)
        try:
            handed_over += await _retrying(
                lease, channel, partial(_write_back_once, deps, channel, [plain], [], [], [])
            )
        except Exception as exc:
            if retryable(exc):
                raise
            log.exception(
                "delivery %d could not be recorded; its lease will hand it back",
                w.id,
                extra={"delivery_id": w.id},
            )
    if channel.capabilities.circuit_breaker and results:

        async def breaker() -> list[Record]:
            async with deps.pool.acquire() as conn, conn.transaction():
                await _update_breaker(conn, deps.settings, channel, results)
            return []

        await _retrying(lease, channel, breaker)
    return handed_over


async def _retrying(
    lease: LeaseKeeper, channel: Channel, write: Callable[[], Awaitable[list[Record]]]
) -> list[Record]:
    """``write()``, retried with backoff on transient database errors while the lease holds."""
    delay = WRITE_BACK_FIRST_DELAY
    failures = 0
    while True:
        try:
            result = await write()
        except Exception as exc:
            if not retryable(exc):
                raise
            if lease.remaining() < delay + LEASE_MARGIN:
                log.error(
                    "write-back for %s still failing (%s) as its lease runs out; giving up",
                    channel.id,
                    type(exc).__name__,
                )
                raise
            failures += 1
            log.warning(
                "write-back for %s failed (%s); retry %d in %.2fs",
                channel.id,
                type(exc).__name__,
                failures,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, WRITE_BACK_MAX_DELAY)
            continue
        if failures:
            log.info("write-back for %s succeeded after %d retries", channel.id, failures)
        return result


async def _write_back_once(
    deps: WorkerDeps,
    channel: Channel,
    written: list[Written],
    disable: list[str],
    reasons: list[str],
    results: list[Result],
) -> list[Record]:
    caps = channel.capabilities
    settings = deps.settings
    async with deps.pool.acquire() as conn, conn.transaction():
        changed = await deliveries.record(conn, written)
        await contacts.disable_many(conn, disable, reasons)
        failed = [int(r["id"]) for r in changed if r["state"] == "failed"]
        handed_over = await deliveries.fallback_next(
            conn,
            failed,
            [c.id for c in deps.channels if not c.capabilities.needs_contact],
            [c.id for c in deps.channels if c.capabilities.delivers_on_insert],
        )
        await apply_reports(
            conn,
            channel.id,
            await reports.take_pending(
                conn, channel.id, [r["provider_ref"] for r in changed if r["provider_ref"]]
            ),
        )
        if caps.circuit_breaker and results:
            await _update_breaker(conn, settings, channel, results)
    return handed_over


async def _update_breaker(
    conn: Connection, settings: Settings, channel: Channel, results: list[Result]
) -> None:
    transient = sum(1 for r in results if r.outcome in (Outcome.RETRY, Outcome.UNKNOWN))
    if transient * 5 >= len(results) * 4:  # at least 80% of the batch failed transiently
        until = await throttle.breaker_failure(
            conn,
            channel.id,
            settings.breaker_threshold,
            settings.breaker_base_seconds,
            settings.breaker_max_seconds,
        )
        if until is not None:
            log.warning("circuit for %s open until %s", channel.id, until.isoformat())
    elif transient < len(results):
        await throttle.breaker_success(conn, channel.id)


async def deliver_notice_channel(deps: WorkerDeps, notice_id: str, channel_id: str) -> int:
    """Drain every due delivery of one notice on one channel; returns how many were handled.

    Rows held back by a limit come due soon: the job waits for them (briefly) rather than
    leaving them to the reconciler.
    """
    channel = deps.channels.get(channel_id)
    row = await notices.get(deps.pool, notice_id)
    if row is None:
        return 0
    content = NoticeContent(
        str(row["id"]), row["kind"], row["title"], row["body"], step_modes(row["escalation"])
    )
    batch_size = min(deps.settings.delivery_batch_size, channel.capabilities.max_batch)
    handled = 0
    idle = 0.0
    idle_limit = deps.settings.delivery_idle_wait_seconds
    lease_seconds = deps.settings.delivery_lease_seconds
    loop = asyncio.get_running_loop()
    after = 0  # the last id this job claimed: its next claim looks above it first
    while True:
        started = loop.time()
        claimed = await deliveries.claim(deps.pool, notice_id, channel_id, batch_size, lease_seconds, after)
        if not claimed and after:
            after = 0  # nothing above: rows behind the cursor (retries, held rows come due) from the start
            continue
        if not claimed:
            await deliveries.cancel_skipped(deps.pool, notice_id, channel_id)
            due_in = await deliveries.next_due_in(deps.pool, notice_id, channel_id)
            if due_in is None or due_in > idle_limit or idle >= idle_limit:
                return handled
            pause = min(max(0.01, due_in), idle_limit)
            idle += pause
            await asyncio.sleep(pause)
            continue
        idle = 0.0
        after = max(c.id for c in claimed)
        lease = LeaseKeeper(deps.pool, claimed, lease_seconds, started)
        await deliver_batch(deps, channel, content, claimed, lease)
        handled += len(claimed)


async def deliver(ctx: dict[str, Any], notice_id: str, channel_id: str) -> int:
    """arq job."""
    return await deliver_notice_channel(ctx["deps"], notice_id, channel_id)
