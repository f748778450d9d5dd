"""Web Push: the VAPID public key a page passes to ``pushManager.subscribe()`` as its
``applicationServerKey`` before it registers the subscription as a ``webpush`` contact."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from notifier.api.keys import SETTINGS, principal
from notifier.api.problems import Problem
from notifier.api.routing import Call, Router, json_response
from notifier.channels.webpush import vapid_public_key

routes = Router()


class VapidPublicKey(BaseModel):
    public_key: str  # base64url, uncompressed P-256 point (65 bytes)


@routes.route(
    "GET",
    "/v1/webpush/vapid-public-key",
    summary="The VAPID public key browsers subscribe with (applicationServerKey)",
    tag="webpush",
    response=VapidPublicKey,
    responses={404: "web push is not configured"},
)
async def get_vapid_public_key(request: web.Request, call: Call) -> web.Response:
    principal(request).require("admin", "service", "secretary", "member")
    settings = request.app[SETTINGS]
    if settings.webpush.vapid_private_key is None:
        raise Problem(404, "Not Found", "web push is not configured", type_="not-found")
    return json_response(VapidPublicKey(public_key=vapid_public_key(settings)).model_dump())
