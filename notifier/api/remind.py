"""POST /v1/notices/{id}/remind: the secretary's "DING the unread again" button.

Sends the notice again, on the given channels, to the unread of the caller's slice (or of
``unit`` inside it), through the escalation's own reminder statement: each press is a manual
step of its own (``MANUAL_STEP_BASE`` up), counted in the notice's escalation send ceiling and
recorded in the timeline. A retry with the same ``Idempotency-Key`` replays the first answer and
sends nothing; without one, a second press of the same slice sooner than
``escalation_min_step_seconds`` after the last (admins excepted, as for policy spacing) is 409,
so a double click cannot send twice. Recalled, expired or not yet sent notices are 409.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api import audit
from notifier.api.keys import DEPS, AppDeps, principal
from notifier.api.notices import IDEMPOTENCY_HEADER, idempotency_key, previous_answer, require_channels
from notifier.api.principal import Principal
from notifier.api.problems import Problem
from notifier.api.routing import Call, Router, json_response
from notifier.api.slices import load_notice_slice
from notifier.api.stream import WATCHERS
from notifier.api.types import Channels, Id, Strict
from notifier.db import escalations, notices, remind, timeline
from notifier.db.pool import Connection, Record
from notifier.domain.escalation import MANUAL_STEP_BASE
from notifier.workers.escalate import CEILING_EVENT
from notifier.workers.queue import enqueue_deliveries

log = logging.getLogger(__name__)
routes = Router()


class RemindIn(Strict):
    unit: Id | None = Field(default=None, description="only the unread of this unit's subtree")
    channels: Channels = Field(min_length=1, max_length=8, description="channels to remind them on")


class RemindOut(BaseModel):
    notice_id: str
    step: int = Field(description="the manual step these reminders carry (one per press)")
    unit: str | None = Field(description="whose unread were reminded (None: the whole notice)")
    reminded: dict[str, int] = Field(description="reminders made, per channel")
    not_reached: int = Field(description="unread members with no contact on a channel (counted per channel)")
    ceiling_reached: bool = Field(
        description="the notice's escalation send ceiling stopped some reminders (and its escalation)"
    )


def _problem(kind: str, detail: str, headers: dict[str, str] | None = None) -> Problem:
    return Problem(409, "Conflict", detail, type_=kind, headers=headers)


def _request_hash(notice_id: str, body: RemindIn) -> bytes:
    canonical = json.dumps([notice_id, body.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


async def _press(
    conn: Connection, deps: AppDeps, p: Principal, notice: Record, roots: list[str] | None, body: RemindIn
) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """One press, inside the caller's transaction: (the answer, (channel, n) to wake)."""
    notice_id = str(notice["id"])
    scope = "" if roots is None else roots[0]
    sent = await escalations.lock_sends(conn, notice_id)  # after remind.lock: one order, no deadlock
    row = await remind.press(conn, notice_id, MANUAL_STEP_BASE, scope)
    if row["state"] == "recalled":
        raise _problem("notice-recalled", "this notice was recalled")
    if row["expired"]:
        raise _problem("notice-expired", "this notice has expired: no more reminders")
    if row["state"] != "active":
        raise _problem("notice-not-sent", f"this notice is {row['state']}: it has not gone out yet")
    since = remind.seconds_since(row)
    spacing = deps.settings.escalation_min_step_seconds
    if not p.is_admin and since is not None and since < spacing:
        wait = max(1, math.ceil(spacing - since))
        raise _problem(
            "remind-too-soon",
            f"these members were reminded {since:.0f} s ago; the next reminder may go in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    step = int(row["step"])
    left = max(0, deps.settings.escalation_max_sends - sent)
    if left == 0:
        raise _problem("escalation-ceiling", "this notice has made as many escalation sends as allowed")
    reminded: dict[str, int] = {}
    reached: set[str] = set()
    not_reached = used = 0
    ceiling = False
    wake: list[tuple[str, int]] = []
    for channel_id in body.channels:
        caps = deps.channels.get(channel_id).capabilities
        allowed = left - used
        result = await escalations.remind_within(
            conn,
            notice_id,
            channel_id,
            step,
            roots,
            needs_contact=caps.needs_contact,
            delivers_on_insert=caps.delivers_on_insert,
            budget=allowed,
        )
        n = reminded[channel_id] = int(result["reached"])
        used += n
        ceiling = ceiling or int(result["wanted"]) > allowed
        reached.update(result["reached_members"])
        unreachable = list(result["unreachable"])
        not_reached += len(unreachable)
        await timeline.record_for_members(
            conn,
            notice_id,
            unreachable,
            "not_reached",
            {"channel": channel_id, "step": step, "reason": "no contact"},
        )
        if n and not caps.delivers_on_insert:
            wake.append((channel_id, n))
    await escalations.add_sends(conn, notice_id, used)
    detail = {"step": step, "scope": scope, "by": p.owner, "channels": body.channels, "reminded": reminded}
    await remind.record_press(conn, notice_id, sorted(reached), detail)
    if ceiling:
        await escalations.finish(conn, notice_id, "stopped")
        await timeline.record(
            conn,
            notice_id,
            CEILING_EVENT,
            {"limit": deps.settings.escalation_max_sends, "sends": sent + used, "step": step},
        )
    out = RemindOut(
        notice_id=notice_id,
        step=step,
        unit=roots[0] if roots is not None and body.unit is not None else None,
        reminded=reminded,
        not_reached=not_reached,
        ceiling_reached=ceiling,
    )
    return out.model_dump(mode="json"), wake


@routes.route(
    "POST",
    "/v1/notices/{notice_id}/remind",
    summary="Remind the unread of your units again now, on the given channels",
    tag="notices",
    body=RemindIn,
    response=RemindOut,
    status=202,
    headers={IDEMPOTENCY_HEADER: "Replays the first answer for the same key and body (24 h); sends nothing"},
    responses={
        422: "a channel is not one this deployment configures, or the Idempotency-Key was used with "
        "a different request",
        409: "the notice is recalled, expired or not sent yet, at its escalation send ceiling, or "
        "these members were reminded less than the minimum step spacing ago (Retry-After)",
    },
)
async def remind_notice(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    body = call.body_as(RemindIn)
    deps = request.app[DEPS]
    require_channels(deps, body.channels)
    key = idempotency_key(request)
    owner = f"remind:{p.owner}"  # its own namespace: a notice's key never replays a press
    async with deps.pool.acquire() as conn, conn.transaction():
        notice, roots = await load_notice_slice(conn, p, request.match_info["notice_id"], body.unit)
        notice_id = str(notice["id"])
        await remind.lock(conn, notice_id)
        digest = _request_hash(notice_id, body)
        if key is not None:
            ttl = float(deps.settings.idempotency_ttl_seconds)
            replay = await previous_answer(conn, owner, key, digest, ttl, what="request")
            if replay is not None:
                return json_response(replay, status=202, headers={"Idempotent-Replayed": "true"})
        data, wake = await _press(conn, deps, p, notice, roots, body)
        await audit.record(
            conn,
            request,
            "notice.remind",
            "notice",
            notice_id,
            [notice["scope_unit_id"], *(roots or [])],
            {"unit": body.unit, "channels": list(body.channels), "step": data.get("step")},
        )
        if key is not None:
            await conn.execute(notices.IDEMPOTENCY_PUT, owner, key, digest, notice_id, 202, data)
    request.app[WATCHERS].changed(notice_id)  # committed: the queued reminders show on the streams
    for channel_id, n in wake:
        try:
            await enqueue_deliveries(
                deps.queue, deps.settings, notice_id, channel_id, n, tag=f"r{data['step']}"
            )
        except Exception:  # the reconciler finds the queued rows in PostgreSQL; nothing is lost
            log.warning(
                "could not wake deliveries for notice %s; the reconciler will", notice_id, exc_info=True
            )
    return json_response(data, status=202)
