"""escalation_parts (schemas/0037): a step's unread in ranges of member ids, reminded at once.

The tick splits a step (its timer row locked); part jobs claim a part each, FOR UPDATE SKIP
LOCKED, and remind it chunk by chunk (``escalations.CHUNK_END`` / ``REMIND`` within the part's
range). A part's chunk holds its timer row FOR KEY SHARE: a recall (which waits for the step
FOR UPDATE) waits for the chunks under way, the tick skips a timer whose parts are working, and
the part that fires the step can still update the row (FOR NO KEY UPDATE does not conflict).
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record

# The step's unread above '' in `$3` consecutive ranges, cut where `$4` unread (counted just now
# by escalations.COUNTS) divide evenly: a walk of recipients_unread_idx per cut. No parts when a
# cut falls beyond the last unread (many read meanwhile): the step goes on serially then.
#   $1 notice  $2 step code  $3 parts  $4 unread
SPLIT = """
WITH cut AS (
    SELECT k, (SELECT member_id FROM recipients WHERE notice_id = $1 AND read_at IS NULL
               ORDER BY member_id OFFSET $4::bigint * k / $3 LIMIT 1) AS at
    FROM generate_series(1, $3 - 1) AS k
)
INSERT INTO escalation_parts (notice_id, step, part, parts, cursor, upper)
SELECT $1, $2, p, $3, coalesce((SELECT at FROM cut WHERE k = p), ''), (SELECT at FROM cut WHERE k = p + 1)
FROM generate_series(0, $3 - 1) AS p
WHERE NOT EXISTS (SELECT 1 FROM cut WHERE at IS NULL)
ON CONFLICT DO NOTHING"""

# A part of the notice's step in progress that nobody reminds right now (a second job skips it),
# while the timer is still on that step and the notice neither recalled nor expired.
CLAIM = """
SELECT p.step, p.part, p.cursor, p.upper, p.reached, p.sends, p.chunks,
       e.round, e.next_step, e.step_progress, n.escalation
FROM escalation_parts p
JOIN escalations e ON e.notice_id = p.notice_id
JOIN notices n ON n.id = p.notice_id
WHERE p.notice_id = $1 AND NOT p.done
  AND e.state = 'active' AND (e.step_progress ->> 'step')::int = p.step
  AND n.state <> 'recalled' AND (n.expires_at IS NULL OR n.expires_at > (SELECT notifier_now()))
ORDER BY p.part LIMIT 1
FOR UPDATE OF p SKIP LOCKED FOR KEY SHARE OF e"""

ADVANCE = """
UPDATE escalation_parts SET cursor = coalesce($4, cursor), reached = $5, sends = sends + $6,
    chunks = chunks + 1, done = $7, updated_at = (SELECT notifier_now())
WHERE notice_id = $1 AND step = $2 AND part = $3"""
# Serialises the parts that finish: the statement after it (its own snapshot) sees every other
# finished part committed, so exactly one -- the last -- finds none left.
LOCK_FINISH = "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 727037))"
LEFT = "SELECT count(*) FROM escalation_parts WHERE notice_id = $1 AND step = $2 AND NOT done"
# What the parts did, for the step's event; their rows go with the step.
DONE = """
DELETE FROM escalation_parts WHERE notice_id = $1 AND step = $2
RETURNING reached, sends"""
# A step stopped while in parts (recall, expiry) leaves its parts behind: whoever finds them gone
# from the timer's step removes them.
PRUNE = """
DELETE FROM escalation_parts p WHERE p.notice_id = $1 AND NOT EXISTS (
    SELECT 1 FROM escalations e
    WHERE e.notice_id = p.notice_id AND e.state = 'active' AND (e.step_progress ->> 'step')::int = p.step)"""


async def split(conn: Connection, notice_id: str, step: int, parts: int, unread: int) -> bool:
    """Whether the step is in parts now (call with the timer row locked)."""
    return str(await conn.execute(SPLIT, notice_id, step, parts, unread)) != "INSERT 0 0"


async def claim(conn: Connection, notice_id: str) -> Record | None:
    return await conn.fetchrow(CLAIM, notice_id)


async def advance(
    conn: Connection,
    notice_id: str,
    part: Record,
    cursor: str | None,
    reached: dict[str, int],
    sends: int,
    done: bool,
) -> int:
    """Record a part's chunk; returns how many parts are left (0: this one fires the step)."""
    step = part["step"]
    await conn.execute(ADVANCE, notice_id, step, part["part"], cursor, reached, sends, done)
    if not done:
        return -1
    await conn.execute(LOCK_FINISH, notice_id)
    return int(await conn.fetchval(LEFT, notice_id, step))


async def done(conn: Connection, notice_id: str, step: int) -> tuple[dict[str, int], int]:
    """(members reminded per channel, sends) of the step's parts, summed; removes the parts."""
    reached: dict[str, int] = {}
    sends = 0
    for row in await conn.fetch(DONE, notice_id, step):
        for channel, n in dict(row["reached"]).items():
            reached[channel] = reached.get(channel, 0) + int(n)
        sends += int(row["sends"])
    return reached, sends


async def prune(conn: Connection, notice_id: str) -> None:
    await conn.execute(PRUNE, notice_id)
