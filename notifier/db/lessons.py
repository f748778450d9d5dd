"""lessons and lesson_runs: the daily lesson of each unit, and the row that makes "sent once" a
constraint.

A unit's lesson settings are inherited: its own time zone, lesson time and reminder time, else
the nearest ancestor's, finally Asia/Shanghai and 08:00 (no reminder). ``effective_cte`` walks
up the tree (``units.ancestors``) for a set of units in one statement; the scheduler and the API
share it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from notifier.db.pool import Connection, Record
from notifier.db.quiet import DEFAULT_TIMEZONE
from notifier.db.units import ancestors

DEFAULT_LESSON_TIME = "08:00"


def effective_cte(units_sql: str) -> str:
    """``WITH RECURSIVE`` ending in ``eff(unit_id, tz, lesson_time, reminder_time)`` for the
    units ``units_sql`` selects (one column, ``unit_id``)."""
    return f"""
WITH RECURSIVE cand AS ({units_sql}),
{ancestors("SELECT unit_id, unit_id FROM cand", "unit_id")},
eff AS (
    SELECT up.unit_id,
           coalesce((array_agg(u.timezone ORDER BY up.depth) FILTER (WHERE u.timezone IS NOT NULL))[1],
                    '{DEFAULT_TIMEZONE}') AS tz,
           coalesce((array_agg(u.lesson_time ORDER BY up.depth) FILTER (WHERE u.lesson_time IS NOT NULL))[1],
                    time '{DEFAULT_LESSON_TIME}') AS lesson_time,
           (array_agg(u.lesson_reminder_time ORDER BY up.depth)
                FILTER (WHERE u.lesson_reminder_time IS NOT NULL))[1] AS reminder_time
    FROM up JOIN units u ON u.id = up.id GROUP BY up.unit_id
)"""


# The units with a lesson dated within a day of the UTC date (every time zone's "today" lies there)
# that has no run yet: the only units DUE and NEXT_DUE walk up the tree for.
UNSENT_CANDIDATES = """
    SELECT DISTINCT l.unit_id FROM lessons l
    WHERE l.day BETWEEN ((SELECT notifier_now()) AT TIME ZONE 'UTC')::date - 1
                    AND ((SELECT notifier_now()) AT TIME ZONE 'UTC')::date + 1
      AND NOT EXISTS (SELECT 1 FROM lesson_runs r WHERE r.unit_id = l.unit_id AND r.day = l.day)"""

# Every unit whose lesson for its local today is due (its local lesson time has come) and not yet
# sent. Candidates are lessons dated within a day of the UTC date (every time zone's "today" lies
# there) without a run; only they walk up the tree. A lesson row being edited right now is skipped
# (SKIP LOCKED) and found by the next tick; the rows returned stay locked until commit, so an edit
# or a delete cannot slip in between this statement and the insert.
#   $1 limit
# remind_after: seconds from the lesson time to the reminder time (computed on instants, so a
# daylight-saving change is honoured), only while the reminder time still lies ahead.
DUE = (
    effective_cte(UNSENT_CANDIDATES)
    + """
SELECT l.unit_id, l.day, (l.day + eff.lesson_time) AT TIME ZONE eff.tz AS due_at,
       CASE WHEN eff.reminder_time > eff.lesson_time
                 AND (l.day + eff.reminder_time) AT TIME ZONE eff.tz > (SELECT notifier_now())
            THEN extract(epoch FROM ((l.day + eff.reminder_time) AT TIME ZONE eff.tz)
                                    - ((l.day + eff.lesson_time) AT TIME ZONE eff.tz))::float8
       END AS remind_after
FROM eff JOIN lessons l ON l.unit_id = eff.unit_id AND l.day = ((SELECT notifier_now()) AT TIME ZONE eff.tz)::date
WHERE (SELECT notifier_now()) >= (l.day + eff.lesson_time) AT TIME ZONE eff.tz
  AND NOT EXISTS (SELECT 1 FROM lesson_runs r WHERE r.unit_id = l.unit_id AND r.day = l.day)
