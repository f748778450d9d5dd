"""/v1/units/{unit_id}/budgets: the cost guard's daily budgets for paid channels (SMS, voice,
DingTalk DINGs by SMS -- ``dingtalk_ding.sms`` -- and by phone -- ``dingtalk_ding.phone``).

A budget caps what one channel may send per local day for the notices of a unit and every unit
below it, and for an admin's (unscoped) notice what it sends to the members of those units
(db/budgets.py). Beyond it deliveries wait, queued as ``budget_exhausted`` with the time
they go (the unit's next midnight), the notice gets a ``budget_exhausted`` event, the unit's
secretaries get an in-app notice saying so (once per notice, channel and day), and the notice's
other channels go on unaffected. An admin sets, raises or overrides a budget
(``override_until``: no limit until then); a change frees the rows it held at once. Secretaries
and services of the unit may read it, with today's spend.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, principal
from notifier.api.problems import invalid, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Strict, Timestamp
from notifier.db import budgets

routes = Router()

# A DING by SMS or by phone has its own budget; in the app it is free (channels.base.budget_key).
PAID_CHANNELS = ("sms", "voice", "dingtalk_ding.sms", "dingtalk_ding.phone")
PaidChannel = Literal["sms", "voice", "dingtalk_ding.sms", "dingtalk_ding.phone"]


class BudgetIn(Strict):
    daily_limit: int = Field(ge=0, le=10_000_000, description="sends per local day (0: none)")
    override_until: Timestamp | None = Field(
        default=None, description="an admin's override: no limit until then (null: none)"
    )


class BudgetOut(BaseModel):
    channel: PaidChannel
    daily_limit: int
    override_until: datetime | None
    used_today: int = Field(description="sends charged today (the unit's local day)")
    updated_at: datetime


class BudgetList(BaseModel):
    items: list[BudgetOut]


def _channel(request: web.Request) -> str:
    channel = request.match_info["channel"]
    if channel not in PAID_CHANNELS:
        raise invalid("channel", f"budgets apply to the paid channels: {', '.join(PAID_CHANNELS)}")
    return channel


@routes.route(
    "GET",
    "/v1/units/{unit_id}/budgets",
    summary="The unit's daily budgets for paid channels, with today's spend",
    tag="organisation",
    response=BudgetList,
)
async def list_budgets(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        row = await require_unit(conn, p, request.match_info["unit_id"])
        items = await budgets.list_for(conn, row["id"])
    return json_response({"items": [BudgetOut.model_validate(i).model_dump(mode="json") for i in items]})


@routes.route(
    "PUT",
    "/v1/units/{unit_id}/budgets/{channel}",
    summary="Set, raise or override a unit's daily budget for a paid channel (admin)",
    tag="organisation",
    body=BudgetIn,
    response=BudgetOut,
    responses={422: "channel is not a paid channel (sms, voice, dingtalk_ding.sms, dingtalk_ding.phone)"},
)
async def put_budget(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin")
    body = call.body_as(BudgetIn)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        unit = await require_unit(conn, p, request.match_info["unit_id"])
        channel = _channel(request)
        unit_id = unit["id"]
        await budgets.put(conn, unit_id, channel, body.daily_limit, body.override_until)
        await audit.record(
            conn,
            request,
            "budget.put",
            "unit",
            unit_id,
            [unit_id],
            {
                "channel": channel,
                "daily_limit": body.daily_limit,
                "override_until": None if body.override_until is None else body.override_until.isoformat(),
            },
        )
        item = next(i for i in await budgets.list_for(conn, unit_id) if i["channel"] == channel)
    return json_response(BudgetOut.model_validate(item).model_dump(mode="json"))


@routes.route(
    "DELETE",
    "/v1/units/{unit_id}/budgets/{channel}",
    summary="Remove a unit's budget for a paid channel (admin): a budget above it, if any, governs",
    tag="organisation",
    status=204,
    responses={404: "no such unit, or it has no budget for this channel"},
)
async def delete_budget(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn, conn.transaction():
        unit = await require_unit(conn, p, request.match_info["unit_id"])
        channel = request.match_info["channel"]
        if not await budgets.delete(conn, unit["id"], channel):
            raise not_found("budget")
        await audit.record(
            conn, request, "budget.delete", "unit", unit["id"], [unit["id"]], {"channel": channel}
        )
    return web.Response(status=204)
