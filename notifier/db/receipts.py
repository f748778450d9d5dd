"""Read receipts: the first read of a notice by a member, counted in the same statement (in the
notice's counters and in each unit's, with its time-to-read bucket)."""

from __future__ import annotations

from datetime import datetime

from notifier import metrics
from notifier.db.deliveries import MOOT_AFTER_READ
from notifier.db.pool import Connection, Record, again_after_deadlock
from notifier.db.units import ancestors, subtree

# The first read wins, and is counted with it; work that a read makes moot (reminders, held
# step-0 rows) is cancelled, and the deliveries trigger moves the recipient and the counters.
# Set-based: one statement for any number of (notice, member) pairs, locked in one order so
# concurrent batches never deadlock.
# The marking and counting, as CTEs over ``p(notice_id, member_id, at)`` (one row per pair) with
# the read channel as ``{via}``: shared by the batch statement and the single receipt's.
MARK = f"""
l AS (
    SELECT t.notice_id, t.member_id, p.at FROM recipients t JOIN p ON t.notice_id = p.notice_id AND t.member_id = p.member_id
    WHERE t.read_at IS NULL ORDER BY t.notice_id, t.member_id FOR UPDATE OF t
),
r AS (
    -- read at the time given (an import of reads made elsewhere), never later than now
    UPDATE recipients t SET read_at = least(l.at, (SELECT notifier_now())), read_via = {{via}}
    FROM l WHERE t.notice_id = l.notice_id AND t.member_id = l.member_id AND t.read_at IS NULL
    RETURNING t.notice_id, t.member_id, t.units, t.direct_units, t.read_at,
              read_bucket(t.read_at - t.created_at) AS bucket
),
-- A delivery locked by someone else is in flight (claimed, or being written back): waiting for
-- it here would lock recipient then delivery, the reverse of every delivery write (and its
-- trigger), and deadlock. Skipped, it is not sent: the claim and the gate check the read, and the
-- reconciler's sweep cancels it if it comes back to the queue. Each read's rows by its key (a
-- lateral probe): joined, a plan that guessed one read scanned every queued delivery for each of
-- the 10,000 reads of a batch (13 million rows compared, 3 s: benchmarks/receipts at 50,000).
c AS (
    UPDATE deliveries d SET state = 'cancelled', error = 'read before it went out', wait_reason = NULL,
        updated_at = (SELECT notifier_now())
    WHERE d.id IN (
        SELECT x.id FROM r CROSS JOIN LATERAL (
            SELECT m.id FROM deliveries m
            WHERE m.notice_id = r.notice_id AND m.member_id = r.member_id AND m.state = 'queued'
              AND {MOOT_AFTER_READ.format(d="m")}
            FOR UPDATE OF m SKIP LOCKED) x)
),
k AS (
    INSERT INTO notice_counts AS k (notice_id, shard, read)
    SELECT notice_id, notice_count_shard(), count(*) FROM r GROUP BY notice_id ORDER BY notice_id
    ON CONFLICT (notice_id, shard) DO UPDATE SET read = k.read + excluded.read
),
-- and in every unit the recipient is counted in (its fan-out snapshot), with the time it took
u AS (
    INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, read, read_1m, read_5m, read_15m,
                                         read_30m, read_60m, read_later, last_read_at)
    SELECT notice_id, unit_id, direct, notice_count_shard(), count(*), count(*) FILTER (WHERE bucket = 1),
           count(*) FILTER (WHERE bucket = 2), count(*) FILTER (WHERE bucket = 3),
           count(*) FILTER (WHERE bucket = 4), count(*) FILTER (WHERE bucket = 5),
           count(*) FILTER (WHERE bucket = 6), max(read_at)
    FROM (SELECT notice_id, unnest(units) AS unit_id, false AS direct, bucket, read_at FROM r
          UNION ALL SELECT notice_id, unnest(direct_units), true, bucket, read_at FROM r) x
    GROUP BY notice_id, unit_id, direct ORDER BY notice_id, unit_id, direct
    ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET read = k.read + excluded.read,
        read_1m = k.read_1m + excluded.read_1m, read_5m = k.read_5m + excluded.read_5m,
        read_15m = k.read_15m + excluded.read_15m, read_30m = k.read_30m + excluded.read_30m,
        read_60m = k.read_60m + excluded.read_60m, read_later = k.read_later + excluded.read_later,
        last_read_at = greatest(k.last_read_at, excluded.last_read_at)
)"""

