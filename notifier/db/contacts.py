"""contacts: where a member is reached on a channel."""

from __future__ import annotations

from typing import Any

from notifier.channels.urls import REDACTED, redact_url
from notifier.db.pool import Connection, Record

ADD = """
INSERT INTO contacts (member_id, channel, target) VALUES ($1, $2, $3)
ON CONFLICT (member_id, channel, target_hash) DO UPDATE
    SET disabled_at = NULL, disabled_reason = NULL, created_at = (SELECT notifier_now())
RETURNING id, member_id, channel, target, created_at, disabled_at, disabled_reason, (xmax = 0) AS created"""
LIST = """
SELECT id, member_id, channel, target, created_at, disabled_at, disabled_reason
FROM contacts WHERE member_id = $1 ORDER BY created_at, id"""
DELETE = "DELETE FROM contacts WHERE member_id = $1 AND id = $2 RETURNING id"


def newest_working(member: str, channel: str, when: str = "true") -> str:
    """The one rule for "which contact reaches this member on this channel": their newest
    contact there that is not disabled. A subquery returning ``id`` (one row or none) for a
    ``LEFT JOIN LATERAL (...) k ON true``; the arguments are SQL expressions from the outer
    query, and ``when`` (also SQL) skips the lookup for channels that need no contact.
    Used by the fan-out, escalation reminders and channel fallback. A channel may reach members
    through another channel's contacts (``contact_channel``, schemas/0017: a DingTalk DING uses
    the member's ``dingtalk`` userid)."""
    return f"""
        SELECT id FROM contacts
        WHERE {when} AND contacts.member_id = {member} AND contacts.channel = contact_channel({channel})
          AND contacts.disabled_at IS NULL
        ORDER BY created_at DESC LIMIT 1"""


DISABLE_MANY = """
UPDATE contacts SET disabled_at = (SELECT notifier_now()), disabled_reason = r.reason
FROM unnest($1::uuid[], $2::text[]) AS r(id, reason)
WHERE contacts.id = r.id AND contacts.disabled_at IS NULL"""


async def contact_channel(conn: Connection, channel: str) -> str:
    """Whose contacts a channel uses (schemas/0017 ``contact_channel``: a DING uses ``dingtalk``'s)."""
    return str(await conn.fetchval("SELECT contact_channel($1)", channel))


async def add(conn: Connection, member_id: str, channel: str, target: Any) -> Record:
    row = await conn.fetchrow(ADD, member_id, channel, target)
    assert row is not None
    return row


async def list_for(conn: Connection, member_id: str) -> list[Record]:
    return list(await conn.fetch(LIST, member_id))


async def delete(conn: Connection, member_id: str, contact_id: str) -> bool:
    return await conn.fetchval(DELETE, member_id, contact_id) is not None


async def disable_many(conn: Connection, ids: list[str], reasons: list[str]) -> None:
    if ids:
        await conn.execute(DISABLE_MANY, ids, reasons)


SECRET_FIELDS = frozenset({"secret", "auth", "p256dh"})  # signing keys, web-push encryption keys
URL_FIELDS = frozenset({"url", "endpoint"})  # webhook target, web-push endpoint


def redact(target: Any, owner: bool = True) -> Any:
    """Targets may embed secrets: signing and encryption keys are never echoed back, at any depth.
    A caller who may read the member but not change it (another branch sharing the member) sees
    only the origin of a URL: its credentials, path and query are how URLs carry secrets."""
    if isinstance(target, dict):
        out: dict[str, Any] = {}
        for key, value in target.items():
            if key in SECRET_FIELDS:
                out[key] = REDACTED
            elif key in URL_FIELDS and not owner:
                out[key] = redact_url(value)
            else:
                out[key] = redact(value, owner)
        return out
    if isinstance(target, list):
        return [redact(v, owner) for v in target]
    return target


def as_dict(row: Record, owner: bool = True) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "member_id": row["member_id"],
        "channel": row["channel"],
        "target": redact(row["target"], owner),
        "created_at": row["created_at"].isoformat(),
        "disabled_at": row["disabled_at"].isoformat() if row["disabled_at"] else None,
        "disabled_reason": row["disabled_reason"],
    }
