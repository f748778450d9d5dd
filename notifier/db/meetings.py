"""meeting_types, meetings and meeting_checkins: the 三会一课 meeting of a notice of kind
``meeting``, its venue and check-in fence, and every check-in attempt.

A meeting row shares its notice's id (``notice_id``) and is written in the transaction that
inserts the notice. Who sees a meeting is who sees its notice (db/visibility.py): created inside
the caller's subtree, or reached it. Check-ins are judged in Python (domain/checkin.py) against
the engine clock read in the same transaction (``now``); at most one accepted check-in per member
and meeting (a partial unique index), so a replayed accepted check-in answers the first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifier.db.pool import Connection, Record
from notifier.db.units import subtree

# --- meeting types ------------------------------------------------------------------------------

TYPES = "SELECT code, name, name_en, position FROM meeting_types ORDER BY position, code"
TYPE_EXISTS = "SELECT EXISTS (SELECT 1 FROM meeting_types WHERE code = $1)"
UPSERT_TYPE = """
INSERT INTO meeting_types (code, name, name_en, position) VALUES ($1, $2, $3, $4)
ON CONFLICT (code) DO UPDATE SET name = excluded.name, name_en = excluded.name_en, position = excluded.position
RETURNING code, name, name_en, position, (xmax = 0) AS created"""


async def types(conn: Connection) -> list[Record]:
    return list(await conn.fetch(TYPES))


async def type_exists(conn: Connection, code: str) -> bool:
    return bool(await conn.fetchval(TYPE_EXISTS, code))


async def upsert_type(conn: Connection, code: str, name: str, name_en: str | None, position: int) -> Record:
    row = await conn.fetchrow(UPSERT_TYPE, code, name, name_en, position)
    assert row is not None
    return row


# --- meetings -----------------------------------------------------------------------------------

MEETING_COLUMNS = """m.notice_id, m.type, m.unit_id, m.scope_unit_id, m.starts_at, m.ends_at, m.venue_name,
    m.venue_lat, m.venue_lng, m.venue_datum, m.radius_m, m.checkin_opens_at, m.checkin_closes_at,
    m.max_accuracy_m, m.bssids, m.photo_required, m.created_at"""

INSERT = f"""
INSERT INTO meetings AS m (notice_id, type, unit_id, scope_unit_id, starts_at, ends_at, venue_name, venue_lat,
                           venue_lng, venue_datum, radius_m, checkin_opens_at, checkin_closes_at,
                           max_accuracy_m, bssids, photo_required)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
RETURNING {MEETING_COLUMNS}"""

GET = f"SELECT {MEETING_COLUMNS} FROM meetings m WHERE m.notice_id = $1"

# A meeting, its notice's state and the engine clock, for judging a check-in (the meeting row is
# shared-locked so the judgement and the insert see the same settings).
FOR_CHECKIN = f"""
SELECT {MEETING_COLUMNS}, (SELECT notifier_now()) AS now, n.state, n.recalled_at
FROM meetings m JOIN notices n ON n.id = m.notice_id WHERE m.notice_id = $1 FOR SHARE OF m"""

# The meetings a caller sees, by start time then id (a keyset page): every meeting for an admin
# ($1 NULL); else the meetings created inside $1's subtree or whose notice reached $1 (the
# visibility rule of db/visibility.py, in its set-based form).
#   $1 caller's unit  $2 from  $3 to  $4 holding unit  $5 type  $6 after (starts_at)  $7 after id  $8 limit
LIST = f"""
WITH RECURSIVE {subtree("ARRAY[$1::text]")}
SELECT {MEETING_COLUMNS}, n.title, n.state
FROM meetings m JOIN notices n ON n.id = m.notice_id
WHERE ($1::text IS NULL OR m.scope_unit_id IN (SELECT id FROM sub)
       OR EXISTS (SELECT 1 FROM notice_reach r WHERE r.notice_id = m.notice_id AND r.unit_id = $1))
  AND ($2::timestamptz IS NULL OR m.starts_at >= $2) AND ($3::timestamptz IS NULL OR m.starts_at < $3)
  AND ($4::text IS NULL OR m.unit_id = $4) AND ($5::text IS NULL OR m.type = $5)
  AND ($6::timestamptz IS NULL OR (m.starts_at, m.notice_id) > ($6, $7::uuid))
