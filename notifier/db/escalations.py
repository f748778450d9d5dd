"""escalations (one timer per escalating notice) and the set-based statements of a step:
count the unread, remind them on a channel, find the units they sit in, write the summary.

Policies live in ``db/policies.py``, events in ``db/timeline.py``, recall in ``db/recall.py``,
scheduled sends in ``db/schedule.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.db.contacts import newest_working
from notifier.db.pool import Connection, Record
from notifier.db.units import subtree

# Create the timer (a re-run is harmless) and say how far away its first step is.
START = """
WITH ins AS (
    INSERT INTO escalations (notice_id, started_at, due_at)
    VALUES ($1, $2::timestamptz, $2::timestamptz + make_interval(secs => $3))
    ON CONFLICT (notice_id) DO NOTHING
)
SELECT extract(epoch FROM $2::timestamptz + make_interval(secs => $3) - (SELECT notifier_now()))"""

# What a step needs of its timer and notice.
_STEP_ROW = """
SELECT e.notice_id, e.started_at, e.round, e.next_step, e.due_at, e.sends, e.step_cursor, e.step_progress,
       n.state AS notice_state, n.escalation, n.expires_at, n.title, n.kind, n.scope_unit_id, n.audience,
       n.expires_at IS NOT NULL AND n.expires_at <= (SELECT notifier_now()) AS expired,
       extract(epoch FROM (SELECT notifier_now()) - e.started_at) AS elapsed
FROM escalations e JOIN notices n ON n.id = e.notice_id"""
# Claim one due escalation; a second worker skips it instead of waiting (and one whose step's
# parts are reminding right now: they hold it FOR KEY SHARE, db/escalation_parts.py).
CLAIM_DUE = (
    _STEP_ROW
    + """
WHERE e.state = 'active' AND e.due_at <= (SELECT notifier_now())
ORDER BY e.due_at
LIMIT 1
FOR UPDATE OF e SKIP LOCKED"""
)
# The timer of a step in parts, for the part that fires it (its chunk holds the row FOR KEY
# SHARE already; other parts' chunks hold it too, which FOR NO KEY UPDATE does not wait for).
STEP_IN_PARTS = (
    _STEP_ROW
    + """
WHERE e.notice_id = $1 AND e.state = 'active'
FOR NO KEY UPDATE OF e"""
)

# How far away the next step is, for an exact wake-up (the one-second cron tick fires a step up
# to a second late); NULL: none pending. An index range scan of escalations_due_idx.
NEXT_DUE = """
SELECT extract(epoch FROM min(due_at) - (SELECT notifier_now()))
FROM escalations WHERE state = 'active' AND due_at > (SELECT notifier_now())"""

ADVANCE = """
UPDATE escalations SET round = $2, next_step = $3, due_at = started_at + make_interval(secs => $4),
    step_cursor = NULL, step_progress = NULL, updated_at = (SELECT notifier_now())
WHERE notice_id = $1"""
# A chunk of a step is committed: the timer stays due, its step goes on after member $2.
CONTINUE_STEP = """
UPDATE escalations SET step_cursor = $2, step_progress = $3, sends = sends + $4, updated_at = (SELECT notifier_now())
WHERE notice_id = $1"""
# The last unread member of the chunk after $2 ('': from the first), NULL when the rest fits in one
# chunk of $3: an index range scan of recipients_unread_idx.
CHUNK_END = """
SELECT member_id FROM recipients
WHERE notice_id = $1 AND read_at IS NULL AND member_id > $2
ORDER BY member_id OFFSET $3 - 1 LIMIT 1"""
POSTPONE = """
UPDATE escalations SET due_at = (SELECT notifier_now()) + make_interval(secs => $2), updated_at = (SELECT notifier_now())
WHERE notice_id = $1"""
# A step in parts reserved the ceiling for every unread at its split (workers/escalate.py) and
# counts it back when it fires (its parts' rows gone by then); stopped before (a recall, expiry,
# a remind-now at the ceiling), what its parts have not sent goes back here. Exact when the
# stopper holds the timer row FOR UPDATE: no part's chunk is under way then.
UNSPENT_RESERVATION = """coalesce((
    SELECT (e.step_progress ->> 'reserved')::int - sum(p.sends) FROM escalation_parts p
    WHERE p.notice_id = e.notice_id AND p.step = (e.step_progress ->> 'step')::int HAVING count(*) > 0), 0)"""
FINISH = f"""
UPDATE escalations e SET state = $2, sends = e.sends - {UNSPENT_RESERVATION},
    step_cursor = NULL, step_progress = NULL, updated_at = (SELECT notifier_now())
