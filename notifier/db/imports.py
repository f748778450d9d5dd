"""Applying an organisation import (``notifier.domain.org_import.OrgSnapshot``): units, members,
member_units and ``dingtalk`` contacts, set-based, one statement per table, in one transaction
under an advisory lock (two imports never interleave).

Idempotent: every upsert changes a row only when a value differs, so a second run of the same
snapshot reports (and changes) nothing. Never deletes a member: a person gone from the scoped
units loses those memberships, and -- when DingTalk itself no longer lists them -- their
``dingtalk`` contact is disabled with the reason (their history stays; a return re-enables it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from notifier.db.pool import Connection, Pool
from notifier.domain.org_import import OrgSnapshot

LOCK = "SELECT pg_advisory_xact_lock(hashtext('notifier:org-import'))"

# The members who already hold these DingTalk userids (a returning member's disabled contact
# counts: they get their own member back).
KNOWN_USERIDS = """
SELECT DISTINCT ON (target) target #>> '{}' AS userid, member_id
FROM contacts WHERE channel = 'dingtalk' AND target = ANY(SELECT to_jsonb(u) FROM unnest($1::text[]) u)
ORDER BY target, disabled_at NULLS FIRST, created_at DESC"""

ROOT = """
INSERT INTO units (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING id"""

# Units: created, or renamed / moved when DingTalk (or the table) says so.
UNITS = """
WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS i(id, name, parent_id)),
up AS (
    INSERT INTO units (id, name, parent_id) SELECT id, name, parent_id FROM i
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, parent_id = excluded.parent_id,
        updated_at = (SELECT notifier_now())
    WHERE (units.name, units.parent_id) IS DISTINCT FROM (excluded.name, excluded.parent_id)
    RETURNING (xmax = 0) AS created
)
SELECT count(*) FILTER (WHERE created) AS created, count(*) FILTER (WHERE NOT created) AS updated FROM up"""

# Members: created, or renamed / given the phone the source has (an empty phone keeps ours).
MEMBERS = """
WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS i(id, name, phone)),
up AS (
    INSERT INTO members (id, name, phone) SELECT id, name, phone FROM i
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, phone = coalesce(excluded.phone, members.phone),
        updated_at = (SELECT notifier_now())
    WHERE members.name IS DISTINCT FROM excluded.name
       OR (excluded.phone IS NOT NULL AND members.phone IS DISTINCT FROM excluded.phone)
    RETURNING (xmax = 0) AS created
)
SELECT count(*) FILTER (WHERE created) AS created, count(*) FILTER (WHERE NOT created) AS updated FROM up"""

# Memberships inside the scope become exactly the snapshot's; those outside it are left alone.
# Returns how many were added and removed, and who left the scope altogether.
#   $1 member ids  $2 unit ids (the memberships wanted)  $3 the scope's unit ids
MEMBERSHIPS = """
WITH want AS (SELECT DISTINCT * FROM unnest($1::text[], $2::text[]) AS w(member_id, unit_id)),
gone AS (
    DELETE FROM member_units mu
    WHERE mu.unit_id = ANY($3::text[])
      AND NOT EXISTS (SELECT 1 FROM want w WHERE w.member_id = mu.member_id AND w.unit_id = mu.unit_id)
    RETURNING mu.member_id
),
ins AS (
    INSERT INTO member_units (member_id, unit_id) SELECT member_id, unit_id FROM want
    ON CONFLICT DO NOTHING RETURNING member_id
)
SELECT (SELECT count(*) FROM ins) AS joined, (SELECT count(*) FROM gone) AS left_,
       coalesce((SELECT array_agg(DISTINCT member_id ORDER BY member_id) FROM gone
                 WHERE member_id <> ALL($1::text[])), '{}') AS departed"""

# Each person's DingTalk userid as their ``dingtalk`` contact: added, or re-enabled when DingTalk
# lists them again.
CONTACTS = """
WITH i AS (SELECT * FROM unnest($1::text[], $2::text[]) AS i(member_id, userid)),
up AS (
    INSERT INTO contacts (member_id, channel, target) SELECT member_id, 'dingtalk', to_jsonb(userid) FROM i
    ON CONFLICT (member_id, channel, target_hash) DO UPDATE
        SET disabled_at = NULL, disabled_reason = NULL, created_at = (SELECT notifier_now())
    WHERE contacts.disabled_at IS NOT NULL
    RETURNING (xmax = 0) AS created
)
SELECT count(*) FILTER (WHERE created) AS added, count(*) FILTER (WHERE NOT created) AS enabled FROM up"""

# People DingTalk no longer lists: their DingTalk contacts are disabled, with the reason.
DEPARTED_CONTACTS = """
UPDATE contacts SET disabled_at = (SELECT notifier_now()), disabled_reason = $2
WHERE member_id = ANY($1::text[]) AND channel = 'dingtalk' AND disabled_at IS NULL"""

DEPARTED_REASON = "no longer in the organisation on DingTalk (import)"


def _quiet(_line: str) -> None:
    pass


async def apply(
    conn: Connection, snap: OrgSnapshot, progress: Callable[[str], None] = _quiet
) -> dict[str, int]:
    """Apply the snapshot inside the caller's transaction; returns what changed. ``progress`` is
    told the rows applied after each statement (counts only: no names, numbers or ids)."""
    await conn.execute(LOCK)
    counts: dict[str, int] = {}
    if snap.root is not None:
        counts["units_created"] = 1 if await conn.fetchval(ROOT, snap.root, "DingTalk") else 0
    units = [(u, n, p) for u, (n, p) in snap.units.items() if u != snap.root]
    row = await conn.fetchrow(UNITS, [u[0] for u in units], [u[1] for u in units], [u[2] for u in units])
    assert row is not None
    counts["units_created"] = counts.get("units_created", 0) + row["created"]
    counts["units_updated"] = row["updated"]
    progress(f"units applied: {len(snap.units)}")
    people = list(snap.people.values())
    row = await conn.fetchrow(
        MEMBERS, [p.member_id for p in people], [p.name for p in people], [p.phone for p in people]
    )
    assert row is not None
    counts["members_created"], counts["members_updated"] = row["created"], row["updated"]
    progress(f"members applied: {len(people)}")
    pairs = [(p.member_id, u) for p in people for u in p.units]
    row = await conn.fetchrow(MEMBERSHIPS, [m for m, _ in pairs], [u for _, u in pairs], list(snap.units))
    assert row is not None
    counts["memberships_added"], counts["memberships_removed"] = row["joined"], row["left_"]
    departed: list[str] = list(row["departed"])
    counts["members_detached"] = len(departed)
    progress(f"memberships applied: {len(pairs)}")
    with_userid = [p for p in people if p.userid]
    row = await conn.fetchrow(CONTACTS, [p.member_id for p in with_userid], [p.userid for p in with_userid])
    assert row is not None
    counts["contacts_added"], counts["contacts_enabled"] = row["added"], row["enabled"]
    counts["contacts_disabled"] = 0
    if snap.source == "dingtalk" and departed:
        gone = [m for m in departed if m not in snap.people]
        status = await conn.execute(DEPARTED_CONTACTS, gone, DEPARTED_REASON)
        counts["contacts_disabled"] = int(status.split()[-1])
    progress(f"contacts applied: {len(with_userid)}")
    return counts


async def known_userids(conn: Connection, userids: list[str]) -> dict[str, str]:
    return {r["userid"]: r["member_id"] for r in await conn.fetch(KNOWN_USERIDS, userids)}


async def run(
    pool: Pool,
    userids: list[str],
    snapshot_for: Callable[[dict[str, str]], OrgSnapshot],
    dry_run: bool,
    on_applied: Callable[[Connection, dict[str, int]], Awaitable[None]] | None = None,
    progress: Callable[[str], None] = _quiet,
) -> dict[str, int]:
    """Build the snapshot (knowing which members hold these userids already) and apply it in one
    transaction (``on_applied`` runs in it: the audit entry); a dry run rolls it back and reports
    what it would have changed."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            snap = snapshot_for(await known_userids(conn, userids))
            counts = await apply(conn, snap, progress)
            if on_applied is not None and not dry_run:
                await on_applied(conn, counts)
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
    return counts
