"""POST /v1/notices/{id}/recall: stop every pending delivery and the escalation, at once."""

from __future__ import annotations

from aiohttp import web

from notifier.api import audit
from notifier.api.keys import DEPS, principal
from notifier.api.notices import NoticeOut, load_visible_notice
from notifier.api.routing import Call, Router, json_response
from notifier.api.stream import WATCHERS
from notifier.db import notices, recall

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
        # Only the notice's own units may recall it: a branch it merely reached may not.
        view = await load_visible_notice(conn, p, request.match_info["notice_id"], own=True)
        notice_id = view.id
        await recall.recall(conn, notice_id, by=p.key_id or "admin")
        await audit.record(conn, request, "notice.recall", "notice", notice_id, [view.row["scope_unit_id"]])
        fresh = await notices.get(conn, notice_id)
        assert fresh is not None
        counts = await notices.counts(conn, notice_id, view.root)
    request.app[WATCHERS].changed(notice_id)  # committed: cancelled deliveries show on the streams
    return json_response(NoticeOut.model_validate(notices.as_dict(fresh, counts)).model_dump(mode="json"))
