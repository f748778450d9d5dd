"""Provider callbacks (delivery reports, call results, key presses) and signed read links.

Neither uses bearer tokens: a callback is authenticated by the provider's own signature (the
channel verifies it), a read link by its HMAC. Both are idempotent and order-tolerant.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time

from aiohttp import web

from notifier.api.keys import DEPS
from notifier.api.problems import Problem, not_found
from notifier.api.routing import Call, Reply, Router, body_deadline
from notifier.api.stream import WATCHERS
from notifier.channels.base import InvalidSignature, ReceivesCallbacks
from notifier.db import notices, points, receipts, recipients
from notifier.links import BadLink, read_token
from notifier.workers.reports import apply_reports

routes = Router()

# A delivery report is a few hundred bytes (a batch of Aliyun reports, a few dozen); callbacks are
# unauthenticated until the channel has checked the signature, which needs the body, so the body
# is capped at what no provider sends: anyone may post here, nobody may make us buffer 16 MB.
MAX_CALLBACK_BYTES = 64 * 1024


def _too_large(what: str, limit: int) -> Problem:
    return Problem(413, "Content Too Large", f"{what} is at most {limit} bytes", type_="too-large")


async def read_capped(
    request: web.Request, limit: int = MAX_CALLBACK_BYTES, *, what: str = "a callback body"
) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` (before buffering more
    than ``limit`` bytes of it); ``what`` names the body in the answer."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(what, limit)
    body = bytearray()
    async with body_deadline(request):
        async for chunk in request.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > limit:
                raise _too_large(what, limit)
    return bytes(body)


@routes.route(
    "POST",
    "/v1/providers/{channel}/callbacks",
    summary="Provider status callbacks (signed by the provider)",
    tag="providers",
    auth=False,
    media=None,  # each provider's own reply format
    responses={
        400: Reply("the provider's report is malformed (in the provider's reply format)", media=None),
        403: "callback signature did not verify",
        404: "no such channel, or it takes no callbacks",
    },
)
async def provider_callback(request: web.Request, call: Call) -> web.Response:
    deps = request.app[DEPS]
    channel_id = request.match_info["channel"]
    channel = deps.channels.get(channel_id) if channel_id in deps.channels else None
    if channel is None or not isinstance(channel, ReceivesCallbacks):
        raise not_found("channel")
    body = await read_capped(request)
    url = deps.settings.effective_public_url.rstrip("/") + request.path_qs
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        reply = channel.handle_callback(url, headers, body)
    except InvalidSignature:
        raise Problem(403, "Forbidden", "callback signature did not verify", type_="bad-signature") from None
    async with deps.pool.acquire() as conn, conn.transaction():
        await apply_reports(conn, channel.id, reply.updates)
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)


PAGE_STYLE = """body{font:16px/1.6 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
.note{color:#555}"""
_BRACES = str.maketrans({"{": "{{", "}": "}}"})
PAGE = (  # PAGE.format(title=..., body=...)
    """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{title}</title>
<style>"""
    + PAGE_STYLE.translate(_BRACES)
    + """</style></head><body><h1>{title}</h1>{body}</body></html>"""
)
# The pages' own policy (read links here, unread lists in summaries.py): nothing but the one
# inline style block (by hash), never framed.
PAGE_CSP = (
    "default-src 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(PAGE_STYLE.encode()).digest()).decode()
    + "'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _page(status: int, title: str, body_html: str) -> web.Response:
    text = PAGE.format(title=html.escape(title), body=body_html)
    return web.Response(
        status=status, text=text, content_type="text/html", headers={"Content-Security-Policy": PAGE_CSP}
    )


PREVIEW_AGENTS = (
    "bot",
    "crawler",
    "spider",
    "preview",
    "facebookexternalhit",
    "whatsapp",
    "telegram",
    "slack",
    "discord",
    "skypeuri",
    "linkedin",
    "embedly",
    "curl/",
    "wget/",
    "python-requests",
    "go-http-client",
)


def is_preview_fetch(request: web.Request) -> bool:
    if request.method == "HEAD" or request.headers.get("Purpose", "").lower() in ("prefetch", "preview"):
        return True
    agent = request.headers.get("User-Agent", "").lower()
    return not agent or any(marker in agent for marker in PREVIEW_AGENTS)


@routes.route(
    "GET",
    "/r/{token}",
    summary="Open a signed read link: records the read, shows the notice",
    tag="providers",
    auth=False,
    media="text/html",
    responses={
        403: Reply("the link's signature did not verify", media="text/html"),
        404: Reply("the notice is not addressed to the link's member", media="text/html"),
        410: Reply("the link has expired", media="text/html"),
    },
)
async def open_read_link(request: web.Request, call: Call) -> web.Response:
    deps = request.app[DEPS]
    try:
        claims = read_token(deps.settings.link_keys(), request.match_info["token"], time.time())
    except BadLink as exc:
        status = 410 if "expired" in str(exc) else 403
        return _page(
            status, "Link not valid", f"<p class=note>{html.escape(str(exc))}. Nothing was recorded.</p>"
        )
    async with deps.pool.acquire() as conn, conn.transaction():
        notice = await notices.get(conn, claims.notice_id)
        row = await recipients.get(conn, claims.notice_id, claims.member_id)
        if notice is None or row is None:
            return _page(404, "Not found", "<p class=note>This notice is not addressed to you.</p>")
        # Link-preview bots and URL scanners fetch links too; they must not stop a DING's
        # escalation for someone who never saw it.
        if not is_preview_fetch(request):
            read = await receipts.mark_read(conn, claims.notice_id, claims.member_id, "link")
            if read and notice["kind"] == "lesson":
                await points.award(conn, claims.member_id, "lesson_read", f"notice:{claims.notice_id}")
        else:
            read = False
    if read:  # committed: the live streams of this notice may show it now
        request.app[WATCHERS].changed(claims.notice_id)
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in str(notice["body"]).split("\n") if p.strip())
    # The same token signs the member in to their inbox, once, by the button on that page (a GET
    # of it -- a preview -- signs nobody in): console/member.py use_read_link.
    inbox = f'<p><a href="/m/r/{html.escape(request.match_info["token"])}">收件箱 — open my inbox</a></p>'
    note = "<p class=note>✓ 已读 — read receipt recorded.</p>"
    return _page(200, str(notice["title"]), paragraphs + note + inbox)
