"""unit_budgets and budget_spend: the cost guard on paid channels (SMS, voice, DINGs by SMS/phone).

A budget's ``channel`` is the channel's id, or ``<channel>.<mode>`` for a paid mode of a free
channel (``dingtalk_ding.sms``, ``dingtalk_ding.phone``: ``channels.base.budget_key``).

A budget on a unit caps the sends a channel makes per local day for every notice scoped to that
unit or below it: the nearest unit up the tree with a budget for the channel governs, and its
subtree shares it. A notice without a scope unit (sent by an admin's or a global service key) is
charged per recipient instead: each send to the budget governing the recipient's own units (at
fan-out, ``recipients.direct_units``; of several, the nearest budget) -- an admin's notice spends
the budgets of the units it reaches, as those units' own notices would. A send with no budget
anywhere above is not limited. ``charge`` is called by the delivery gate inside its transaction:
it locks the day's spend rows (in unit order), takes what the batch may use and says how long
until each budget resets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from notifier.db import duty
from notifier.db.pool import Connection, Record
from notifier.db.quiet import DEFAULT_TIMEZONE
from notifier.db.units import ancestors, subtree

# The governing budget unit of each send of a batch: $1 notice  $2 channel  $3 the sends' members.
# For a scoped notice, the nearest budget up from its scope unit (the same for every send); for
# one without a scope, the nearest up from the recipient's own units (ties: the lowest unit id).
GOVERNING = f"""
WITH RECURSIVE starts AS (
    SELECT m.member_id, s.unit_id
    FROM unnest($3::text[]) AS m (member_id)
    CROSS JOIN (SELECT scope_unit_id FROM notices WHERE id = $1::uuid) n
    LEFT JOIN recipients r ON n.scope_unit_id IS NULL AND r.notice_id = $1::uuid AND r.member_id = m.member_id
    CROSS JOIN LATERAL unnest(CASE WHEN n.scope_unit_id IS NOT NULL THEN ARRAY[n.scope_unit_id]
                                   ELSE coalesce(r.direct_units, '{{}}') END) AS s (unit_id)
),
{ancestors("SELECT member_id, unit_id FROM starts", "member")}
SELECT DISTINCT ON (up.member) up.member AS member_id, b.unit_id
FROM up JOIN unit_budgets b ON b.unit_id = up.id AND b.channel = $2
ORDER BY up.member, up.depth, b.unit_id"""

# Unit $1's budget on channel $2, its local day, and that day's spend row (created at 0 and
# locked until the caller's transaction ends).
OPEN = f"""
WITH RECURSIVE {ancestors("SELECT $1::text, $1::text", "start")},
gov AS (
    SELECT b.unit_id, b.daily_limit, coalesce(b.override_until > (SELECT notifier_now()), false) AS overridden
    FROM unit_budgets b WHERE b.unit_id = $1 AND b.channel = $2
),
zone AS (
    SELECT coalesce(
        (SELECT u.timezone FROM up JOIN units u ON u.id = up.id
         WHERE u.timezone IS NOT NULL ORDER BY up.depth LIMIT 1),
        '{DEFAULT_TIMEZONE}') AS tz
),
today AS (
    SELECT gov.*, ((SELECT notifier_now()) AT TIME ZONE zone.tz)::date AS day, zone.tz FROM gov, zone
)
INSERT INTO budget_spend AS s (unit_id, channel, day, used)
SELECT unit_id, $2, day, 0 FROM today
ON CONFLICT (unit_id, channel, day) DO UPDATE SET used = s.used
RETURNING s.unit_id, s.day, s.used,
    (SELECT daily_limit FROM today) AS daily_limit,
    (SELECT overridden FROM today) AS overridden,
    extract(epoch FROM ((s.day + 1)::timestamp AT TIME ZONE (SELECT tz FROM today))
                       - (SELECT notifier_now()))::float8 AS resets_in"""

TAKE = "UPDATE budget_spend SET used = used + $4 WHERE unit_id = $1 AND channel = $2 AND day = $3"

# Once per notice, channel, day and governing unit (an unscoped notice meets its recipients' units'
# budgets): the event the notice's page and timeline show.
EXHAUSTED_EVENT = """
INSERT INTO notice_events (notice_id, kind, detail)
SELECT $1::uuid, 'budget_exhausted', jsonb_build_object(
    'channel', $2::text, 'unit_id', $3::text, 'day', $4::date::text, 'daily_limit', $5::int, 'held', $6::int)
WHERE NOT EXISTS (
    SELECT 1 FROM notice_events WHERE notice_id = $1::uuid AND kind = 'budget_exhausted'
      AND detail->>'channel' = $2::text AND detail->>'day' = $4::date::text AND detail->>'unit_id' = $3::text)
RETURNING id"""

# The governing unit's secretaries are told, in-app, the first time a notice meets the spent
# budget on a day (the reconciler fans the notice out: it commits with the gate's transaction).
TELL = """
INSERT INTO notices (kind, title, body, audience, channels, scope_unit_id)
VALUES ('notice', $1, $2, jsonb_build_object('members', $3::text[], 'units', '[]'::jsonb), ARRAY['inapp'], $4)
RETURNING id"""

UPSERT = """
INSERT INTO unit_budgets (unit_id, channel, daily_limit, override_until) VALUES ($1, $2, $3, $4)
ON CONFLICT (unit_id, channel) DO UPDATE
SET daily_limit = excluded.daily_limit, override_until = excluded.override_until,
    updated_at = (SELECT notifier_now())
