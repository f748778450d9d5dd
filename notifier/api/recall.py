"""POST /v1/notices/{id}/recall: stop every pending delivery and the escalation, at once."""

from __future__ import annotations

from aiohttp import web

from notifier.api.keys import DEPS, principal
from notifier.api.notices import NoticeOut, load_visible_notice
from notifier.api.routing import Call, Router, json_response
from notifier.db import escalations, notices

routes = Router()


@routes.route(
    "POST",
    "/v1/notices/{notice_id}/recall",
    summary="Recall a notice (idempotent)",
    tag="notices",
    response=NoticeOut,
)
async def recall_notice(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await load_visible_notice(conn, p, request.match_info["notice_id"])
        notice_id = str(row["id"])
        # Wait for an escalation step that is running right now, so the statements below see the
        # reminders and summary it made.
        await conn.execute("SELECT 1 FROM escalations WHERE notice_id = $1 FOR UPDATE", notice_id)
        # The notice and the summaries its escalation produced; pending work is cancelled, work
        # already handed to a provider finishes, late read receipts are still recorded.
        recalled = [str(r["id"]) for r in await conn.fetch(escalations.RECALL, notice_id)]
        if recalled:
            await conn.execute(escalations.CANCEL_PENDING, recalled)
            await conn.execute(escalations.STOP_TIMERS, recalled)
            await escalations.event(
                conn, notice_id, "recalled", {"by": p.key_id or "admin", "notices": recalled}
            )
        fresh = await notices.get(conn, notice_id)
        assert fresh is not None
        counts = await notices.counts(conn, notice_id)
    return json_response(NoticeOut.model_validate(notices.as_dict(fresh, counts)).model_dump(mode="json"))
