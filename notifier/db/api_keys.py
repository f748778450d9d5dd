"""api_keys: bearer tokens, stored only as SHA-256 hashes.

A key issued with another key records it in ``created_by``; revoking a key revokes every key
below it in that tree, so a leaked key cannot leave working children behind. A key may expire
(``expires_at``, judged by ``notifier_now()``). A key rotated to a new token keeps accepting
its previous token until ``previous_valid_until``. ``last_used_at`` is refreshed at most once per
``LAST_USED_RESOLUTION_SECONDS`` per key, so authenticating is a read, not a write per request.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from notifier.db.pool import Connection, Pool, Record, again_after_deadlock
from notifier.db.throttle import API_BUCKET_TAKE

LAST_USED_RESOLUTION_SECONDS = 60

COLUMNS = "id, name, role, unit_id, member_id, created_by, created_at, expires_at, last_used_at, revoked_at"
# Only while the issuing key ($6) is still usable; FOR SHARE holds it so that a revocation
# running at the same moment either waits for this key (and then revokes it too) or has
# already revoked the issuer (and nothing is inserted).
INSERT = f"""
INSERT INTO api_keys (name, role, unit_id, member_id, token_hash, created_by, expires_at)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE $6::uuid IS NULL OR EXISTS (
    SELECT 1 FROM api_keys issuer
    WHERE issuer.id = $6 AND issuer.revoked_at IS NULL
      AND (issuer.expires_at IS NULL OR issuer.expires_at > notifier_now())
    FOR SHARE)
RETURNING {COLUMNS}"""
NOW = "SELECT notifier_now()"

# The key for a token, if usable; marks it used when the mark is older than the resolution.
# SKIP LOCKED: of many concurrent requests with one key at the minute's turn, one writes and
# none waits for it.
AUTHENTICATE = f"""
WITH k AS (
    SELECT id, name, role, unit_id, member_id, expires_at, last_used_at FROM api_keys
    WHERE (token_hash = $1 OR (previous_token_hash = $1 AND previous_valid_until > notifier_now()))
      AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > notifier_now())
), stale AS (
    SELECT a.id FROM api_keys a JOIN k ON k.id = a.id
    WHERE a.last_used_at IS NULL OR a.last_used_at < notifier_now() - make_interval(secs => $2)
    FOR UPDATE OF a SKIP LOCKED
), touched AS (
    UPDATE api_keys SET last_used_at = notifier_now() FROM stale WHERE api_keys.id = stale.id RETURNING 1
), api_limit AS (
    SELECT k.id AS key_id, l.rate, l.burst
    FROM k JOIN unnest($3::text[], $4::float8[], $5::float8[]) AS l(role, rate, burst) ON l.role = k.role
),{API_BUCKET_TAKE}
SELECT id, name, role, unit_id, member_id, expires_at,
       EXISTS (SELECT 1 FROM api_bucket) AS allowed,
       coalesce((SELECT tokens FROM api_bucket), (SELECT tokens FROM api_bucket_seen), 0) AS tokens_left
FROM k"""
# AUTHENTICATE as the one statement of authenticate_key() (schemas/0035, which holds its text: a
# test compares): the API's sessions plan every execution (db/pool.py API_SESSION), and planning
# AUTHENTICATE was most of what a key cost the database per request; the function's plan is made
# once per session, by index whatever the tables' size then. Only this call is planned each time.
AUTHENTICATE_CALL = "SELECT * FROM authenticate_key($1, $2, $3, $4, $5)"
# Many lookups in one statement (the API's group commit of them, api/auth.py): each token's by
# authenticate_key() in turn, so each takes from its bucket after the ones before it; in the
# tokens' order, so that concurrent groups take their keys' buckets in one order. ``i``: the
# token's position (1-based); no key for it: a row of NULLs.
AUTHENTICATE_MANY = """
SELECT h.i, a.* FROM (SELECT * FROM unnest($1::bytea[]) WITH ORDINALITY AS h (token_hash, i) ORDER BY 1, 2) h
LEFT JOIN LATERAL authenticate_key(h.token_hash, $2, $3, $4, $5) a ON true"""

# Which keys a unit-bound caller may see and revoke, given its reach ($1: the unit ids of its
# subtree; NULL for an admin, who sees every key): keys bound to a unit in reach, and member keys
# of members it owns (every one of their units in reach; a shared member's keys are the admin's).
# Never an admin key. One rule for listing and revoking.
IN_SCOPE = """(
    $1::text[] IS NULL
    OR (k.role <> 'admin' AND (
        k.unit_id = ANY($1::text[])
        OR (k.role = 'member'
            AND EXISTS (SELECT 1 FROM member_units mu WHERE mu.member_id = k.member_id AND mu.unit_id = ANY($1::text[]))
            AND NOT EXISTS (SELECT 1 FROM member_units mu WHERE mu.member_id = k.member_id AND mu.unit_id <> ALL($1::text[])))
    ))
)"""
GET_IN_SCOPE = f"SELECT {COLUMNS} FROM api_keys k WHERE k.id = $2 AND {IN_SCOPE}"
# Keyset paging on (created_at, id): stable while keys are added.
LIST_IN_SCOPE = f"""
SELECT {COLUMNS} FROM api_keys k
WHERE {IN_SCOPE}
  AND ($2 OR (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > notifier_now())))
  AND ($3::timestamptz IS NULL OR (k.created_at, k.id) > ($3, $4::uuid))
