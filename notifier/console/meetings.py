"""Meetings in the console (``/console/meetings``) and check-in on the member's page (``/m/meetings``).

The secretary calls a meeting from a form (the venue by its coordinates, with their datum) and
watches its check-ins arrive: the notice's counters over the notice stream (SSE), the attempts --
accepted and refused, with their reasons -- in a fragment the page re-fetches every few seconds
(refused attempts change no counter the stream follows). The member's page checks in with the
browser's geolocation (static/meetings.js) and shows the verdict; after an accepted check-in it
offers a photo taken now (a file input with ``capture``), posted raw to api/checkin_photos.py --
required on a ``photo_required`` meeting, where the check-in counts only with it; the
secretary's check-in list links each photo (served in the API's scope). Every handler calls the API's
own handlers as the session's principal (apicall.py): the same rules, the same scope.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from multidict import MultiDictProxy
from pydantic import ValidationError

from notifier.api import checkin_photos as checkin_photos_api
from notifier.api import checkins as checkins_api
from notifier.api import meetings as meetings_api
from notifier.api.keys import DEPS
from notifier.api.notices import IDEMPOTENCY_HEADER
from notifier.api.principal import Principal
from notifier.api.problems import PROBLEM_TYPE, Problem
from notifier.api.routing import Call
from notifier.console.apicall import as_principal, call
from notifier.console.member import member_principal
from notifier.console.pages import TZ, page, render, t, when
from notifier.console.session import Session
from notifier.console.units import tree_order
from notifier.db import units
from notifier.db.quiet import DEFAULT_TIMEZONE
from notifier.domain.geo import DATUMS

PICKER_LIMIT = 500
IN_FLIGHT_TRIES = 50
CHECKINS_SHOWN = 500


def _tz(request: web.Request) -> ZoneInfo:
    return ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE))


def _local(request: web.Request, text: str) -> str | None:
    """A ``datetime-local`` field read in the unit's time zone, as ISO 8601 with its offset (None
    when empty; ValueError when it is not a time)."""
    return datetime.fromisoformat(text).replace(tzinfo=_tz(request)).isoformat() if text else None


async def _choices(request: web.Request, p: Principal) -> dict[str, Any]:
    async with request.app[DEPS].pool.acquire() as conn:
        unit_rows = await units.list_units(conn, p.scope_root, None, PICKER_LIMIT)
    types = await call(request, p, meetings_api.list_meeting_types)
    return {
        "units": [
            {"id": u["id"], "name": u["name"], "depth": depth}
            for depth, u in tree_order([dict(r) for r in unit_rows], p.scope_root)
        ],
        "types": types["items"],
        "datums": DATUMS,
    }


FORM_FIELDS = (
    "type", "title", "body", "unit_id", "starts_at", "ends_at", "venue_name", "lat", "lng", "datum",
    "radius_m", "opens_at", "closes_at", "max_accuracy_m", "bssids", "photo_required",
)  # fmt: skip


def _values(form: MultiDictProxy[Any] | None, p: Principal) -> dict[str, str]:
    names = FORM_FIELDS
    values = {n: "" for n in names}
    values.update(
        {
            "type": "group_meeting",
            "unit_id": p.scope_root or "",
            "datum": "wgs84",
            "radius_m": str(meetings_api.DEFAULT_RADIUS_M),
            "max_accuracy_m": str(meetings_api.DEFAULT_MAX_ACCURACY_M),
        }
    )
    if form is not None:
        for n in names:
            value = form.get(n, "")
            values[n] = value.strip() if isinstance(value, str) else ""
    values["key"] = str(form.get("key", "")) if form is not None and form.get("key") else str(uuid.uuid4())
    return values


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # validation names the field


def _whole(text: str) -> int | float | str:
    value = _number(text)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _meeting_in(request: web.Request, v: dict[str, str]) -> meetings_api.MeetingIn:
    data: dict[str, Any] = {
        "type": v["type"],
        "title": v["title"],
        "body": v["body"] or None,
        "unit_id": v["unit_id"] or None,
        "starts_at": _local(request, v["starts_at"]),
        "ends_at": _local(request, v["ends_at"]),
        "venue": {"lat": _number(v["lat"]), "lng": _number(v["lng"]), "datum": v["datum"]},
        "radius_m": _whole(v["radius_m"]),
        "max_accuracy_m": _whole(v["max_accuracy_m"]),
        "bssids": [b for b in v["bssids"].replace(",", "\n").splitlines() if b.strip()],
        "photo_required": v["photo_required"] == "yes",
    }
    if v["venue_name"]:
        data["venue"]["name"] = v["venue_name"]
    if v["opens_at"]:
        data["checkin_opens_at"] = _local(request, v["opens_at"])
    if v["closes_at"]:
        data["checkin_closes_at"] = _local(request, v["closes_at"])
    return meetings_api.MeetingIn.model_validate(data)


def _errors(request: web.Request, errors: list[tuple[str, str]]) -> list[str]:
    return [t(request, "meetings.error", field=f, message=m) for f, m in errors]


@page()
async def list_meetings(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    data = await call(request, p, meetings_api.list_meetings, query=meetings_api.MeetingQuery(limit=100))
    types = await call(request, p, meetings_api.list_meeting_types)
    names = {ty["code"]: ty for ty in types["items"]}
    return render(request, "meetings_list.html", {"items": data["items"], "types": names})


@page()
async def new_meeting(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    context = {**await _choices(request, p), "values": _values(None, p), "errors": []}
    return render(request, "meetings_new.html", context)


@page()
async def create_meeting(request: web.Request, session: Session) -> web.StreamResponse:
    p = session.principal
    values = _values(await request.post(), p)
    try:
        body = _meeting_in(request, values)
    except ValidationError as exc:
        errors = [(".".join(str(x) for x in e["loc"]), e["msg"]) for e in exc.errors()]
        return await _form_again(request, p, values, errors)
    except ValueError:
        return await _form_again(request, p, values, [("starts_at", t(request, "meetings.bad_time"))])
    headers = {IDEMPOTENCY_HEADER: values["key"]}
    for _ in range(IN_FLIGHT_TRIES):
        try:
            created = await call(request, p, meetings_api.create_meeting, body=body, headers=headers)
            break
        except Problem as problem:
            if problem.type == "idempotency-in-flight":  # the first click's request still commits
                await asyncio.sleep(0.2)
                continue
            if problem.status == 422:
                errors = [(e["field"], e["message"]) for e in problem.errors or []]
                return await _form_again(request, p, values, errors)
            raise
    else:
        raise Problem(409, "Conflict", t(request, "meetings.in_flight"))
    raise web.HTTPSeeOther(f"/console/meetings/{created['id']}")


async def _form_again(
    request: web.Request, p: Principal, values: dict[str, str], errors: list[tuple[str, str]]
) -> web.Response:
    context = {**await _choices(request, p), "values": values, "errors": _errors(request, errors)}
    return render(request, "meetings_new.html", context, status=422)


def reason(request: web.Request, c: dict[str, Any]) -> str:
    """A check-in's verdict explained in the page's language, with its numbers (the API's
    ``reason`` is English)."""
    verdict = c["verdict"]
    if verdict == "too_early":
        return t(request, "meetings.opens_at_is", at=when(request, c["window"]["opens_at"]))
    if verdict == "too_late":
        return t(request, "meetings.closed_at_is", at=when(request, c["window"]["closes_at"]))
    if verdict == "mock_location":
        return t(request, "meetings.mock_is")
    if c["bssid_matched"]:
        return t(request, "meetings.wifi")
    text = t(
        request,
        "meetings.distance",
        distance=round(c["distance_m"] or 0),
        accuracy=round(c["accuracy_m"] or 0),
        radius=c["radius_m"],
    )
    if verdict == "low_accuracy":
        text += " · " + t(request, "meetings.accuracy_is", accuracy=c["max_accuracy_m"])
    elif c["flagged"]:
        text += " · " + t(request, "meetings.flagged")
    return text


async def _checkins(request: web.Request, p: Principal) -> list[dict[str, Any]]:
    query = checkins_api.CheckinQuery(limit=CHECKINS_SHOWN)
    data = await call(request, p, checkins_api.list_checkins, query=query)
    return [{**c, "reason_text": reason(request, c)} for c in data["items"]]


@page()
async def show_meeting(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    meeting = await call(request, p, meetings_api.get_meeting)
    types = await call(request, p, meetings_api.list_meeting_types)
    names = {ty["code"]: ty for ty in types["items"]}
    context = {"meeting": meeting, "types": names, "checkins": await _checkins(request, p)}
    return render(request, "meetings_show.html", context)


@page()
async def checkins_fragment(request: web.Request, session: Session) -> web.Response:
    """htmx: the check-ins table, re-fetched every few seconds while the page is open."""
    p = session.principal
    meeting = await call(request, p, meetings_api.get_meeting)
    context = {"meeting": meeting, "checkins": await _checkins(request, p)}
    return render(request, "meetings_checkins.html", context)


# --- the member's page ---------------------------------------------------------------------------


@page(console_roles=False, member=True)
async def member_meeting(request: web.Request, session: Session) -> web.Response:
    p = member_principal(session)
    meeting = await call(request, p, meetings_api.get_meeting)
    mine = await _checkins(request, p)
    accepted = next((c for c in mine if c["accepted"]), None)
    context = {"meeting": meeting, "accepted": accepted, "last": mine[-1] if mine else None}
    return render(request, "meetings_member.html", context)


@page(console_roles=False, member=True)
async def member_checkin(request: web.Request, session: Session) -> web.Response:
    """The page's script posts the browser's position here (JSON, the CSRF token in a header) and
    gets the API's answer back as JSON -- problems as problem+json, with their status."""
    p = member_principal(session)
    try:
        data = json.loads(await request.text())
        if not isinstance(data, dict):
            raise ValueError("not an object")
        body = checkins_api.CheckinIn.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(x) for x in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        bad = Problem(422, "Unprocessable Content", t(request, "meetings.bad_position"), errors=errors)
        return _problem(bad)
    except ValueError:
        return _problem(Problem(400, "Bad Request", t(request, "meetings.bad_position")))
    try:
        out = await call(request, p, checkins_api.post_checkin, body=body)
    except Problem as problem:
        return _problem(problem)
    out["verdict_text"] = t(request, "meetings.verdict." + out["verdict"])
    out["reason_text"] = reason(request, out)
    return web.json_response(out)