WHERE notice_id = $1 AND state = 'active'"""
ADD_SENDS = "UPDATE escalations SET sends = sends + $2 WHERE notice_id = $1"
# A remind-now counts in the same ceiling: lock the notice's timer row (made, already finished,
# for a notice without a policy -- the fan-out has made it before the notice went active) and
# say how many sends it has made.
LOCK_SENDS = """
INSERT INTO escalations (notice_id, started_at, due_at, state)
VALUES ($1, (SELECT notifier_now()), (SELECT notifier_now()), 'done')
ON CONFLICT (notice_id) DO UPDATE SET sends = escalations.sends
RETURNING sends"""

# Counted, not fetched, and not locked: a read committing meanwhile is not blocked. A reminder
# made for someone who read a moment ago is cancelled by the delivery gate's last check.
# Both from the notice's counters (moved in the same statements as the rows they count): a few
# shard rows, where counting the unread walked 100,000 index entries and their rows (40-50 ms
# before a big step's first reminder).
COUNTS = """
SELECT coalesce(sum(recipients) - sum(read), 0) AS unread, coalesce(sum(recipients), 0) AS recipients
FROM notice_counts WHERE notice_id = $1"""

# Remind the unread on one channel: one delivery per member with a working contact (or none
# needed), at most $6 of them (the notice's remaining escalation budget, in member order). A
# step's REMIND takes one chunk of them: the unread after member $7 up to member $8 (NULL: all).
# Returns how many were made, how many were wanted, and who has no contact. A secretary's
# remind-now (REMIND_WITHIN) reminds only the unread who are members of units in the subtrees of
# $7 (NULL: every unread), and also says whom it reached, for the timeline.
_REMIND = """
WITH RECURSIVE {sub}
-- One reading of the engine clock: notifier_now() in the select list (or a column default) is
-- called once per row and column, four times per reminder (half the statement's time at 90k).
clock AS MATERIALIZED (SELECT notifier_now() AS now),
unread AS (
    SELECT r.member_id FROM recipients r WHERE r.notice_id = $1 AND r.read_at IS NULL{within}
),
plan AS (
    SELECT u.member_id, k.id AS contact_id
    FROM unread u
    LEFT JOIN LATERAL ({contact}) k ON true
),
ins AS (
    INSERT INTO deliveries (notice_id, member_id, channel, step, contact_id, state, attempts,
                            next_attempt_at, created_at, updated_at, listed_at)
    SELECT $1, member_id, $2, $3, contact_id, CASE WHEN $5 THEN 'delivered' ELSE 'queued' END, $5::int,
           clock.now, clock.now, clock.now, clock.now
    FROM plan CROSS JOIN clock
    WHERE contact_id IS NOT NULL OR NOT $4
    ORDER BY member_id LIMIT $6
    ON CONFLICT (notice_id, member_id, channel, step) DO NOTHING
    RETURNING member_id
)
SELECT (SELECT count(*) FROM ins) AS reached,
       (SELECT count(*) FROM plan WHERE contact_id IS NOT NULL OR NOT $4) AS wanted,
       coalesce((SELECT array_agg(member_id ORDER BY member_id) FROM plan WHERE contact_id IS NULL AND $4),
                '{{}}') AS unreachable{reached}"""
_CONTACT = newest_working("u.member_id", "$2", when="$4")
REMIND = _REMIND.format(
    sub="",
    within=" AND r.member_id > $7 AND ($8::text IS NULL OR r.member_id <= $8)",
    contact=_CONTACT,
    reached="",
)
REMIND_WITHIN = _REMIND.format(
    sub=subtree("$7") + ",",
    within="""
      AND ($7::text[] IS NULL OR EXISTS (
          SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id WHERE mu.member_id = r.member_id))""",
    contact=_CONTACT,
    reached=""",
       coalesce((SELECT array_agg(member_id ORDER BY member_id) FROM ins), '{}') AS reached_members""",
)

# The units the unread sit in, counted only inside the notice's own audience: a member shared
# with another branch is counted under the audience's units (the subtrees of $2), never under
# the other branch's. A member named directly ($3) with no membership there is counted under
# their units inside the sender's reach ($4; NULL: an admin's notice, every unit).
UNREAD_UNITS = (
    "WITH RECURSIVE "
    + subtree("$2")
    + """,
unread AS (SELECT member_id FROM recipients WHERE notice_id = $1 AND read_at IS NULL),
placed AS (
    SELECT u.member_id, mu.unit_id
    FROM unread u JOIN member_units mu ON mu.member_id = u.member_id JOIN sub ON sub.id = mu.unit_id
),
direct AS (
    SELECT u.member_id, mu.unit_id
    FROM unread u JOIN member_units mu ON mu.member_id = u.member_id
    WHERE u.member_id = ANY($3::text[])
      AND ($4::text[] IS NULL OR mu.unit_id = ANY($4::text[]))
      AND NOT EXISTS (SELECT 1 FROM placed p WHERE p.member_id = u.member_id)
)
SELECT unit_id, count(DISTINCT member_id) AS n
FROM (SELECT * FROM placed UNION ALL SELECT * FROM direct) AS x
GROUP BY unit_id ORDER BY n DESC, unit_id"""
)

# Has anyone acknowledged (read) a summary sent for this step index in an earlier round?
ACKNOWLEDGED = """
SELECT EXISTS (
    SELECT 1 FROM notices s JOIN recipients r ON r.notice_id = s.id
    WHERE s.parent_notice_id = $1 AND s.parent_step % 100 = $2 AND r.read_at IS NOT NULL)"""

SUMMARY_INSERT = """
INSERT INTO notices (id, kind, title, body, audience, channels, scope_unit_id, parent_notice_id, parent_step, state)
VALUES ($1, 'ding', $2, $3, $4, $5, $6, $7, $8, 'queued')
ON CONFLICT DO NOTHING
RETURNING id"""

SUMMARY_PARENT = """
SELECT p.id, p.title, p.audience, p.scope_unit_id, p.state
FROM notices s JOIN notices p ON p.id = s.parent_notice_id WHERE s.id = $1"""

# The parent notice's unread recipients inside the audience (as UNREAD_UNITS places them), for
# the page a summary's signed link opens.
UNREAD_LIST = (
    "WITH RECURSIVE "
    + subtree("$2")
    + """
SELECT r.member_id, m.name,
       coalesce((SELECT array_agg(mu.unit_id ORDER BY mu.unit_id) FROM member_units mu
                 WHERE mu.member_id = r.member_id
                   AND (mu.unit_id IN (SELECT id FROM sub)
                        OR (r.member_id = ANY($3::text[]) AND ($4::text[] IS NULL OR mu.unit_id = ANY($4::text[]))))),
                '{}') AS units
FROM recipients r JOIN members m ON m.id = r.member_id
WHERE r.notice_id = $1 AND r.read_at IS NULL
ORDER BY r.member_id LIMIT $5"""
)


async def start(conn: Connection, notice_id: str, started_at: datetime, first_step_after: float) -> float:
    """Create the notice's timer; returns the seconds until its first step (may be negative)."""
    return float(await conn.fetchval(START, notice_id, started_at, first_step_after))


async def claim_due(conn: Connection) -> Record | None:
    return await conn.fetchrow(CLAIM_DUE)


async def step_in_parts(conn: Connection, notice_id: str) -> Record | None:
    return await conn.fetchrow(STEP_IN_PARTS, notice_id)


async def seconds_to_next_due(conn: Connection) -> float | None:
    """Seconds until the soonest pending step (None: no step pending)."""
    seconds = await conn.fetchval(NEXT_DUE)
    return None if seconds is None else float(seconds)


async def advance(conn: Connection, notice_id: str, round_: int, step: int, offset: float) -> None:
    await conn.execute(ADVANCE, notice_id, round_, step, offset)


async def postpone(conn: Connection, notice_id: str, seconds: float) -> None:
    await conn.execute(POSTPONE, notice_id, seconds)


async def finish(conn: Connection, notice_id: str, state: str) -> None:
    await conn.execute(FINISH, notice_id, state)


async def lock_sends(conn: Connection, notice_id: str) -> int:
    """Sends made so far by the notice's escalation, its timer row locked until commit (FOR
    UPDATE first: a step's part reminding right now holds it FOR KEY SHARE, which the upsert's
    lock would not wait for, and its sends must be counted before a stop counts them back)."""
    await conn.execute("SELECT 1 FROM escalations WHERE notice_id = $1 FOR UPDATE", notice_id)
    return int(await conn.fetchval(LOCK_SENDS, notice_id))


async def add_sends(conn: Connection, notice_id: str, n: int) -> None:
    if n:
        await conn.execute(ADD_SENDS, notice_id, n)


async def counts(conn: Connection, notice_id: str) -> tuple[int, int]:
    """(unread, recipients) of a notice, without fetching or locking a row."""
    row = await conn.fetchrow(COUNTS, notice_id)
    assert row is not None
    return int(row["unread"]), int(row["recipients"])


async def chunk_end(conn: Connection, notice_id: str, after: str, size: int) -> str | None:
    """The last unread member of the chunk of ``size`` after ``after``; None: the rest is one chunk."""
    end = await conn.fetchval(CHUNK_END, notice_id, after, size)
    return None if end is None else str(end)


async def continue_step(
    conn: Connection, notice_id: str, cursor: str, progress: dict[str, Any], sends: int
) -> None:
    """Commit a chunk of the step: it goes on after ``cursor`` (the timer stays due)."""
    await conn.execute(CONTINUE_STEP, notice_id, cursor, progress, sends)


async def remind(
    conn: Connection,
    notice_id: str,
    channel: str,
    step: int,
    *,
    needs_contact: bool,
    delivers_on_insert: bool,
    budget: int,
    after: str = "",
    upto: str | None = None,
) -> Record:
    """REMIND the unread after member ``after`` up to ``upto`` (None: to the last)."""
    row = await conn.fetchrow(
        REMIND, notice_id, channel, step, needs_contact, delivers_on_insert, budget, after, upto
    )
    assert row is not None
    return row


async def remind_within(
    conn: Connection,
    notice_id: str,
    channel: str,
    step: int,
    roots: list[str] | None,
    *,
    needs_contact: bool,
    delivers_on_insert: bool,
    budget: int,
) -> Record:
    """REMIND for the unread in the subtrees of ``roots`` (None: all); also ``reached_members``."""
    row = await conn.fetchrow(
        REMIND_WITHIN, notice_id, channel, step, needs_contact, delivers_on_insert, budget, roots
    )
    assert row is not None
    return row


def _audience_args(
    audience: dict[str, Any], reach: list[str] | None
) -> tuple[list[str], list[str], list[str] | None]:
    return list(audience.get("units", [])), list(audience.get("members", [])), reach


async def unread_units(
    conn: Connection, notice_id: str, audience: dict[str, Any], reach: list[str] | None
) -> list[Record]:
    """[(unit_id, n)] of the unread, inside the notice's audience; ``reach`` is the sender's
    subtree (None: an admin)."""
    return list(await conn.fetch(UNREAD_UNITS, notice_id, *_audience_args(audience, reach)))


async def summary_parent(conn: Connection, summary_id: str) -> Record | None:
    """The notice a summary is about (None: not a summary)."""
    return await conn.fetchrow(SUMMARY_PARENT, summary_id)


async def unread_list(
    conn: Connection, notice_id: str, audience: dict[str, Any], reach: list[str] | None, limit: int
) -> list[Record]:
    return list(await conn.fetch(UNREAD_LIST, notice_id, *_audience_args(audience, reach), limit))


async def acknowledged(conn: Connection, notice_id: str, step_index: int) -> bool:
    return bool(await conn.fetchval(ACKNOWLEDGED, notice_id, step_index))


async def insert_summary(
    conn: Connection,
    summary_id: str,
    *,
    title: str,
    body: str,
    members: list[str],
    channels: list[str],
    scope_unit_id: str | None,
    parent_notice_id: str,
    parent_step: int,
) -> str | None:
    """The step's summary DING (one per notice and step); None when it exists already."""
    made = await conn.fetchval(
        SUMMARY_INSERT,
        summary_id,
        title,
        body,
        {"members": members, "units": []},
        channels,
        scope_unit_id,
        parent_notice_id,
        parent_step,
    )
    return None if made is None else str(made)