ORDER BY due_at, l.unit_id
LIMIT $1
FOR SHARE OF l SKIP LOCKED"""
)

# Send a set of due lessons in one statement: the run row is inserted first and its primary key
# (unit, day) decides -- a second scheduler's insert waits for the first to commit and then does
# nothing, so only runs this statement inserted get a notice. The notice goes to the unit's
# subtree, carries the lesson's text, and is stamped with the lesson time as send_at (so a late
# send keeps the evening reminder at its local time). The foreign key from the run to its notice
# is checked at the end of the statement, when both exist.
#   $1 [{unit_id, day, due_at, escalation}]  $2 channels  $3 the optional ones among them
SEND = """
WITH due AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS d(unit_id text, day date, due_at timestamptz, escalation jsonb)
),
run AS (
    INSERT INTO lesson_runs (unit_id, day, notice_id)
    SELECT d.unit_id, d.day, gen_random_uuid() FROM due d
    ON CONFLICT (unit_id, day) DO NOTHING
    RETURNING unit_id, day, notice_id
),
ins AS (
    INSERT INTO notices (id, kind, title, body, audience, channels, optional_channels, scope_unit_id, escalation,
                         send_at, state)
    SELECT run.notice_id, 'lesson', l.title, l.body,
           jsonb_build_object('units', jsonb_build_array(run.unit_id), 'members', '[]'::jsonb),
           $2::text[], $3::text[], run.unit_id, d.escalation, d.due_at, 'queued'
    FROM run JOIN due d USING (unit_id, day) JOIN lessons l USING (unit_id, day)
    RETURNING id, scope_unit_id
),
-- The lesson's quiz goes out with it: its members take it through this notice.
quiz AS (
    UPDATE quizzes q SET notice_id = run.notice_id, updated_at = (SELECT notifier_now())
    FROM run JOIN lessons l USING (unit_id, day)
    WHERE q.id = l.quiz_id AND q.notice_id IS NULL
),
-- On the record, in the same statement: the scheduler sent this unit's lesson for this day.
logged AS (
    INSERT INTO audit_log (actor_key_id, actor_role, action, target_type, target_id, unit_ids, details)
    SELECT NULL, 'scheduler', 'lesson.send', 'notice', ins.id::text, ARRAY[ins.scope_unit_id],
           jsonb_build_object('day', run.day, 'unit_id', run.unit_id)
    FROM ins JOIN run ON run.notice_id = ins.id
)
SELECT id AS notice_id, scope_unit_id AS unit_id FROM ins ORDER BY scope_unit_id"""

# --- the API ----------------------------------------------------------------------------------

UPSERT = """
INSERT INTO lessons (unit_id, day, title, body, quiz, quiz_id) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (unit_id, day) DO UPDATE SET title = excluded.title, body = excluded.body,
    quiz = excluded.quiz, quiz_id = excluded.quiz_id, updated_at = (SELECT notifier_now())
RETURNING (xmax = 0) AS created"""

# Lessons of one unit with when they go (the local lesson time as an instant) and whether they went:
# 'sent' (a run exists), 'missed' (its local day is over without a run: past days are never sent
# late), else 'scheduled'.
#   $1 unit  $2 from  $3 to  $4 after (keyset cursor)  $5 limit
LIST = (
    effective_cte("SELECT $1::text AS unit_id")
    + """
SELECT l.unit_id, l.day, l.title, l.body, l.quiz, l.quiz_id, l.created_at, l.updated_at,
       (l.day + eff.lesson_time) AT TIME ZONE eff.tz AS send_at, r.notice_id, r.sent_at,
       CASE WHEN r.notice_id IS NOT NULL THEN 'sent'
            WHEN l.day < ((SELECT notifier_now()) AT TIME ZONE eff.tz)::date THEN 'missed'
            ELSE 'scheduled' END AS state
FROM lessons l JOIN eff ON eff.unit_id = l.unit_id
LEFT JOIN lesson_runs r ON r.unit_id = l.unit_id AND r.day = l.day
WHERE l.unit_id = $1
  AND ($2::date IS NULL OR l.day >= $2) AND ($3::date IS NULL OR l.day <= $3)
  AND ($4::date IS NULL OR l.day > $4)
