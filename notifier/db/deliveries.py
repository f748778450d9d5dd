"""deliveries: claiming batches under a lease, writing results back in bulk, reconciling."""

from __future__ import annotations

from dataclasses import dataclass

from notifier.db.contacts import newest_working
from notifier.db.pool import Connection, Pool, Record

# Queued work a member's read makes moot ({d}: the deliveries alias): reminders (step > 0), and
# step-0 rows that were held back (quiet hours, a rate or per-contact limit, an open circuit) --
# a member who has read must not get the held SMS in the morning. Matches the partial indexes
# of schemas/0003 and 0006, through which the reconciler's sweep finds them.
HELD_REASONS = ("quiet_hours", "throttled", "capped", "circuit_open", "budget_exhausted")
HELD = "(" + ", ".join(f"'{r}'" for r in HELD_REASONS) + ")"
MOOT_AFTER_READ = "({d}.step > 0 OR {d}.wait_reason IN " + HELD + ")"

# Claim up to $3 due deliveries of one notice on one channel. SKIP LOCKED lets any number of
# workers share a notice; the lease says how long the claim holds; attempts is the fencing token.
# $5: claim only ids above it (0: from the start). A job draining a notice passes the last id it
# claimed, so its index scan starts there instead of stepping again over every row claimed
# before (their index entries stay until vacuum, and while other jobs' transactions run they
# cannot be skipped as dead: each claim cost in proportion to the rows claimed before it).
# The claimed rows are found again by the row version the CTE locked (ctid: a TID scan per row;
# locked, it cannot move): joined by id, a table of many finished rows was planned as a hash
# join over a sequential scan of all of ``deliveries``, a cost per batch that grew with the
# table (``= ANY`` of the ids avoided the scan but cost 40% more than this, benchmarks/pg_delivery).
CLAIM = f"""
WITH c AS (
    SELECT id, ctid AS rid, wait_reason FROM deliveries
    WHERE notice_id = $1 AND channel = $2 AND state = 'queued' AND id > $5 AND next_attempt_at <= (SELECT notifier_now())
      -- a reminder or a held row never goes to someone whose read has committed
      AND (NOT {MOOT_AFTER_READ.format(d="deliveries")} OR NOT EXISTS (
          SELECT 1 FROM recipients r
          WHERE r.notice_id = deliveries.notice_id AND r.member_id = deliveries.member_id AND r.read_at IS NOT NULL))
      AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.id = $1 AND n.state = 'recalled')
    ORDER BY id LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
SET state = 'sending', attempts = d.attempts + 1, lease_until = (SELECT notifier_now()) + make_interval(secs => $4),
    wait_reason = NULL, sent_at = NULL, updated_at = (SELECT notifier_now())
FROM c WHERE d.ctid = c.rid
RETURNING d.id, d.member_id, d.attempts, d.contact_id, c.wait_reason AS prior_wait, d.step,
    (SELECT CASE WHEN k.disabled_at IS NULL THEN k.target END FROM contacts k WHERE k.id = d.contact_id) AS target"""

# The rows a write-back, a renewal or a release names are found by primary key, one probe per
# row: compared with 'sending' as written, the planner took the partial index of leased rows
# (whose statistics rarely see any) and hashed every row in flight, of every batch of every
# worker, and their dead entries, per statement (10,000 in flight: 9 us per row written back,
# benchmarks/makerun.py). ``= ANY`` of the ids makes the primary key the cheap path; the state is
# compared with a value the planner cannot see, so that the leased index's predicate is not
# implied and cannot be chosen.
IN_FLIGHT = "(SELECT 'sending')"

