"""rate_buckets, circuit_breakers and per-contact send counts: the limits every worker shares.

All times are the engine clock (``(SELECT notifier_now())``), so tests move them forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from notifier.db.pool import Connection, Record

BUCKET_ENSURE = """
INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ($1, $2, (SELECT notifier_now()))
ON CONFLICT (key) DO NOTHING"""
BUCKET_LOCK = "SELECT tokens, extract(epoch FROM (SELECT notifier_now()) - updated_at) AS elapsed FROM rate_buckets WHERE key = $1 FOR UPDATE"
BUCKET_SET = "UPDATE rate_buckets SET tokens = $2, updated_at = (SELECT notifier_now()) WHERE key = $1"

# API requests: a bucket per key ('api-key:<id>'), taken from by the key lookup itself (composed
# into api_keys.AUTHENTICATE, so limiting costs no extra round trip). Unlike ``reserve`` it never
# goes into debt: a request with no token left is refused and leaves the bucket as it was (its
# refill is computed from ``tokens`` and ``updated_at``). ``api_bucket`` returns a row only when it
# took a token; ``api_bucket_seen`` is the bucket as the statement's snapshot saw it, refilled, for
# the headers of a refusal. Needs a CTE ``api_limit(key_id, rate, burst)``.
API_BUCKET_KEY = "'api-key:' || api_limit.key_id"
API_BUCKET_REFILLED = (
    "least(excluded.tokens + 1, b.tokens + greatest(0, extract(epoch FROM (SELECT notifier_now()) - b.updated_at))"
    " * (SELECT rate FROM api_limit))"
)
API_BUCKET_TAKE = f"""
api_bucket AS (
    INSERT INTO rate_buckets AS b (key, tokens, updated_at)
    SELECT {API_BUCKET_KEY}, api_limit.burst - 1, (SELECT notifier_now()) FROM api_limit
    ON CONFLICT (key) DO UPDATE SET tokens = {API_BUCKET_REFILLED} - 1, updated_at = (SELECT notifier_now())
    WHERE {API_BUCKET_REFILLED} >= 1
    RETURNING b.tokens
), api_bucket_seen AS (
    SELECT least(api_limit.burst, s.tokens
                 + greatest(0, extract(epoch FROM (SELECT notifier_now()) - s.updated_at)) * api_limit.rate) AS tokens
    FROM api_limit JOIN rate_buckets s ON s.key = {API_BUCKET_KEY}
)"""

# Sends to each contact inside the window, and when the oldest of them leaves it.
RECENT_PER_CONTACT = """
SELECT contact_id, count(*) AS n,
       extract(epoch FROM min(sent_at) + make_interval(secs => $3) - (SELECT notifier_now())) AS frees_in
FROM deliveries
WHERE contact_id = ANY($1::uuid[]) AND channel = $2 AND sent_at > (SELECT notifier_now()) - make_interval(secs => $3)
  AND state IN ('sending', 'sent', 'delivered', 'unknown')
GROUP BY contact_id"""

BREAKER_GET = """
SELECT failures, opened_count, open_until, open_until > (SELECT notifier_now()) AS is_open,
       extract(epoch FROM open_until - (SELECT notifier_now())) AS open_for
FROM circuit_breakers WHERE key = $1"""
BREAKER_SUCCESS = """
UPDATE circuit_breakers SET failures = 0, opened_count = 0, open_until = NULL, updated_at = (SELECT notifier_now())
WHERE key = $1 AND (failures > 0 OR open_until IS NOT NULL)"""
# A failed batch: count it; at the threshold open (again) for an exponentially longer cool-down.
BREAKER_FAILURE = """
INSERT INTO circuit_breakers AS b (key, failures) VALUES ($1, 1)
ON CONFLICT (key) DO UPDATE SET failures = b.failures + 1, updated_at = (SELECT notifier_now())
RETURNING failures, opened_count"""
BREAKER_OPEN = """
UPDATE circuit_breakers SET open_until = (SELECT notifier_now()) + make_interval(secs => $2), opened_count = opened_count + 1,
    updated_at = (SELECT notifier_now())
WHERE key = $1 AND (open_until IS NULL OR open_until <= (SELECT notifier_now()))
RETURNING open_until"""


async def reserve(conn: Connection, key: str, n: int, rate: float, burst: float) -> list[float]:
    """Reserve ``n`` send slots from a token bucket that may go into debt (GCRA-style).

    Returns, per item, the seconds until its slot (0: now). Later callers queue behind earlier
    reservations, so every held row gets a truthful ETA and is never charged twice.
    Call inside a transaction: the bucket row stays locked until commit.
    """
    await conn.execute(BUCKET_ENSURE, key, burst)
    row = await conn.fetchrow(BUCKET_LOCK, key)
    assert row is not None
    tokens = min(burst, float(row["tokens"]) + max(0.0, float(row["elapsed"])) * rate)
    waits = [max(0.0, (i + 1 - tokens) / rate) for i in range(n)]
    await conn.execute(BUCKET_SET, key, tokens - n)
    return waits


async def recent_per_contact(
    conn: Connection, contact_ids: list[str], channel: str, window: float
) -> dict[str, Record]:
    rows = await conn.fetch(RECENT_PER_CONTACT, contact_ids, channel, window)
    return {str(r["contact_id"]): r for r in rows}


@dataclass(slots=True)
class BreakerState:
    failures: int
    is_open: bool
    open_for: float  # seconds until the cool-down ends (when open)
    half_open: bool  # the cool-down passed after an opening: let one probe through


async def breaker_state(conn: Connection, key: str, threshold: int) -> BreakerState:
    row = await conn.fetchrow(BREAKER_GET, key)
    if row is None:
        return BreakerState(0, False, 0.0, False)
    tripped = row["failures"] >= threshold
    is_open = bool(row["is_open"])
    open_for = float(row["open_for"]) if is_open else 0.0
    return BreakerState(row["failures"], is_open, open_for, tripped and not is_open)


async def breaker_success(conn: Connection, key: str) -> None:
    await conn.execute(BREAKER_SUCCESS, key)


async def breaker_failure(
    conn: Connection, key: str, threshold: int, base: float, cap: float
) -> datetime | None:
    """Record a failed batch; returns when the breaker reopens if this failure opened it."""
    row = await conn.fetchrow(BREAKER_FAILURE, key)
    assert row is not None
    if row["failures"] < threshold:
        return None
    cool_down = min(cap, base * (2 ** row["opened_count"]))
    # Batches already in flight when it opened fail too: they must not reopen it (or double the
    # cool-down) while it is open.
    until: datetime | None = await conn.fetchval(BREAKER_OPEN, key, cool_down)
    return until
