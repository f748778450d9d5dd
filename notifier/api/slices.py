"""A caller's slice of a notice: which notice it may open, and which of its recipients it sees.

``load_notice_slice`` is the one visibility decision of the secretary's views (roll-call,
remind-now): each endpoint calls it once. A unit-bound key sees a notice created inside its
subtree (``load_visible_notice``) or one that reached a member of a unit in its subtree, and of
either only the recipients who are members of units in its subtree -- or in ``unit``'s subtree,
when it names a unit inside its reach. An admin sees every notice and every recipient.
"""

from __future__ import annotations

from notifier.api.auth import require_unit
from notifier.api.notices import load_visible_notice
from notifier.api.principal import Principal
from notifier.api.problems import Problem, not_found
from notifier.api.types import parse_uuid
from notifier.db import notices, rollcall
from notifier.db.pool import Connection, Record


async def load_notice_slice(
    conn: Connection, p: Principal, notice_id: str, unit: str | None = None
) -> tuple[Record, list[str] | None]:
    """(the notice, the roots of the caller's slice of its recipients; None: every recipient).

    404 when the caller may not see the notice, or names a unit outside its reach."""
    try:
        row = await load_visible_notice(conn, p, notice_id)
    except Problem as problem:
        root = p.scope_root
        nid = parse_uuid(notice_id)
        if problem.status != 404 or root is None or nid is None:
            raise
        found = await notices.get(conn, nid)
        if found is None or not await rollcall.any_recipient_within(conn, str(found["id"]), [root]):
            raise not_found("notice") from None
        row = found
    if unit is not None:
        await require_unit(conn, p, unit)
        return row, [unit]
    root = p.scope_root
    return row, None if root is None else [root]