ORDER BY l.day
LIMIT $5"""
)

# A delete waits for a scheduler that holds the lesson (FOR UPDATE), then looks for its run in a
# statement of its own, which sees a run that scheduler committed.
LOCK = "SELECT 1 FROM lessons WHERE unit_id = $1 AND day = $2 FOR UPDATE"
RUN = "SELECT notice_id, sent_at FROM lesson_runs WHERE unit_id = $1 AND day = $2"
DELETE = "DELETE FROM lessons WHERE unit_id = $1 AND day = $2"


# Seconds until the soonest lesson of a local today that is not due yet (NULL: none today), for
# the tick's look-ahead (workers/tick.py): the same candidates and effective settings as DUE.
NEXT_DUE = (
    effective_cte(UNSENT_CANDIDATES)
    + """
SELECT extract(epoch FROM min((l.day + eff.lesson_time) AT TIME ZONE eff.tz) - (SELECT notifier_now()))::float8
FROM eff JOIN lessons l ON l.unit_id = eff.unit_id AND l.day = ((SELECT notifier_now()) AT TIME ZONE eff.tz)::date
WHERE (SELECT notifier_now()) < (l.day + eff.lesson_time) AT TIME ZONE eff.tz
  AND NOT EXISTS (SELECT 1 FROM lesson_runs r WHERE r.unit_id = l.unit_id AND r.day = l.day)"""
)


async def due(conn: Connection, limit: int) -> list[Record]:
    return list(await conn.fetch(DUE, limit))


async def seconds_to_next_due(conn: Connection) -> float | None:
    """Seconds until the soonest lesson still to come today (None: none)."""
    seconds = await conn.fetchval(NEXT_DUE)
    return None if seconds is None else float(seconds)


async def send(
    conn: Connection, due: list[dict[str, Any]], channels: list[str], optional: list[str] | None = None
) -> list[Record]:
    """Insert runs and notices for ``due`` rows (on ``channels``, the ``optional`` ones used only
    where they reach); returns the notices this call created."""
    if not due:
        return []
    return list(await conn.fetch(SEND, due, channels, optional or []))


async def upsert(
    conn: Connection,
    unit_id: str,
    day: date,
    title: str,
    body: str,
    quiz: dict[str, Any] | None,
    quiz_id: str | None = None,
) -> bool:
    """Create or replace the lesson; True when it was created."""
    return bool(await conn.fetchval(UPSERT, unit_id, day, title, body, quiz, quiz_id))


async def list_for_unit(
    conn: Connection,
    unit_id: str,
    *,
    start: date | None = None,
    end: date | None = None,
    after: date | None = None,
    limit: int = 100,
) -> list[Record]:
    return list(await conn.fetch(LIST, unit_id, start, end, after, limit))


async def get(conn: Connection, unit_id: str, day: date) -> Record | None:
    rows = await list_for_unit(conn, unit_id, start=day, end=day, limit=1)
    return rows[0] if rows else None


async def lock(conn: Connection, unit_id: str, day: date) -> bool:
    """Lock the lesson for a change; False when there is none."""
    return await conn.fetchval(LOCK, unit_id, day) is not None


async def run_of(conn: Connection, unit_id: str, day: date) -> Record | None:
    return await conn.fetchrow(RUN, unit_id, day)


async def delete(conn: Connection, unit_id: str, day: date) -> None:
    await conn.execute(DELETE, unit_id, day)


def as_dict(row: Record) -> dict[str, Any]:
    return {
        "unit_id": row["unit_id"],
        "date": row["day"].isoformat(),
        "title": row["title"],
        "body": row["body"],
        "quiz": row["quiz"],
        "quiz_id": str(row["quiz_id"]) if row["quiz_id"] else None,
        "send_at": row["send_at"].isoformat(),
        "state": row["state"],
        "notice_id": str(row["notice_id"]) if row["notice_id"] else None,
        "sent_at": row["sent_at"].isoformat() if row["sent_at"] else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