MARK_READ = (
    """
WITH p AS (
    -- one row per pair; a pair read twice in one call: its earliest reading
    SELECT DISTINCT ON (notice_id, member_id) * FROM unnest($1::uuid[], $2::text[], $4::timestamptz[]) AS p(notice_id, member_id, at)
    ORDER BY notice_id, member_id, at NULLS LAST
),"""
    + MARK.format(via="$3")
    + "\nSELECT notice_id, member_id FROM r"
)

# The batch's: as MARK_READ, answering for every pair that has a recipient whether this statement
# recorded its read: those it recorded (r), then the others that have a recipient, which has read
# (before, or while this statement waited for its row lock: the lock's re-check of ``read_at IS
# NULL`` is what left it out). Only those others are looked up again (a batch's are few: each
# reading is a third index probe per pair). ``NOT IN`` (a hashed subplan), not a join with r: r's
# row count is a guess (one), and a plan that believed it looped over r for every pair (10,000 x
# 10,000 comparisons, 13 s for a batch).
MARK_READ_ANSWER = (
    MARK_READ.rsplit("\nSELECT", 1)[0]
    + """
SELECT r.notice_id::text, r.member_id, true AS recorded FROM r
UNION ALL
SELECT p.notice_id::text, p.member_id, false FROM p JOIN recipients t ON t.notice_id = p.notice_id AND t.member_id = p.member_id
WHERE (p.notice_id, p.member_id) NOT IN (SELECT r.notice_id, r.member_id FROM r)"""
)

# Read receipts, many in one statement (no transaction of its own: a statement is atomic): for
# each item whether the caller may record it, the read, its counting and the answer: record_receipts()
# (schemas/0036), which the API's group commit of single receipts calls (api/receipts_group.py).
# Its arguments, item by item: $1 notices, $2 members, $4 the caller's unit (NULL: admin, or a
# member key), $5 a member key (its own reads: of any notice it received; the caller checked the
# member is that key's); $3 the read channel, $6 record lessons' reads too (the caller is in a
# transaction that awards their points; else a lesson's is left for that caller).
# For a unit-bound caller the notice must be its own (created in its subtree: db/visibility.py's
# rule, ``owner``) and the member visible to it (a membership in its subtree: db/members.py's).
# Each row, in the items' order: ``id`` NULL: no such notice, or not the caller's. ``member_ok``
# false: not a member it may see. ``recipient`` false: the member did not receive it (yet). An
# unread ``read_at`` NULL with ``recorded`` false: a lesson's read left for the caller's transaction
# (or, rarely, another read of the pair seen mid-commit: the caller runs it again). ``cancelled``:
# how many deliveries the read made moot. The same pair twice: the first item records it.
#
# Its steps are a function's statements: the API's sessions plan every execution (db/pool.py
# API_SESSION), and planning was most of a receipt's cost (~1.2 ms of backend CPU as one statement
# of CTEs); the function's are planned once per session, by index whatever the tables' size when
# they were (force_generic_plan, enable_seqscan = off). Only this call is planned per execution, a
# function scan (tests/db/test_receipt_plan_after_growth.py pins both). It moves its units' report
# slots itself (the slots' triggers stand aside for it: tests/api/test_receipt_counts.py). Its
# unit walks are units.ancestors / units.subtree written out (a test compares).
RECORD_MANY = "SELECT * FROM record_receipts($1::uuid[], $2::text[], $3, $4::text[], $5::boolean[], $6)"
# record_receipts' walks, as units.py writes them (over its variables): the notice's scope unit
# and its ancestors, the caller's unit and its subtree.
RECORD_WALKS = (
    ancestors("SELECT nid, n_scope", "notice"),
    subtree("ARRAY[root]"),
)