RETURNING unit_id, channel, daily_limit, override_until, updated_at"""

DELETE = "DELETE FROM unit_budgets WHERE unit_id = $1 AND channel = $2 RETURNING unit_id"

# The unit's own budgets with today's spend (the spend row of the unit's local day, if any).
LIST = f"""
WITH RECURSIVE {ancestors("SELECT $1::text, $1::text", "start")},
zone AS (
    SELECT coalesce((SELECT u.timezone FROM up JOIN units u ON u.id = up.id
                     WHERE u.timezone IS NOT NULL ORDER BY up.depth LIMIT 1), '{DEFAULT_TIMEZONE}') AS tz
)
SELECT b.channel, b.daily_limit, b.override_until, b.updated_at, coalesce(s.used, 0) AS used_today
FROM unit_budgets b CROSS JOIN zone
LEFT JOIN budget_spend s ON s.unit_id = b.unit_id AND s.channel = b.channel
    AND s.day = ((SELECT notifier_now()) AT TIME ZONE zone.tz)::date
WHERE b.unit_id = $1
ORDER BY b.channel"""

# Held rows that may go now (a budget raised or overridden): due at once, the gate decides again.
# The unit's budget held the rows of its subtree's notices, and of unscoped notices those to the
# members of its subtree.
RELEASE_HELD = f"""
WITH RECURSIVE {subtree("ARRAY[$1::text]")}
UPDATE deliveries d SET next_attempt_at = (SELECT notifier_now()), updated_at = (SELECT notifier_now())
WHERE d.state = 'queued' AND d.wait_reason = 'budget_exhausted' AND d.channel = split_part($2, '.', 1)
  AND (d.notice_id IN (SELECT id FROM notices WHERE scope_unit_id IN (SELECT id FROM sub))
       OR (d.notice_id IN (SELECT id FROM notices WHERE scope_unit_id IS NULL)
           AND d.member_id IN (SELECT mu.member_id FROM member_units mu JOIN sub ON sub.id = mu.unit_id)))"""


@dataclass(frozen=True, slots=True)
class Charge:
    """What one budget lets go of a batch."""

    unit_id: str  # the governing unit
    day: date
    daily_limit: int
    resets_in: float  # seconds until the governing unit's next local midnight
    held: tuple[int, ...]  # the sends (indexes into the batch) beyond it: they wait


async def charge(conn: Connection, notice_id: str, channel: str, members: list[str]) -> list[Charge]:
    """Take the sends of a batch (to ``members``, in the batch's order) of ``notice_id`` on
    ``channel`` from the budgets governing them, as far as each goes (call inside the transaction
    that hands the batch over: the spend rows stay locked until it ends). One ``Charge`` per
    governing budget; a send no budget governs is not limited and appears in none."""
    governing = {
        r["member_id"]: r["unit_id"] for r in await conn.fetch(GOVERNING, notice_id, channel, members)
    }
    sends: dict[str, list[int]] = {}
    for i, member in enumerate(members):
        if (unit := governing.get(member)) is not None:
            sends.setdefault(unit, []).append(i)
    charges = []
    for unit in sorted(sends):  # one lock order for every transaction
        row = await conn.fetchrow(OPEN, unit, channel)
        assert row is not None
        batch = sends[unit]
        left = max(int(row["daily_limit"]) - int(row["used"]), 0)
        allowed = len(batch) if row["overridden"] else min(len(batch), left)
        if allowed:
            await conn.execute(TAKE, unit, channel, row["day"], allowed)
        charges.append(
            Charge(unit, row["day"], int(row["daily_limit"]), float(row["resets_in"]), tuple(batch[allowed:]))
        )
    return charges


async def exhausted(conn: Connection, notice_id: str, channel: str, c: Charge, held: int) -> list[str]:
    """Record that ``held`` deliveries of ``notice_id`` wait for the budget; the first time on
    the day, tell the governing unit's secretaries. Returns who was told."""
    first = await conn.fetchval(EXHAUSTED_EVENT, notice_id, channel, c.unit_id, c.day, c.daily_limit, held)
    if first is None:
        return []
    told = (await duty.secretaries_for_units(conn, [c.unit_id])).get(c.unit_id, [])
    if told:
        title = f"{channel.upper()} budget of unit {c.unit_id} spent for {c.day}"
        body = (
            f"{held} {channel} messages of notice {notice_id} (and any more today) wait for the next "
            f"day: the budget is {c.daily_limit} a day. An admin can raise or override it "
            f"(PUT /v1/units/{c.unit_id}/budgets/{channel})."
        )
        await conn.fetchval(TELL, title, body, told, c.unit_id)
    return told


async def put(
    conn: Connection, unit_id: str, channel: str, daily_limit: int, override_until: datetime | None
) -> Record:
    row = await conn.fetchrow(UPSERT, unit_id, channel, daily_limit, override_until)
    assert row is not None
    await conn.execute(RELEASE_HELD, unit_id, channel)
    return row


async def delete(conn: Connection, unit_id: str, channel: str) -> bool:
    gone = await conn.fetchval(DELETE, unit_id, channel)
    if gone is not None:
        await conn.execute(RELEASE_HELD, unit_id, channel)
    return gone is not None


async def list_for(conn: Connection, unit_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(LIST, unit_id)]
