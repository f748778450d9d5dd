"""unit_contacts (where a unit as a whole is reached: its group chat robot) and unit_posts (a
notice posted once in a unit's group; the row is its state and its timer). Posts are started by a
trigger when a notice goes out (schemas/0017); the tick's ``unit_posts`` part sends them."""

from __future__ import annotations

from typing import Any

from notifier.db.pool import Connection, Pool, Record

CONTACT_COLUMNS = "id, unit_id, channel, target, created_at, disabled_at, disabled_reason"

LIST_CONTACTS = f"SELECT {CONTACT_COLUMNS} FROM unit_contacts WHERE unit_id = $1 ORDER BY channel"

# The unit's contacts become exactly these (one per channel): kept when unchanged (a disabled
# one set again is enabled), replaced when the target changed, removed when not named.
#   $1 unit  $2 channels  $3 targets
PUT_CONTACTS = """
WITH i AS (SELECT * FROM unnest($2::text[], $3::jsonb[]) AS i(channel, target)),
gone AS (DELETE FROM unit_contacts WHERE unit_id = $1 AND channel <> ALL($2::text[])),
up AS (
    INSERT INTO unit_contacts (unit_id, channel, target) SELECT $1, channel, target FROM i
    ON CONFLICT (unit_id, channel) DO UPDATE SET target = excluded.target, disabled_at = NULL,
        disabled_reason = NULL, created_at = (SELECT notifier_now())
    WHERE unit_contacts.target IS DISTINCT FROM excluded.target OR unit_contacts.disabled_at IS NOT NULL
)
SELECT 1"""

# Due posts (queued, or 'sending' past their lease: the worker died), taken for this tick; a
# recalled or expired notice's posts are cancelled instead.
CANCEL_MOOT = """
UPDATE unit_posts p SET state = 'cancelled', error = 'the notice was recalled or expired', wait_reason = NULL
FROM notices n
WHERE n.id = p.notice_id AND p.state IN ('queued', 'sending') AND p.next_attempt_at <= (SELECT notifier_now())
  AND (n.state <> 'active' OR (n.expires_at IS NOT NULL AND n.expires_at <= (SELECT notifier_now())))"""

CLAIM = """
UPDATE unit_posts p SET state = 'sending', attempts = p.attempts + 1,
    next_attempt_at = (SELECT notifier_now()) + make_interval(secs => $2)
FROM (SELECT id FROM unit_posts
      WHERE state IN ('queued', 'sending') AND next_attempt_at <= (SELECT notifier_now())
      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due,
     notices n
WHERE p.id = due.id AND n.id = p.notice_id
RETURNING p.id, p.notice_id, p.unit_id, p.channel, p.contact_id, p.attempts, p.wait_reason, n.kind, n.title, n.body,
          (SELECT c.target FROM unit_contacts c WHERE c.id = p.contact_id AND c.disabled_at IS NULL) AS target"""

# After the send: sent, failed (with why), or queued again after a wait (throttled / retry); a
# final outcome is on the notice's timeline (group_posted / group_post_failed) in the same
# statement.   $1 ids  $2 states  $3 errors  $4 retry in (seconds)  $5 wait reasons
FINISH = """
WITH done AS (
    UPDATE unit_posts p SET state = r.state, error = r.error, wait_reason = r.reason,
        next_attempt_at = (SELECT notifier_now()) + make_interval(secs => coalesce(r.retry_in, 0)),
        sent_at = CASE WHEN r.state = 'sent' THEN (SELECT notifier_now()) ELSE p.sent_at END
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::text[]) AS r(id, state, error, retry_in, reason)
    WHERE p.id = r.id
    RETURNING p.notice_id, p.unit_id, p.channel, p.state, p.error
)
INSERT INTO notice_events (notice_id, kind, detail)
SELECT notice_id, CASE state WHEN 'sent' THEN 'group_posted' ELSE 'group_post_failed' END,
       jsonb_strip_nulls(jsonb_build_object('unit', unit_id, 'channel', channel, 'error', error))
FROM done WHERE state IN ('sent', 'failed')"""

# Held back by the robot's rate: queued again for when its slot comes, no attempt spent.
HOLD = """
UPDATE unit_posts p SET state = 'queued', attempts = p.attempts - 1, wait_reason = 'throttled',
    next_attempt_at = (SELECT notifier_now()) + make_interval(secs => r.wait)
FROM unnest($1::bigint[], $2::float8[]) AS r(id, wait)
WHERE p.id = r.id"""

DISABLE_CONTACTS = """
UPDATE unit_contacts SET disabled_at = (SELECT notifier_now()), disabled_reason = r.reason
FROM unnest($1::uuid[], $2::text[]) AS r(id, reason)
WHERE unit_contacts.id = r.id AND unit_contacts.disabled_at IS NULL"""

LIST_POSTS = """
SELECT unit_id, channel, state, attempts, error, wait_reason, sent_at FROM unit_posts
WHERE notice_id = $1 ORDER BY unit_id, channel"""


async def list_contacts(conn: Connection, unit_id: str) -> list[Record]:
    return list(await conn.fetch(LIST_CONTACTS, unit_id))


async def put_contacts(conn: Connection, unit_id: str, items: list[tuple[str, Any]]) -> list[Record]:
    await conn.execute(PUT_CONTACTS, unit_id, [c for c, _ in items], [t for _, t in items])
    return await list_contacts(conn, unit_id)


async def cancel_moot(conn: Connection | Pool) -> None:
    await conn.execute(CANCEL_MOOT)


async def claim(conn: Connection, limit: int, lease_seconds: float) -> list[Record]:
    return list(await conn.fetch(CLAIM, limit, float(lease_seconds)))


async def finish(
    conn: Connection,
    ids: list[int],
    states: list[str],
    errors: list[str | None],
    retry_in: list[float | None],
    reasons: list[str | None],
) -> None:
    await conn.execute(FINISH, ids, states, errors, retry_in, reasons)


async def hold(conn: Connection, ids: list[int], waits: list[float]) -> None:
    await conn.execute(HOLD, ids, waits)


async def disable_contacts(conn: Connection, ids: list[str], reasons: list[str]) -> None:
    await conn.execute(DISABLE_CONTACTS, ids, reasons)


async def list_posts(conn: Connection | Pool, notice_id: str) -> list[Record]:
    return list(await conn.fetch(LIST_POSTS, notice_id))
