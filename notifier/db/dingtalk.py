"""DingTalk read-poll timers (``dingtalk_read_polls``, one row per work-notification task) and the
deliveries a task carried; DING recall timers (``dingtalk_dings``, one row per openDingId). The timer rows are started by triggers on the
write-back (schemas/0012, schemas/0017); the poll schedule is the SQL function ``dingtalk_poll_delay``."""

from __future__ import annotations

from notifier.db.pool import Connection, Pool, Record

# Due timers, taken for this poll: pushed ``lease`` seconds ahead, so a worker that dies while
# asking DingTalk leaves the row due again, and two ticks never poll one task at once.
CLAIM_DUE = """
UPDATE dingtalk_read_polls p SET next_poll_at = (SELECT notifier_now()) + make_interval(secs => $2)
WHERE p.task_id IN (
    SELECT task_id FROM dingtalk_read_polls
    WHERE done_at IS NULL AND next_poll_at <= (SELECT notifier_now())
    ORDER BY next_poll_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING p.task_id"""

# Which delivery each user id of these tasks is (the contact the delivery went to).
TASK_DELIVERIES = """
SELECT d.id, d.provider_ref AS task_id, d.contact_id, c.target #>> '{}' AS user_id
FROM deliveries d JOIN contacts c ON c.id = d.contact_id
WHERE d.channel = 'dingtalk' AND d.provider_ref = ANY($1::text[])"""

# After a poll: the next one by the schedule (or when DingTalk asked us to wait), never past the
# 24-hour window; done when nothing is left unread, when the task is gone, or the window is over.
#   $1 task ids  $2 done (nothing more to learn)  $3 error  $4 wait (seconds, or NULL)
FINISH = """
UPDATE dingtalk_read_polls p SET
    polls = p.polls + 1,
    last_error = r.error,
    next_poll_at = least((SELECT notifier_now()) + coalesce(make_interval(secs => r.wait),
                                                            dingtalk_poll_delay(p.polls + 1)),
                         p.sent_at + interval '23 hours 59 minutes'),
    done_at = CASE WHEN r.done OR (SELECT notifier_now()) >= p.sent_at + interval '23 hours 59 minutes'
                   THEN (SELECT notifier_now()) END
FROM unnest($1::text[], $2::bool[], $3::text[], $4::float8[]) AS r(task_id, done, error, wait)
WHERE p.task_id = r.task_id"""

# A recalled notice's tasks still inside DingTalk's 24-hour window are due for withdrawing.
REQUEST_RECALL = """
UPDATE dingtalk_read_polls SET recall_due_at = (SELECT notifier_now())
WHERE notice_id = ANY($1::uuid[]) AND recalled_at IS NULL AND recall_due_at IS NULL
  AND sent_at > (SELECT notifier_now()) - interval '24 hours'"""


def _claim_recalls(table: str, key: str) -> str:
    """Due recalls of ``table`` (keyed by ``key``), leased for $2 seconds, at most $1."""
    return f"""
UPDATE {table} t SET recall_due_at = (SELECT notifier_now()) + make_interval(secs => $2)
WHERE t.{key} IN (
    SELECT {key} FROM {table} WHERE recall_due_at <= (SELECT notifier_now())
    ORDER BY recall_due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING t.{key}"""


def _finish_recalls(table: str, key: str) -> str:
    """After recall calls: done (withdrawn, or refused for good: the error says why), or again
    later. $1 keys  $2 withdrawn  $3 error  $4 retry in (seconds, NULL when final)."""
    return f"""
UPDATE {table} t SET
    recalled_at = CASE WHEN r.ok THEN (SELECT notifier_now()) END,
    recall_error = r.error,
    recall_due_at = CASE WHEN r.retry_in IS NOT NULL THEN (SELECT notifier_now()) + make_interval(secs => r.retry_in) END
FROM unnest($1::text[], $2::bool[], $3::text[], $4::float8[]) AS r(id, ok, error, retry_in)
WHERE t.{key} = r.id"""


CLAIM_RECALLS = _claim_recalls("dingtalk_read_polls", "task_id")
FINISH_RECALLS = _finish_recalls("dingtalk_read_polls", "task_id")

# A recalled notice's DINGs are due for withdrawing (once each).
REQUEST_DING_RECALL = """
UPDATE dingtalk_dings SET recall_due_at = (SELECT notifier_now())
WHERE notice_id = ANY($1::uuid[]) AND recalled_at IS NULL AND recall_due_at IS NULL AND recall_error IS NULL"""

CLAIM_DING_RECALLS = _claim_recalls("dingtalk_dings", "open_ding_id")
FINISH_DING_RECALLS = _finish_recalls("dingtalk_dings", "open_ding_id")

# Finished timers are kept a week for inspection, then deleted, a bounded batch a time.
PURGE = """
DELETE FROM dingtalk_read_polls WHERE task_id IN (
    SELECT task_id FROM dingtalk_read_polls
    WHERE done_at < (SELECT notifier_now()) - interval '7 days' AND recall_due_at IS NULL LIMIT $1)"""


async def claim_due(conn: Connection | Pool, limit: int, lease_seconds: float) -> list[str]:
    return [r["task_id"] for r in await conn.fetch(CLAIM_DUE, limit, float(lease_seconds))]


async def task_deliveries(conn: Connection, task_ids: list[str]) -> list[Record]:
    return list(await conn.fetch(TASK_DELIVERIES, task_ids))


async def finish(
    conn: Connection,
    task_ids: list[str],
    done: list[bool],
    errors: list[str | None],
    waits: list[float | None],
) -> None:
    await conn.execute(FINISH, task_ids, done, errors, waits)


async def request_recall(conn: Connection, notice_ids: list[str]) -> None:
    """Withdraw on DingTalk what a recalled notice left there: its work notifications and DINGs."""
    await conn.execute(REQUEST_RECALL, notice_ids)
    await conn.execute(REQUEST_DING_RECALL, notice_ids)


async def claim_recalls(conn: Connection | Pool, limit: int, lease_seconds: float) -> list[str]:
    return [r["task_id"] for r in await conn.fetch(CLAIM_RECALLS, limit, float(lease_seconds))]


async def finish_recalls(
    conn: Connection | Pool,
    task_ids: list[str],
    ok: list[bool],
    errors: list[str | None],
    retry_in: list[float | None],
) -> None:
    await conn.execute(FINISH_RECALLS, task_ids, ok, errors, retry_in)


async def purge(conn: Connection | Pool, limit: int = 1000) -> None:
    await conn.execute(PURGE, limit)


async def claim_ding_recalls(conn: Connection | Pool, limit: int, lease_seconds: float) -> list[str]:
    return [r["open_ding_id"] for r in await conn.fetch(CLAIM_DING_RECALLS, limit, float(lease_seconds))]


async def finish_ding_recalls(
    conn: Connection | Pool,
    ids: list[str],
    ok: list[bool],
    errors: list[str | None],
    retry_in: list[float | None],
) -> None:
    await conn.execute(FINISH_DING_RECALLS, ids, ok, errors, retry_in)