def _photo_match(request: web.Request) -> dict[str, str]:
    return {k: request.match_info[k] for k in ("notice_id", "checkin_id")}


@page(console_roles=False, member=True)
async def member_checkin_photo(request: web.Request, session: Session) -> web.Response:
    """The page's script posts the photo (the raw file, the CSRF token in a header) for the
    member's accepted check-in: the API's answer (api/checkin_photos.py) as JSON, problems too."""
    sub = as_principal(request, member_principal(session), match=_photo_match(request))
    try:
        response = await checkin_photos_api.attach_photo(sub, Call(None, None))
    except Problem as problem:
        return _problem(problem)
    assert isinstance(response, web.Response)
    return response


@page()
async def checkin_photo(request: web.Request, session: Session) -> web.StreamResponse:
    """A check-in's photo, for the secretary's check-in list (the API's scope rule)."""
    sub = as_principal(request, session.principal, match=_photo_match(request))
    return await checkin_photos_api.get_checkin_photo(sub, Call(None, None))


def _problem(problem: Problem) -> web.Response:
    body = {"status": problem.status, "title": problem.title, "detail": problem.detail}
    body["errors"] = problem.errors
    headers = problem.headers
    return web.json_response(body, status=problem.status, content_type=PROBLEM_TYPE, headers=headers)
