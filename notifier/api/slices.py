"""A caller's slice of a notice: which notice it may open, and which of its recipients it sees.

``load_notice_slice`` is the one visibility decision of the secretary's views (roll-call,
remind-now): each endpoint calls it once. Which notices a key sees is ``load_visible_notice``'s
rule (db/visibility.py); of a notice it sees, a unit-bound key sees only the recipients who are
members of units in its subtree -- or in ``unit``'s subtree, when it names a unit inside its
reach. An admin sees every notice and every recipient.
"""

from __future__ import annotations

from notifier.api.auth import require_unit
from notifier.api.notices import load_visible_notice
from notifier.api.principal import Principal
from notifier.db.pool import Connection, Record


async def load_notice_slice(
    conn: Connection, p: Principal, notice_id: str, unit: str | None = None
) -> tuple[Record, list[str] | None]:
    """(the notice, the roots of the caller's slice of its recipients; None: every recipient).

    404 when the caller may not see the notice (db/visibility.py has the rule), or names a unit
    outside its reach."""
    view = await load_visible_notice(conn, p, notice_id)
    if unit is not None:
        await require_unit(conn, p, unit)
        return view.row, [unit]
    root = p.scope_root
    return view.row, None if root is None else [root]
