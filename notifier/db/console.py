"""console_links and console_sessions: one-time sign-in links and the console's server-side sessions.

A link row is used at most once (``USE_LINK`` sets ``used_at`` only where it is still NULL), so a
link copied from a browser's history or a proxy log signs nobody in. A session is found by the
SHA-256 of its cookie's random id; it ends after ``idle`` seconds without a request, at its
absolute expiry, or at sign-out. A secretary session stays one only while the member is still a
secretary of its unit; a session opened with an API key only while that key is usable.
"""

from __future__ import annotations

import hashlib

from notifier.db.lessons import effective_cte
from notifier.db.pool import Connection, Record
from notifier.db.throttle import API_BUCKET_TAKE
from notifier.db.units import audience_members, subtree

INSERT_LINK = """
INSERT INTO console_links (id, member_id, expires_at)
VALUES ($1, $2, notifier_now() + make_interval(secs => $3)) RETURNING id, member_id, expires_at"""

# $1 link id. Returns the row only for the first use of a live link.
USE_LINK = """
UPDATE console_links SET used_at = notifier_now()
WHERE id = $1 AND used_at IS NULL AND expires_at > notifier_now()
RETURNING id, member_id"""

# A token that is its own proof (a member's signed read link) recorded as used once: $1 the id
# derived from it, $2 its member, $3 its expiry. Returns a row only the first time.
USE_ONCE = """
INSERT INTO console_links (id, member_id, expires_at, used_at)
VALUES ($1, $2, $3, notifier_now()) ON CONFLICT (id) DO NOTHING RETURNING id"""

# The units a member is secretary of, by id.
SECRETARY_OF = "SELECT unit_id FROM unit_secretaries WHERE member_id = $1 ORDER BY unit_id"

INSERT_SESSION = """
INSERT INTO console_sessions (id_hash, member_id, key_id, role, unit_id, csrf, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, notifier_now() + make_interval(secs => $7))"""

# $1 id hash  $2 idle seconds. Touches the session and says whether its role still holds.
# A request of a session: keeps it alive and takes a token from its rate bucket -- the key's own
# bucket for a session opened with a key, else one per member (all their sessions together), and
# one for all the bootstrap admin's sessions, with the role's limits ($3..$5: roles, rates, bursts).
# The operator's token itself is not limited on the API, but a session is a browser's cookie, and
# a runaway page or a stolen cookie should meet the admin role's limit like an admin key's session.
# Composes db/throttle.py API_BUCKET_TAKE, as api_keys.AUTHENTICATE does.
TOUCH_SESSION = f"""
WITH s AS (
    UPDATE console_sessions s SET last_seen_at = notifier_now()
    WHERE s.id_hash = $1 AND s.ended_at IS NULL AND s.expires_at > notifier_now()
      AND s.last_seen_at > notifier_now() - make_interval(secs => $2)
    RETURNING s.member_id, s.key_id, s.role, s.unit_id, s.csrf,
        (s.role <> 'secretary' OR s.key_id IS NOT NULL OR EXISTS (
            SELECT 1 FROM unit_secretaries us WHERE us.unit_id = s.unit_id AND us.member_id = s.member_id)) AS role_holds,
        (s.key_id IS NULL OR EXISTS (
            SELECT 1 FROM api_keys k WHERE k.id = s.key_id AND k.revoked_at IS NULL
              AND (k.expires_at IS NULL OR k.expires_at > notifier_now()))) AS key_usable
), api_limit AS (
    SELECT coalesce(s.key_id::text, 'console-member:' || s.member_id, 'console-admin') AS key_id, l.rate, l.burst
    FROM s JOIN unnest($3::text[], $4::float8[], $5::float8[]) AS l(role, rate, burst) ON l.role = s.role
), {API_BUCKET_TAKE}
SELECT s.*, NOT EXISTS (SELECT 1 FROM api_limit) OR EXISTS (SELECT 1 FROM api_bucket) AS allowed,
       coalesce((SELECT tokens FROM api_bucket), (SELECT tokens FROM api_bucket_seen), 0) AS tokens_left,
       EXISTS (SELECT 1 FROM api_limit) AS limited
FROM s"""

END_SESSION = "UPDATE console_sessions SET ended_at = notifier_now() WHERE id_hash = $1 AND ended_at IS NULL"

