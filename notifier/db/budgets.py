"""unit_budgets and budget_spend: the cost guard on paid channels (SMS, voice, DINGs by SMS/phone).

A budget's ``channel`` is the channel's id, or ``<channel>.<mode>`` for a paid mode of a free
channel (``dingtalk_ding.sms``, ``dingtalk_ding.phone``: ``channels.base.budget_key``).

A budget on a unit caps the sends a channel makes per local day for every notice scoped to that
unit or below it: the nearest unit up the tree with a budget for the channel governs, and its
subtree shares it. ``charge`` is called by the delivery gate inside its transaction: it locks
the day's spend row, takes what the batch may use and says how long until the budget resets.
A notice without a scope unit (sent by an admin's or a global service key) and a unit without a
budget anywhere above it are not limited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from notifier.db import duty
from notifier.db.pool import Connection, Record
from notifier.db.quiet import DEFAULT_TIMEZONE
from notifier.db.units import ancestors, subtree

# The governing budget of notice $1 on channel $3, its local day, and that day's spend row
# (created at 0 and locked until the caller's transaction ends).
OPEN = f"""
WITH RECURSIVE {ancestors("SELECT $1::text, scope_unit_id FROM notices WHERE id = $1::uuid", "start")},
gov AS (
    SELECT b.unit_id, b.daily_limit, coalesce(b.override_until > (SELECT notifier_now()), false) AS overridden,
           up.depth
    FROM up JOIN unit_budgets b ON b.unit_id = up.id AND b.channel = $2
    ORDER BY up.depth LIMIT 1
),
zone AS (
    SELECT coalesce(
        (SELECT u.timezone FROM up JOIN units u ON u.id = up.id JOIN gov ON up.depth >= gov.depth
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

# Once per notice, channel and day: the event the notice's page and timeline show.
EXHAUSTED_EVENT = """
INSERT INTO notice_events (notice_id, kind, detail)
SELECT $1::uuid, 'budget_exhausted', jsonb_build_object(
    'channel', $2::text, 'unit_id', $3::text, 'day', $4::date::text, 'daily_limit', $5::int, 'held', $6::int)
WHERE NOT EXISTS (
    SELECT 1 FROM notice_events WHERE notice_id = $1::uuid AND kind = 'budget_exhausted'
      AND detail->>'channel' = $2::text AND detail->>'day' = $4::date::text)
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
RELEASE_HELD = f"""
WITH RECURSIVE {subtree("ARRAY[$1::text]")}
UPDATE deliveries d SET next_attempt_at = (SELECT notifier_now()), updated_at = (SELECT notifier_now())
WHERE d.state = 'queued' AND d.wait_reason = 'budget_exhausted' AND d.channel = split_part($2, '.', 1)
  AND d.notice_id IN (SELECT id FROM notices WHERE scope_unit_id IN (SELECT id FROM sub))"""


@dataclass(frozen=True, slots=True)
class Charge:
    allowed: int  # how many of the batch may go now
    unit_id: str | None = None  # the governing unit (None: not limited)
    day: date | None = None
    daily_limit: int | None = None
    resets_in: float = 0.0  # seconds until the governing unit's next local midnight


async def charge(conn: Connection, notice_id: str, channel: str, n: int) -> Charge:
    """Take up to ``n`` sends from the budget governing ``notice_id`` on ``channel`` (call inside
    the transaction that hands the batch over: the spend row stays locked until it ends)."""
    row = await conn.fetchrow(OPEN, notice_id, channel)
    if row is None:
        return Charge(n)
    left = max(int(row["daily_limit"]) - int(row["used"]), 0)
    allowed = n if row["overridden"] else min(n, left)
    if allowed:
        await conn.execute(TAKE, row["unit_id"], channel, row["day"], allowed)
    return Charge(allowed, row["unit_id"], row["day"], int(row["daily_limit"]), float(row["resets_in"]))


async def exhausted(conn: Connection, notice_id: str, channel: str, c: Charge, held: int) -> list[str]:
    """Record that ``held`` deliveries of ``notice_id`` wait for the budget; the first time on
    the day, tell the governing unit's secretaries. Returns who was told."""
    first = await conn.fetchval(EXHAUSTED_EVENT, notice_id, channel, c.unit_id, c.day, c.daily_limit, held)
    if first is None or c.unit_id is None:
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