ORDER BY m.starts_at, m.notice_id
LIMIT $8"""


async def insert(conn: Connection, notice_id: str, fields: dict[str, Any]) -> Record:
    """Store the meeting of notice ``notice_id`` (``fields``: the columns after notice_id, by name)."""
    row = await conn.fetchrow(
        INSERT,
        notice_id,
        fields["type"],
        fields["unit_id"],
        fields["scope_unit_id"],
        fields["starts_at"],
        fields["ends_at"],
        fields["venue_name"],
        fields["venue_lat"],
        fields["venue_lng"],
        fields["venue_datum"],
        fields["radius_m"],
        fields["checkin_opens_at"],
        fields["checkin_closes_at"],
        fields["max_accuracy_m"],
        fields["bssids"],
        fields["photo_required"],
    )
    assert row is not None
    return row


async def get(conn: Connection, notice_id: str) -> Record | None:
    return await conn.fetchrow(GET, notice_id)


async def for_checkin(conn: Connection, notice_id: str) -> Record | None:
    return await conn.fetchrow(FOR_CHECKIN, notice_id)


async def list_visible(
    conn: Connection,
    root: str | None,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    unit_id: str | None = None,
    type_: str | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 100,
) -> list[Record]:
    after_at, after_id = after if after is not None else (None, None)
    return list(await conn.fetch(LIST, root, start, end, unit_id, type_, after_at, after_id, limit))


# --- check-ins ----------------------------------------------------------------------------------

CHECKIN_COLUMNS = """c.id, c.notice_id, c.member_id, c.at, c.lat, c.lng, c.datum, c.accuracy_m, c.distance_m,
    c.bssid, c.bssid_matched, c.mock, c.client_time, c.verdict, c.flagged, c.photo_id, c.source"""

# An attempt, stored whatever its verdict; an accepted one only if the member has none yet (the
# partial unique index decides: nothing comes back when another accepted check-in exists).
INSERT_CHECKIN = f"""
INSERT INTO meeting_checkins AS c (notice_id, member_id, at, lat, lng, datum, accuracy_m, distance_m, bssid,
                                   bssid_matched, mock, client_time, verdict, flagged, photo_id, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (notice_id, member_id) WHERE verdict = 'ok' DO NOTHING
RETURNING {CHECKIN_COLUMNS}"""

# One member's attempts at one meeting are taken one at a time (to the end of the transaction), so
# the retry limits count exactly and a second accepted check-in finds the first.
LOCK_MEMBER = "SELECT pg_advisory_xact_lock(hashtextextended($1::text || ':' || $2, 727025))"

ACCEPTED = f"SELECT {CHECKIN_COLUMNS} FROM meeting_checkins c WHERE c.notice_id = $1 AND c.member_id = $2 AND c.verdict = 'ok'"

# The member's attempts at this meeting: in all, and since $3 (the retry limits).
ATTEMPTS = """
SELECT count(*) AS total, count(*) FILTER (WHERE at > $3) AS recent, max(at) FILTER (WHERE at > $3) AS last_at,
       min(at) FILTER (WHERE at > $3) AS first_recent_at
FROM meeting_checkins WHERE notice_id = $1 AND member_id = $2"""

# Check-ins of a meeting, oldest first (a keyset page by id), of the members in $2's subtree
# (NULL: everyone's), optionally only accepted or only rejected ones, with the member's name.
#   $1 meeting  $2 slice root  $3 after id  $4 limit  $5 'accepted' | 'rejected' | NULL  $6 member
LIST_CHECKINS = f"""
WITH RECURSIVE {subtree("ARRAY[$2::text]")}
SELECT {CHECKIN_COLUMNS}, mb.name AS member_name
FROM meeting_checkins c JOIN members mb ON mb.id = c.member_id
WHERE c.notice_id = $1 AND c.id > $3
  AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id
                                   WHERE mu.member_id = c.member_id))
  AND ($5::text IS NULL OR (c.verdict = 'ok') = ($5 = 'accepted'))
  AND ($6::text IS NULL OR c.member_id = $6)