# Write a batch of outcomes. A row is only written by the attempt that claimed it and only while
# it is still 'sending': a late writer from an expired lease changes nothing.
RECORD = f"""
WITH r AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::float8[], $6::text[])
        AS r(id, attempt, state, error, retry_in, provider_ref)
)
UPDATE deliveries d SET
    state = r.state,
    next_attempt_at = CASE WHEN r.state = 'queued' THEN (SELECT notifier_now()) + make_interval(secs => r.retry_in)
                           ELSE d.next_attempt_at END,
    wait_reason = CASE WHEN r.state = 'queued' THEN 'retry' END,
    sent_at = CASE WHEN r.state IN ('sent', 'delivered', 'unknown') THEN coalesce(d.sent_at, (SELECT notifier_now()))
                   ELSE d.sent_at END,
    error = r.error,
    provider_ref = coalesce(r.provider_ref, d.provider_ref),
    lease_until = NULL,
    updated_at = (SELECT notifier_now())
FROM r
WHERE d.id = ANY($1::bigint[]) AND d.id = r.id AND d.attempts = r.attempt AND d.state = {IN_FLIGHT}
RETURNING d.id, d.notice_id, d.member_id, d.state, d.provider_ref"""

# Extend the lease of claimed rows still in flight (fenced like RECORD). Rows another statement
# holds (their write-back is committing) are skipped: they are about to leave 'sending'.
RENEW = f"""
UPDATE deliveries d SET lease_until = (SELECT notifier_now()) + make_interval(secs => $3)
WHERE d.id IN (
    SELECT x.id FROM deliveries x JOIN unnest($1::bigint[], $2::int[]) AS r(id, attempt)
        ON x.id = r.id AND x.attempts = r.attempt
    WHERE x.id = ANY($1::bigint[]) AND x.state = {IN_FLIGHT}
    FOR UPDATE OF x SKIP LOCKED)"""

# Put claimed rows back without spending an attempt: a limit or an open breaker said "not yet".
RELEASE = f"""
UPDATE deliveries d SET state = 'queued', attempts = d.attempts - 1, lease_until = NULL, wait_reason = r.reason,
    next_attempt_at = (SELECT notifier_now()) + make_interval(secs => r.wait), updated_at = (SELECT notifier_now())
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[]) AS r(id, attempt, reason, wait)
WHERE d.id = ANY($1::bigint[]) AND d.id = r.id AND d.attempts = r.attempt AND d.state = {IN_FLIGHT}"""

# Work that must not go out any more: the notice was recalled, or the member read it before a
# reminder (or a held row: MOOT_AFTER_READ) left. The sweep catches rows put back in the queue after the recall or the
# read (a retry, a released hold, a fallback); the claimed variant is the last check before sending.
_MOOT = """
UPDATE deliveries d SET state = 'cancelled', wait_reason = NULL, lease_until = NULL, updated_at = (SELECT notifier_now()),
    error = CASE WHEN n.state = 'recalled' THEN 'recalled' ELSE 'read before it went out' END
FROM notices n
WHERE n.id = d.notice_id AND {which}
  AND (n.state = 'recalled' OR ({moot} AND EXISTS (
      SELECT 1 FROM recipients r WHERE r.notice_id = d.notice_id AND r.member_id = d.member_id AND r.read_at IS NOT NULL)))
RETURNING d.id, d.notice_id, d.member_id"""
# The sweep looks only where such rows can be: queued rows of recalled notices, queued reminders
# and held rows, each place through its partial index (deliveries_due_idx, _queued_reminders_idx,
# _queued_held_idx), so a large first send costs it nothing; the rows found are then taken by
# primary key. In one OR the three could use no index: every sweep read every queued row (a
# sequential scan of all of ``deliveries``).
CANCEL_MOOT_QUEUED = _MOOT.format(
    which=f"""d.state = 'queued' AND d.id = ANY(ARRAY(
        SELECT id FROM deliveries WHERE state = 'queued' AND step > 0
        UNION ALL
        SELECT id FROM deliveries WHERE state = 'queued' AND wait_reason IN {HELD}
        UNION ALL
        SELECT id FROM deliveries
        WHERE state = 'queued' AND notice_id IN (SELECT id FROM notices WHERE state = 'recalled')))""",
    moot=MOOT_AFTER_READ.format(d="d"),
)
# Just claimed: the claim cleared wait_reason, so the caller names the rows a read makes moot
# (reminders, and rows the claim found held: Claimed.prior_wait). The claim checked the read
# already, but a read committing while the claim ran is seen only here -- and from 'sending' the
# read itself cannot cancel the row.
CANCEL_MOOT_CLAIMED = _MOOT.format(which=f"d.id = ANY($1::bigint[]) AND d.state = {IN_FLIGHT}", moot="true")