ORDER BY k.created_at, k.id
LIMIT $5"""
# The key and everything issued below it. Run until it revokes nothing: a key issued below the
# tree and committed after this statement's snapshot is caught by the next run, and once a key
# is revoked here (row locked until commit) nothing new can be issued with it.
REVOKE_TREE = """
WITH RECURSIVE tree AS (
    SELECT id FROM api_keys WHERE id = $1
    UNION
    SELECT k.id FROM api_keys k JOIN tree ON k.created_by = tree.id
)
UPDATE api_keys SET revoked_at = (SELECT notifier_now())
WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL
RETURNING id"""


# A new token for a usable key; the old one keeps working until $3 (a rotation window: clients
# switch at their pace), and a token rotated out before is forgotten.
ROTATE = f"""
UPDATE api_keys SET previous_token_hash = token_hash, previous_valid_until = $3, token_hash = $2
WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > notifier_now())
RETURNING {COLUMNS}, previous_valid_until"""


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def insert(
    conn: Connection,
    name: str,
    role: str,
    unit_id: str | None,
    member_id: str | None,
    token: str,
    created_by: str | None,
    expires_at: datetime | None = None,
) -> Record | None:
    """The new key, or None when the issuing key was revoked or expired meanwhile."""
    return await conn.fetchrow(
        INSERT, name, role, unit_id, member_id, hash_token(token), created_by, expires_at
    )


async def rotate(conn: Connection, key_id: str, token: str, previous_valid_until: datetime) -> Record | None:
    """The key with its new token, or None when it was revoked or expired meanwhile."""
    return await conn.fetchrow(ROTATE, key_id, hash_token(token), previous_valid_until)


async def now(conn: Connection) -> datetime:
    value = await conn.fetchval(NOW)
    assert isinstance(value, datetime)
    return value


async def authenticate(pool: Pool, token: str, limits: dict[str, tuple[float, float]]) -> Record | None:
    """The usable key for ``token`` (not revoked, not expired), marking it used and taking a token
    from its rate bucket (``limits``: role -> (per second, burst)): ``allowed`` says whether there
    was one, ``tokens_left`` what is left (after this request, if allowed)."""
    roles = list(limits)
    return await pool.fetchrow(
        AUTHENTICATE_CALL,
        hash_token(token),
        float(LAST_USED_RESOLUTION_SECONDS),
        roles,
        [limits[r][0] for r in roles],
        [limits[r][1] for r in roles],
    )


async def authenticate_many(
    conn: Connection, tokens: list[str], limits: dict[str, tuple[float, float]]
) -> list[Record | None]:
    """``authenticate`` for each token, in one statement (run again after a deadlock); the answers
    in the tokens' order (None: no usable key)."""
    roles = list(limits)
    rows = await again_after_deadlock(
        conn,
        lambda: conn.fetch(
            AUTHENTICATE_MANY,
            [hash_token(t) for t in tokens],
            float(LAST_USED_RESOLUTION_SECONDS),
            roles,
            [limits[r][0] for r in roles],
            [limits[r][1] for r in roles],
        ),
    )
    answers: list[Record | None] = [None] * len(tokens)
    for row in rows:
        if row["id"] is not None:
            answers[row["i"] - 1] = row
    return answers


async def get_in_scope(conn: Connection, key_id: str, reach: list[str] | None) -> Record | None:
    return await conn.fetchrow(GET_IN_SCOPE, reach, key_id)


async def list_in_scope(
    conn: Connection,
    reach: list[str] | None,
    *,
    include_revoked: bool,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Record]:
    after_ts, after_id = after if after is not None else (None, None)
    return list(await conn.fetch(LIST_IN_SCOPE, reach, include_revoked, after_ts, after_id, limit))


async def revoke_tree(conn: Connection, key_id: str) -> int:
    """Revoke the key and every key issued below it; returns how many were revoked now."""
    total = 0
    while revoked := len(await conn.fetch(REVOKE_TREE, key_id)):
        total += revoked
    return total