SWITCH_UNIT = """
UPDATE console_sessions s SET unit_id = $2
WHERE s.id_hash = $1 AND s.role = 'secretary' AND s.key_id IS NULL
  AND EXISTS (SELECT 1 FROM unit_secretaries us WHERE us.unit_id = $2 AND us.member_id = s.member_id)"""

# Rows nobody can use any more, a day after they stopped being usable (run at each sign-in).
PURGE = """
WITH s AS (DELETE FROM console_sessions WHERE expires_at < notifier_now() - interval '1 day')
DELETE FROM console_links WHERE expires_at < notifier_now() - interval '1 day'"""

# The people an audience reaches: the members of the units' subtrees and the named members,
# counted once each -- the set the fan-out statement (db/fanout.py) resolves.
AUDIENCE_COUNT = "WITH RECURSIVE " + subtree("$1") + " SELECT count(*) FROM " + audience_members("$2") + " a"

TIMEZONE = effective_cte("SELECT $1::text AS unit_id") + " SELECT tz FROM eff"

# Members of a subtree (the audience picker), by name.
MEMBERS_WITHIN = (
    "WITH RECURSIVE "
    + subtree("$1")
    + """
SELECT DISTINCT m.id, m.name FROM members m JOIN member_units mu ON mu.member_id = m.id
JOIN sub ON sub.id = mu.unit_id ORDER BY m.name, m.id LIMIT $2"""
)
MEMBER_EXISTS = "SELECT EXISTS (SELECT 1 FROM members WHERE id = $1)"
MEMBER_NAMES = "SELECT id, name FROM members WHERE id = ANY($1::text[])"
MEMBERS_ALL = "SELECT id, name FROM members ORDER BY name, id LIMIT $1"


def session_hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def insert_link(conn: Connection, link_id: str, member_id: str | None, ttl: float) -> Record:
    row = await conn.fetchrow(INSERT_LINK, link_id, member_id, ttl)
    assert row is not None
    return row


async def use_link(conn: Connection, link_id: str) -> Record | None:
    return await conn.fetchrow(USE_LINK, link_id)


async def use_once(conn: Connection, once_id: str, member_id: str, expires_at: object) -> bool:
    return await conn.fetchval(USE_ONCE, once_id, member_id, expires_at) is not None


async def secretary_of(conn: Connection, member_id: str) -> list[str]:
    return [r["unit_id"] for r in await conn.fetch(SECRETARY_OF, member_id)]


async def insert_session(
    conn: Connection,
    session_id: str,
    *,
    member_id: str | None,
    key_id: str | None,
    role: str,
    unit_id: str | None,
    csrf: str,
    ttl: float,
) -> None:
    await conn.execute(INSERT_SESSION, session_hash(session_id), member_id, key_id, role, unit_id, csrf, ttl)


async def touch_session(
    conn: Connection, session_id: str, idle: float, limits: dict[str, tuple[float, float]]
) -> Record | None:
    """The live session (``allowed``: its bucket had a token; ``limited``: it has a bucket)."""
    roles = sorted(limits)
    return await conn.fetchrow(
        TOUCH_SESSION,
        session_hash(session_id),
        idle,
        roles,
        [limits[r][0] for r in roles],
        [limits[r][1] for r in roles],
    )


async def end_session(conn: Connection, session_id: str) -> None:
    await conn.execute(END_SESSION, session_hash(session_id))


async def switch_unit(conn: Connection, session_id: str, unit_id: str) -> bool:
    return await conn.execute(SWITCH_UNIT, session_hash(session_id), unit_id) == "UPDATE 1"


async def audience_count(conn: Connection, unit_ids: list[str], member_ids: list[str]) -> int:
    return int(await conn.fetchval(AUDIENCE_COUNT, unit_ids, member_ids))


async def timezone(conn: Connection, unit_id: str) -> str:
    return str(await conn.fetchval(TIMEZONE, unit_id))


async def members_within(conn: Connection, root: str | None, limit: int) -> list[Record]:
    if root is None:
        return list(await conn.fetch(MEMBERS_ALL, limit))
    return list(await conn.fetch(MEMBERS_WITHIN, [root], limit))


async def member_names(conn: Connection, member_ids: list[str]) -> dict[str, str]:
    return {r["id"]: r["name"] for r in await conn.fetch(MEMBER_NAMES, member_ids)}


async def purge(conn: Connection) -> None:
    await conn.execute(PURGE)
