"""Which notices a unit-bound caller sees, and how much of each: the one home of that rule.

A caller bound to unit R (a secretary or service key) sees a notice when it was created inside
R's subtree (it *owns* it: the creating unit is R or below R, walked live) or when the notice
reached R's subtree (a recipient counted in a unit of it at fan-out, ``notice_reach``; the
creating unit and its ancestors are listed there from creation on, so a unit's listing finds its
own notices before they fan out). Of a notice it does not own it sees the content (title, body,
kind, times, state -- it reached its members) but only R's slice: the counters of R's subtree, the
recipients in it, and the events naming them. An owner sees its notice whole, its counts still
those of R's subtree. Admins (``root`` None) see every notice whole. An escalation summary is
about someone else's notice: the fan-out lists it under no unit it reaches (db/fanout.py), so
only its creating unit and those above it see it (admins always).

Every notice endpoint goes through ``visible_notice`` (the API's ``load_visible_notice``).
"""

from __future__ import annotations

from dataclasses import dataclass

from notifier.db.notices import COUNTS, NOTICE_COLUMNS, UNIT_COUNTS, counts_of
from notifier.db.pool import Connection, Record
from notifier.db.units import ancestors

# $1 notice  $2 the caller's unit (NULL: admin)
VISIBLE = (
    "WITH RECURSIVE n AS (SELECT "
    + NOTICE_COLUMNS
    + " FROM notices WHERE id = $1),\n"
    + ancestors("SELECT id, scope_unit_id FROM n", "notice")
    + """,
own AS (SELECT $2::text IS NULL OR EXISTS (SELECT 1 FROM up WHERE up.id = $2) AS owner)
SELECT n.*, own.owner FROM n CROSS JOIN own
WHERE own.owner OR EXISTS (SELECT 1 FROM notice_reach r WHERE r.notice_id = n.id AND r.unit_id = $2)"""
)
# An admin's ($1 notice): every notice, whole. No unit walk to plan (the API plans every
# execution: db/pool.py API_SESSION; GET /v1/notices/{id} is a status poll).
VISIBLE_TO_ADMIN = "SELECT " + NOTICE_COLUMNS + ", true AS owner FROM notices WHERE id = $1"

# The same with the counts the caller sees (db/notices.py COUNTS: an admin's, of the whole
# notice; UNIT_COUNTS: of the caller's subtree, $2) in the one round trip: the status read.
_SELECT = "SELECT n.*, own.owner FROM n CROSS JOIN own"
assert _SELECT in VISIBLE
VISIBLE_WITH_COUNTS = VISIBLE.replace(
    _SELECT,
    _SELECT + " CROSS JOIN LATERAL (" + UNIT_COUNTS.replace("notice_id = $1", "notice_id = n.id") + ") c",
).replace("SELECT n.*, own.owner FROM", "SELECT n.*, own.owner, c.* FROM", 1)
VISIBLE_TO_ADMIN_WITH_COUNTS = (
    "SELECT n.*, true AS owner, c.* FROM (SELECT " + NOTICE_COLUMNS + " FROM notices WHERE id = $1) n"
    " CROSS JOIN LATERAL (" + COUNTS.replace("notice_id = $1", "notice_id = n.id") + ") c"
)


# The session settings of the API's connections for status polls (AppDeps.status_pool): the two
# statements above planned once per session, where the API's other statements are planned on
# every execution (db/pool.py API_SESSION). Planning was most of a poll's database cost (~0.25 of
# ~0.35 ms, the admin's, on a quiet server), paid on every poll of a notice while it fans out and
# its reads pour in (benchmarks/scale.py target 6). Every row they read is found by key (the
# notice, its reach, its counters' shards by primary key; the tree walk's units by id): with
# sequential scans ruled out, a plan made while the tables were small still reaches rows by key
# once they are large (as the receipts' functions of schemas/0035 do).
STATUS_SESSION = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}


@dataclass(frozen=True, slots=True)
class NoticeView:
    """A notice as one caller may see it."""

    row: Record
    root: str | None  # the caller's unit: counts are of its subtree (None: admin, the whole notice)
    owner: bool  # created inside the caller's subtree (always, for an admin)

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def slice_root(self) -> str | None:
        """The unit whose subtree bounds the recipients, timelines and events shown (None: all)."""
        return None if self.owner else self.root


async def visible_notice(conn: Connection, notice_id: str, root: str | None) -> NoticeView | None:
    """The notice ``notice_id`` (a UUID) as a caller bound to unit ``root`` sees it, or None when
    that caller may not see it at all. ``root`` None means an admin (no bound): callers without
    any reach over notices (member keys) must not call this."""
    if root is None:
        row = await conn.fetchrow(VISIBLE_TO_ADMIN, notice_id)
    else:
        row = await conn.fetchrow(VISIBLE, notice_id, root)
    if row is None:
        return None
    return NoticeView(row=row, root=root, owner=bool(row["owner"]))


async def visible_notice_with_counts(
    conn: Connection, notice_id: str, root: str | None
) -> tuple[NoticeView, dict[str, int]] | None:
    """As ``visible_notice``, with the counts that caller sees (of its subtree; an admin's: all)."""
    if root is None:
        row = await conn.fetchrow(VISIBLE_TO_ADMIN_WITH_COUNTS, notice_id)
    else:
        row = await conn.fetchrow(VISIBLE_WITH_COUNTS, notice_id, root)
    if row is None:
        return None
    return NoticeView(row=row, root=root, owner=bool(row["owner"])), counts_of(row)