async def mark_read(conn: Connection, notice_id: str, member_id: str, via: str) -> bool:
    """Record (and count) the first read; True when this call recorded it."""
    return bool(await mark_read_many(conn, [notice_id], [member_id], via))


async def mark_read_many(
    conn: Connection,
    notice_ids: list[str],
    member_ids: list[str],
    via: str,
    at: list[datetime | None] | None = None,
) -> list[Record]:
    """Record (and count) first reads (at ``at``, capped at now; default now); returns the pairs
    this call recorded."""
    times = at if at is not None else [None] * len(notice_ids)
    recorded = list(await conn.fetch(MARK_READ, notice_ids, member_ids, via, times))
    if recorded:
        metrics.RECEIPTS.labels(via).inc(len(recorded))
    return recorded


async def record_many(
    conn: Connection,
    notice_ids: list[str],
    member_ids: list[str],
    via: str,
    *,
    roots: list[str | None],
    member_keys: list[bool],
    lessons: bool,
) -> list[Record | None]:
    """Read receipts as ``RECORD_MANY`` (one round trip), an answer per item in their order: None
    when the notice is not the caller's (``roots``: its unit, None for an admin; ``member_keys``: a
    member's own read), else the row ``id, kind, state, member_ok, recipient, recorded, read_at,
    cancelled``. Lessons' reads are recorded only with ``lessons`` (inside the transaction that also
    awards their points). Run again after a deadlock outside a transaction (``again_after_deadlock``)."""
    rows = await again_after_deadlock(
        conn, lambda: conn.fetch(RECORD_MANY, notice_ids, member_ids, via, roots, member_keys, lessons)
    )
    recorded = sum(1 for r in rows if r["recorded"])
    if recorded:
        metrics.RECEIPTS.labels(via).inc(recorded)
    return [None if r["id"] is None else r for r in sorted(rows, key=lambda r: int(r["i"]))]


async def mark_read_answer(
    conn: Connection,
    notice_ids: list[str],
    member_ids: list[str],
    via: str,
    at: list[datetime | None],
) -> dict[tuple[str, str], bool]:
    """As ``mark_read_many``, one statement that also answers: for each pair whose member received
    the notice, whether this call recorded its read (False: it had been read). Run again after a
    deadlock outside a transaction, as ``record_many``."""
    rows = await again_after_deadlock(
        conn, lambda: conn.fetch(MARK_READ_ANSWER, notice_ids, member_ids, via, at)
    )
    # notice ids as text from the statement: up to 10,000 rows, made into keys on the event loop
    answer = {(nid, mid): recorded for nid, mid, recorded in rows}
    recorded = sum(answer.values())
    if recorded:
        metrics.RECEIPTS.labels(via).inc(recorded)
    return answer


# Of these (notice, member) pairs, the recipients who have read (whenever that was recorded).
READ_PAIRS = """
SELECT t.notice_id, t.member_id FROM recipients t
JOIN (SELECT DISTINCT * FROM unnest($1::uuid[], $2::text[]) AS p(notice_id, member_id)) p
  ON t.notice_id = p.notice_id AND t.member_id = p.member_id
WHERE t.read_at IS NOT NULL"""


async def read_pairs(conn: Connection, notice_ids: list[str], member_ids: list[str]) -> set[tuple[str, str]]:
    rows = await conn.fetch(READ_PAIRS, notice_ids, member_ids)
    return {(str(r["notice_id"]), str(r["member_id"])) for r in rows}


async def now(conn: Connection) -> datetime:
    """The engine clock (tests shift it)."""
    value = await conn.fetchval("SELECT notifier_now()")
    assert isinstance(value, datetime)
    return value
