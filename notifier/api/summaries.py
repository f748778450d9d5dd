"""GET /r/unread/{token}: the unread list an escalation summary links to.

A summary DING goes to secretaries and duty officers, by SMS, voice, push or in-app: a bearer
API URL would be useless to them. Its text carries a signed, expiring link bound to the summary
(``links.make_list_token``) that shows who in the notice's own audience has not read it yet, by
name and unit -- the same placement the summary counted. Nothing is recorded by opening it.
"""

from __future__ import annotations

import html
import time

from aiohttp import web

from notifier.api.keys import DEPS
from notifier.api.providers import PAGE, PAGE_CSP
from notifier.api.routing import Call, Reply, Router
from notifier.db import escalations, notices, units
from notifier.links import BadLink, read_list_token

routes = Router()

SHOWN = 500


def _page(status: int, title: str, body_html: str) -> web.Response:
    text = PAGE.format(title=html.escape(title), body=body_html)
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": PAGE_CSP},
    )


@routes.route(
    "GET",
    "/r/unread/{token}",
    summary="Open an escalation summary's signed link: who has not read the notice yet",
    tag="providers",
    auth=False,
    media="text/html",
    responses={
        403: Reply("the link's signature did not verify", media="text/html"),
        404: Reply("the summary no longer exists", media="text/html"),
        410: Reply("the link has expired", media="text/html"),
    },
)
async def open_unread_list(request: web.Request, call: Call) -> web.Response:
    deps = request.app[DEPS]
    try:
        summary_id = read_list_token(deps.settings.link_keys(), request.match_info["token"], time.time())
    except BadLink as exc:
        status = 410 if "expired" in str(exc) else 403
        return _page(status, "Link not valid", f"<p class=note>{html.escape(str(exc))}.</p>")
    async with deps.pool.acquire() as conn:
        parent = await escalations.summary_parent(conn, summary_id)
        if parent is None:
            return _page(404, "Not found", "<p class=note>This list no longer exists.</p>")
        scope = parent["scope_unit_id"]
        reach = None if scope is None else await units.subtree_ids(conn, scope)
        rows = await escalations.unread_list(conn, str(parent["id"]), parent["audience"], reach, SHOWN + 1)
        counts = await notices.counts(conn, str(parent["id"]))
    lines = "".join(
        f"<li>{html.escape(r['name'])} ({html.escape(', '.join(r['units']))})</li>" for r in rows[:SHOWN]
    )
    more = f"<p class=note>… and {counts['unread'] - SHOWN} more.</p>" if len(rows) > SHOWN else ""
    state = " (recalled)" if parent["state"] == "recalled" else ""
    head = f"<p>未读 {counts['unread']}/{counts['recipients']}{html.escape(state)}</p>"
    return _page(200, str(parent["title"]), f"{head}<ul>{lines}</ul>{more}")
