"""audit_log: an append-only record of who changed what, when, from where (schemas/0013).

Entries are written by ``notifier.api.audit.record`` inside the transaction of the change, and
read by unit: an entry is about the units in ``unit_ids``, and a unit-bound key reads the entries
about any unit of its subtree.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from notifier.db.pool import Connection, Record
from notifier.db.units import subtree

COLUMNS = (
    "id, at, actor_key_id, actor_role, actor_unit_id, actor_member_id, action, target_type, target_id, "
    "unit_ids, host(address) AS address, details"
)
INSERT = """
INSERT INTO audit_log (actor_key_id, actor_role, actor_unit_id, actor_member_id, action, target_type,
                       target_id, unit_ids, address, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::inet, $10::jsonb)"""
# $1: the units whose subtrees bound the entries (NULL: all); $2 an actor (a key id, 'admin' for
# the bootstrap token, 'scheduler' for what the engine did by itself: lesson runs); $3 an action;
# [$4, $5) a time range; $6 the last id of the previous page.
LIST = f"""
WITH RECURSIVE {subtree("$1")}
SELECT {COLUMNS} FROM audit_log a
WHERE ($1::text[] IS NULL OR a.unit_ids && ARRAY(SELECT id FROM sub))
  AND ($2::text IS NULL OR CASE WHEN $2 IN ('admin', 'scheduler') THEN a.actor_key_id IS NULL AND a.actor_role = $2
                               ELSE a.actor_key_id::text = $2 END)
  AND ($3::text IS NULL OR a.action = $3)
  AND ($4::timestamptz IS NULL OR a.at >= $4)
  AND ($5::timestamptz IS NULL OR a.at < $5)
  AND ($6::bigint IS NULL OR a.id < $6)
ORDER BY a.id DESC
LIMIT $7"""


async def insert(
    conn: Connection,
    *,
    key_id: str | None,
    role: str,
    unit_id: str | None,
    member_id: str | None,
    action: str,
    target_type: str,
    target_id: str,
    unit_ids: list[str],
    address: str | None,
    details: dict[str, Any],
) -> None:
    await conn.execute(
        INSERT,
        key_id,
        role,
        unit_id,
        member_id,
        action,
        target_type,
        target_id,
        unit_ids,
        address,
        json.dumps(details, ensure_ascii=False),
    )


async def list_entries(
    conn: Connection,
    roots: list[str] | None,
    *,
    actor: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[Record]:
    return list(await conn.fetch(LIST, roots, actor, action, since, until, before_id, limit))
