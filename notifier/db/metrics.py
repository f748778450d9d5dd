"""What /metrics reads from PostgreSQL when scraped: the shared state of the delivery queue and
the providers' circuit breakers (notifier/metrics.py says why state is read, not counted).

Each statement reads a partial index or a small table: the queued rows (``deliveries_due_idx``),
the rows in flight (``deliveries_leased_idx``), one row per breaker.
"""

from __future__ import annotations

from notifier.db.pool import Connection, Record

# Queued rows by channel and why they wait (NULL: nothing holds them), how many are due now, and
# how long the oldest due one has been due (engine clock).
QUEUE = """
SELECT channel, coalesce(wait_reason, 'none') AS wait, count(*) AS queued,
       count(*) FILTER (WHERE next_attempt_at <= (SELECT notifier_now())) AS due,
       coalesce(extract(epoch FROM (SELECT notifier_now()) - min(next_attempt_at)
                FILTER (WHERE next_attempt_at <= (SELECT notifier_now()))), 0) AS oldest_due_age
FROM deliveries WHERE state = 'queued'
GROUP BY channel, wait"""
IN_FLIGHT = """
SELECT channel, count(*) AS n,
       count(*) FILTER (WHERE lease_until < (SELECT notifier_now())) AS lease_expired
FROM deliveries WHERE state = 'sending' GROUP BY channel"""
BREAKERS = """
SELECT key, failures, opened_count, coalesce(open_until > (SELECT notifier_now()), false) AS is_open
FROM circuit_breakers"""
LESSON_RUNS_TODAY = """
SELECT count(*) FROM lesson_runs WHERE sent_at >= (SELECT notifier_now()) - interval '24 hours'"""


async def queue(conn: Connection) -> list[Record]:
    return list(await conn.fetch(QUEUE))


async def in_flight(conn: Connection) -> list[Record]:
    return list(await conn.fetch(IN_FLIGHT))


async def breakers(conn: Connection) -> list[Record]:
    return list(await conn.fetch(BREAKERS))


async def lesson_runs_last_day(conn: Connection) -> int:
    return int(await conn.fetchval(LESSON_RUNS_TODAY))