# What the claim skipped because the member has read: a reminder made by a step whose snapshot
# predated a read (the read's own cancel could not see the uncommitted reminder) is cancelled
# here, when a pass finds nothing more to claim, instead of lying queued until the reconciler's
# sweep. Any row the last (empty) claim skipped as moot is seen read by this later statement.
# Rows someone else holds are theirs (a claim's gate, a read's cancel).
CANCEL_MOOT_SKIPPED = f"""
UPDATE deliveries d SET state = 'cancelled', wait_reason = NULL, lease_until = NULL, updated_at = (SELECT notifier_now()),
    error = 'read before it went out'
WHERE d.id IN (
    SELECT m.id FROM deliveries m
    WHERE m.notice_id = $1 AND m.channel = $2 AND m.state = 'queued' AND {MOOT_AFTER_READ.format(d="m")}
      AND m.next_attempt_at <= (SELECT notifier_now())
      AND EXISTS (SELECT 1 FROM recipients r
                  WHERE r.notice_id = m.notice_id AND r.member_id = m.member_id AND r.read_at IS NOT NULL)
    ORDER BY m.id
    FOR UPDATE OF m SKIP LOCKED)"""

# Passing the gate is handing over: from here a lost worker means "maybe sent" (SMS, voice),
# and the per-contact cap counts the message.
HANDED_OVER = f"UPDATE deliveries SET sent_at = (SELECT notifier_now()) WHERE id = ANY($1::bigint[]) AND state = {IN_FLIGHT}"
LOCK_CONTACTS = "SELECT 1 FROM contacts WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"

# How long until the next row of this (notice, channel) comes due, if any is waiting.
NEXT_DUE_IN = """
SELECT extract(epoch FROM min(next_attempt_at) - (SELECT notifier_now())) FROM deliveries
WHERE notice_id = $1 AND channel = $2 AND state = 'queued'"""

# With fallback, a delivery that failed for good hands over to the next channel in the notice's
# order on which the member has a working contact (or that needs none); an in-app fallback is
# listed in the inbox where the failed delivery would have been (its listed_at: schemas/0029).
#   $1 failed delivery ids  $2 channels needing no contact  $3 channels delivered on insert
FALLBACK_NEXT = f"""
INSERT INTO deliveries (notice_id, member_id, channel, step, contact_id, state, attempts, listed_at)
SELECT d.notice_id, d.member_id, nxt.channel, d.step, nxt.contact_id,
       CASE WHEN nxt.channel = ANY($3::text[]) THEN 'delivered' ELSE 'queued' END,
       (nxt.channel = ANY($3::text[]))::int, d.listed_at
FROM deliveries d
JOIN notices n ON n.id = d.notice_id AND n.fallback
CROSS JOIN LATERAL (
    SELECT c.channel, k.id AS contact_id
    FROM unnest(n.channels) WITH ORDINALITY AS c(channel, ord)
    LEFT JOIN LATERAL ({newest_working("d.member_id", "c.channel")}) k ON true
    WHERE c.ord > array_position(n.channels, d.channel) AND (k.id IS NOT NULL OR c.channel = ANY($2::text[]))
    ORDER BY c.ord LIMIT 1
) nxt
WHERE d.id = ANY($1::bigint[]) AND d.state = 'failed'
ON CONFLICT (notice_id, member_id, channel, step) DO NOTHING
RETURNING notice_id, member_id, channel, state"""

# Leases that ran out (the worker died or hung): hand the rows back to the queue.
# A lost worker may or may not have handed the message over: channels that may resend (push,
# webhooks: collapse ids, webhook-id) go back to the queue; the others ($2: SMS, voice) become
# 'unknown' -- a provider report or the next escalation step settles them, never a blind resend.
REQUEUE_EXPIRED = """
UPDATE deliveries SET
    state = CASE WHEN channel = ANY($2::text[]) AND sent_at IS NOT NULL THEN 'unknown' ELSE 'queued' END,
    lease_until = NULL, updated_at = (SELECT notifier_now()),
    error = CASE WHEN channel = ANY($2::text[]) AND sent_at IS NOT NULL THEN 'worker lost while sending; not resent'
                 ELSE 'lease expired (worker lost)' END
WHERE id IN (
    SELECT id FROM deliveries WHERE state = 'sending' AND lease_until < (SELECT notifier_now())
    ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING notice_id, member_id, channel, state"""