ORDER BY c.id
LIMIT $4"""


async def insert_checkin(conn: Connection, values: dict[str, Any]) -> Record | None:
    """Store an attempt; None when it was accepted and the member already has an accepted one."""
    return await conn.fetchrow(
        INSERT_CHECKIN,
        values["notice_id"],
        values["member_id"],
        values["at"],
        values["lat"],
        values["lng"],
        values["datum"],
        values["accuracy_m"],
        values["distance_m"],
        values["bssid"],
        values["bssid_matched"],
        values["mock"],
        values["client_time"],
        values["verdict"],
        values["flagged"],
        values.get("photo_id"),
        values.get("source", "api"),
    )


async def lock_member(conn: Connection, notice_id: str, member_id: str) -> None:
    await conn.execute(LOCK_MEMBER, notice_id, member_id)


async def accepted(conn: Connection, notice_id: str, member_id: str) -> Record | None:
    return await conn.fetchrow(ACCEPTED, notice_id, member_id)


async def attempts(conn: Connection, notice_id: str, member_id: str, since: datetime) -> Record:
    row = await conn.fetchrow(ATTEMPTS, notice_id, member_id, since)
    assert row is not None
    return row


async def list_checkins(
    conn: Connection,
    notice_id: str,
    slice_root: str | None,
    *,
    after: int = 0,
    limit: int = 100,
    outcome: str | None = None,
    member_id: str | None = None,
) -> list[Record]:
    return list(await conn.fetch(LIST_CHECKINS, notice_id, slice_root, after, limit, outcome, member_id))


# How many members checked in (accepted; of those, flagged) and how many attempts were refused,
# counting only members in $2's subtree (NULL: everyone).
CHECKIN_COUNTS = f"""
WITH RECURSIVE {subtree("ARRAY[$2::text]")}
SELECT count(*) FILTER (WHERE c.verdict = 'ok') AS accepted,
       count(*) FILTER (WHERE c.verdict = 'ok' AND c.flagged) AS flagged,
       count(*) FILTER (WHERE c.verdict <> 'ok') AS rejected
FROM meeting_checkins c
WHERE c.notice_id = $1
  AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id
                                   WHERE mu.member_id = c.member_id))"""


async def checkin_counts(conn: Connection, notice_id: str, slice_root: str | None) -> Record:
    row = await conn.fetchrow(CHECKIN_COUNTS, notice_id, slice_root)
    assert row is not None
    return row


# --- check-in photos (stored in meeting_photos as kind 'checkin': db/records.py) -------------------

# One check-in of a meeting, if it is of a member in $3's subtree (NULL: anyone's) and, when $4 is
# given, that member's own.
CHECKIN = f"""
WITH RECURSIVE {subtree("ARRAY[$3::text]")}
SELECT {CHECKIN_COLUMNS}, mb.name AS member_name
FROM meeting_checkins c JOIN members mb ON mb.id = c.member_id
WHERE c.notice_id = $1 AND c.id = $2
  AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id
                                   WHERE mu.member_id = c.member_id))
  AND ($4::text IS NULL OR c.member_id = $4)"""

# Link a photo to an accepted check-in that has none yet; nothing comes back otherwise.
LINK_PHOTO = f"""
UPDATE meeting_checkins c SET photo_id = $3
WHERE c.notice_id = $1 AND c.id = $2 AND c.verdict = 'ok' AND c.photo_id IS NULL
RETURNING {CHECKIN_COLUMNS}"""


async def checkin(
    conn: Connection, notice_id: str, checkin_id: int, slice_root: str | None, member_id: str | None
) -> Record | None:
    return await conn.fetchrow(CHECKIN, notice_id, checkin_id, slice_root, member_id)


async def link_photo(conn: Connection, notice_id: str, checkin_id: int, photo_id: str) -> Record | None:
    return await conn.fetchrow(LINK_PHOTO, notice_id, checkin_id, photo_id)