# (notice, channel) groups with due work nobody has claimed, and how much.
DUE_GROUPS = """
SELECT notice_id, channel, count(*) AS n FROM deliveries
WHERE state = 'queued' AND channel = ANY($3::text[])
  AND next_attempt_at <= (SELECT notifier_now()) - CASE WHEN wait_reason IS NULL THEN make_interval(secs => $2) ELSE interval '0' END
GROUP BY notice_id, channel ORDER BY min(next_attempt_at) LIMIT $1"""


@dataclass(slots=True)
class Claimed:
    id: int
    member_id: str
    attempt: int
    contact_id: object | None
    target: object | None
    prior_wait: str | None = None  # why it waited before this claim ('throttled': its slot is paid for)
    step: int = 0


@dataclass(slots=True)
class Released:
    id: int
    attempt: int
    reason: str  # throttled | capped | circuit_open | quiet_hours | budget_exhausted | retry
    wait: float  # seconds


@dataclass(slots=True)
class Written:
    id: int
    attempt: int
    state: str  # queued (retry) | sent | delivered | failed | unknown
    error: str | None
    retry_in: float
    provider_ref: str | None


async def claim(
    pool: Pool, notice_id: str, channel: str, limit: int, lease_seconds: float, after: int = 0
) -> list[Claimed]:
    rows = await pool.fetch(CLAIM, notice_id, channel, limit, lease_seconds, after)
    return [
        Claimed(
            r["id"], r["member_id"], r["attempts"], r["contact_id"], r["target"], r["prior_wait"], r["step"]
        )
        for r in rows
    ]


async def record(conn: Connection, results: list[Written]) -> list[Record]:
    return list(
        await conn.fetch(
            RECORD,
            [w.id for w in results],
            [w.attempt for w in results],
            [w.state for w in results],
            [w.error for w in results],
            [w.retry_in for w in results],
            [w.provider_ref for w in results],
        )
    )


async def renew(pool: Pool, claimed: list[Claimed], lease_seconds: float, give_up_after: float) -> None:
    await pool.execute(
        RENEW, [c.id for c in claimed], [c.attempt for c in claimed], lease_seconds, timeout=give_up_after
    )


async def release(conn: Connection | Pool, rows: list[Released]) -> None:
    if rows:
        await conn.execute(
            RELEASE,
            [r.id for r in rows],
            [r.attempt for r in rows],
            [r.reason for r in rows],
            [r.wait for r in rows],
        )


async def next_due_in(conn: Connection | Pool, notice_id: str, channel: str) -> float | None:
    value = await conn.fetchval(NEXT_DUE_IN, notice_id, channel)
    return None if value is None else float(value)


async def fallback_next(
    conn: Connection, failed_ids: list[int], contactless: list[str], on_insert: list[str]
) -> list[Record]:
    if not failed_ids:
        return []
    return list(await conn.fetch(FALLBACK_NEXT, failed_ids, contactless, on_insert))


async def requeue_expired(conn: Connection, no_resend: list[str], limit: int = 10_000) -> list[Record]:
    return list(await conn.fetch(REQUEUE_EXPIRED, limit, no_resend))


async def due_groups(
    conn: Connection | Pool, stalled_for: float, channels: list[str], limit: int = 200
) -> list[Record]:
    return list(await conn.fetch(DUE_GROUPS, limit, stalled_for, channels))


async def cancel_skipped(pool: Pool, notice_id: str, channel: str) -> None:
    """Cancel the due rows of a notice's channel that a claim skipped because the member has read."""
    await pool.execute(CANCEL_MOOT_SKIPPED, notice_id, channel)


async def cancel_moot(conn: Connection, ids: list[int] | None = None) -> list[Record]:
    """Cancel queued (or, given ids, just-claimed) deliveries that must not go out any more."""
    if ids is None:
        return list(await conn.fetch(CANCEL_MOOT_QUEUED))
    return list(await conn.fetch(CANCEL_MOOT_CLAIMED, ids))
