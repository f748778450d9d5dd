"""/v1/notices: enqueue a notice (idempotently), read its live status and its recipients."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import pydantic_core
from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from notifier.api import audit
from notifier.api.auth import members_visible, require_unit
from notifier.api.cursors import decode_cursor, encode_cursor
from notifier.api.keys import DEPS, AppDeps, principal
from notifier.api.policies import check_channels, check_spacing
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, invalid_many, not_found
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Channels, Id, Name, Strict, parse_uuid
from notifier.db import notices, policies, recipients, timeline, units
from notifier.db.pool import Connection, Record
from notifier.db.visibility import NoticeView, visible_notice, visible_notice_with_counts
from notifier.domain.escalation import PolicyRules
from notifier.workers.queue import enqueue_fanout, wake_tick_in

log = logging.getLogger(__name__)
routes = Router()

IDEMPOTENCY_HEADER = "Idempotency-Key"


class Audience(Strict):
    members: list[Id] = Field(default_factory=list, max_length=10_000)
    units: list[Id] = Field(default_factory=list, max_length=1_000)


class NoticeIn(Strict):
    kind: Literal["ding", "notice", "lesson"]
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000)
    audience: Audience
    channels: Channels = Field(default_factory=lambda: ["inapp"], min_length=1, max_length=16)
    optional_channels: Channels = Field(
        default_factory=list,
        max_length=16,
        description="channels of `channels` used only for the members with a working contact there: the "
        "others get no failed delivery on them. At least one member channel stays required",
    )
    fallback: bool = Field(
        default=False,
        description="channels in order of preference: each member gets the first one they can be reached on",
    )
    escalation: Name | PolicyRules | None = Field(
        default=None,
        description="a policy name, or steps given inline; a DING without one uses its unit's default "
        "policy. Snapshotted: later edits of the policy do not change this notice",
    )
    send_at: AwareDatetime | None = Field(default=None, description="nothing goes out before this time")
    expires_at: AwareDatetime | None = Field(
        default=None, description="after this, no reminders or escalation"
    )

    @model_validator(mode="after")
    def _times(self) -> NoticeIn:
        if self.expires_at is not None and self.send_at is not None and self.expires_at <= self.send_at:
            raise ValueError("expires_at must be after send_at")
        return self


class Counts(BaseModel):
    recipients: int
    queued: int
    sent: int
    delivered: int
    failed: int
    cancelled: int = Field(description="every delivery was cancelled (recalled, or read before it went out)")
    read: int
    unread: int


# A notice's life: scheduled -> queued -> fanning_out -> active, or recalled / failed.
NoticeState = Literal["scheduled", "queued", "fanning_out", "active", "recalled", "failed"]


class NoticeOut(BaseModel):
    id: str
    kind: str
    title: str
    body: str
    audience: Audience
    channels: list[str]
    optional_channels: list[str] = Field(
        default_factory=list, description="used only where the member has a working contact"
    )
    fallback: bool
    state: NoticeState
    send_at: datetime | None = None
    expires_at: datetime | None = None
    recalled_at: datetime | None = None
    escalation: dict[str, Any] | None = Field(
        default=None, description="the policy snapshot this notice runs"
    )
    created_at: datetime
    fanned_out_at: datetime | None
    counts: Counts


class DeliveryOut(BaseModel):
    channel: str
    step: int
    state: Literal[
        "queued",
        "sending",
        "sent",
        "delivered",
        "failed",
        "unknown",
        "cancelled",
        "retrying",
        "throttled",
        "circuit_open",
        "held",
        "budget_exhausted",
    ] = Field(
        description="queued work that waits shows why: retrying, throttled (a rate or per-contact limit), "
        "circuit_open (the provider is failing), held (quiet hours) or budget_exhausted (the unit's daily "
        "budget for a paid channel is spent); next_attempt_at says when it goes"
    )
    attempts: int
    error: str | None = None
    updated_at: datetime
    next_attempt_at: datetime | None = None


WAIT_STATES = {
    "retry": "retrying",
    "throttled": "throttled",
    "capped": "throttled",
    "circuit_open": "circuit_open",
    "quiet_hours": "held",
    "budget_exhausted": "budget_exhausted",
}


def delivery_state(state: str, wait_reason: str | None) -> str:
    if state == "queued" and wait_reason is not None:
        return WAIT_STATES[wait_reason]
    return state


class RecipientOut(BaseModel):
    member_id: str
    name: str
    units: list[str]
    status: Literal["queued", "sent", "delivered", "failed", "cancelled", "read"] = Field(
        description="read once read, else the delivery outcome"
    )
    delivery_status: Literal["queued", "sent", "delivered", "failed", "cancelled"] = Field(
        description="the delivery outcome, read or not: what ?status= and the counts go by"
    )
    delivered_at: datetime | None
    read_at: datetime | None
    deliveries: list[DeliveryOut]


class RecipientPage(BaseModel):
    items: list[RecipientOut]
    next_cursor: str | None


class RecipientQuery(Strict):
    status: Literal["read", "unread", "queued", "sent", "delivered", "failed", "cancelled"] | None = Field(
        default=None,
        description="read / unread: by the read receipt; the others: by the delivery outcome, read or not "
        "(so a listing agrees with counts)",
    )
    unit: Id | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=400)


async def _check_audience(conn: Connection, p: Principal, audience: Audience) -> None:
    errors: list[tuple[str, str]] = []
    if not audience.members and not audience.units:
        errors.append(("audience", "name at least one member or unit"))
    root = p.scope_root
    wanted = sorted(set(audience.units))
    known_units = (
        await units.existing(conn, wanted) if root is None else await units.all_within(conn, wanted, root)
    )
    errors += [
        (f"audience.units[{i}]", "unknown unit") for i, u in enumerate(audience.units) if u not in known_units
    ]
    known_members = await members_visible(conn, p, sorted(set(audience.members)))
    errors += [
        (f"audience.members[{i}]", "unknown member")
        for i, m in enumerate(audience.members)
        if m not in known_members
    ]
    if errors:
        raise invalid_many(errors[:100])


NoticeKind = Literal["ding", "notice", "lesson", "meeting", "exam"]
"""Every kind a notice can have. ``POST /v1/notices`` takes the first three; ``meeting`` and ``exam``
notices are created by their own endpoints (with what they carry besides the notice)."""

CreateFn = Callable[[], Awaitable[dict[str, Any]]]


# Fields a body gained after keys were in use, left out of the hash while they hold their
# default: a retry across the upgrade (keys live 24 h) still replays its first answer.
_ADDED_LATER: dict[str, Any] = {"optional_channels": []}


def request_digest(body: BaseModel, *extra: str) -> bytes:
    """The hash an Idempotency-Key is bound to: the body as canonical JSON (and any ``extra``)."""
    data = body.model_dump(mode="json")
    for name, default in _ADDED_LATER.items():
        if name in data and data[name] == default:
            del data[name]
    value: Any = [data, *extra] if extra else data
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


async def _escalation(
    conn: Connection, deps: AppDeps, p: Principal, body: NoticeIn
) -> tuple[dict[str, Any] | None, str | None]:
    """Resolve and snapshot the notice's escalation policy: (snapshot, missing default).

    A policy the caller named must exist (422). The unit's default, which the caller never
    sent, must not make an urgent send fail closed: when it no longer resolves the notice goes
    out without escalation, and its name comes back to be recorded as a ``policy_missing`` event."""
    chosen = body.escalation
    if isinstance(chosen, PolicyRules):
        try:
            check_channels(chosen, deps.channels)
            check_spacing(chosen, p, deps.settings)
        except Problem as problem:
            for err in problem.errors or []:
                err["field"] = "escalation." + err["field"]
            raise
        return chosen.snapshot(None), None
    default = chosen is None
    if chosen is None:
        if body.kind != "ding" or p.scope_root is None:
            return None, None
        chosen = await policies.unit_default(conn, p.scope_root)
        if chosen is None:
            return None, None
    row = await policies.resolve(conn, chosen, p.scope_root)
    if row is None:
        if default:
            return None, chosen
        raise invalid("escalation", "unknown escalation policy")
    rules = PolicyRules.model_validate({"steps": row["steps"], "repeat": row["repeat"]})
    return rules.snapshot(row["name"]), None


async def insert_notice(
    conn: Connection, deps: AppDeps, p: Principal, body: NoticeIn, *, kind: NoticeKind | None = None
) -> dict[str, Any]:
    """Check and store one notice (inside the caller's transaction): its NoticeOut as a dict.

    The one path every notice takes, whatever endpoint creates it: ``kind`` overrides the body's
    for endpoints that create a ``meeting`` or ``exam`` notice along with their own rows. After the
    commit, call :func:`wake_fanout` with the answer."""
    await _check_audience(conn, p, body.audience)
    escalation, missing_policy = await _escalation(conn, deps, p, body)
    row = await notices.insert(
        conn,
        kind=kind or body.kind,
        title=body.title,
        body=body.body,
        audience=body.audience.model_dump(),
        channels=body.channels,
        optional_channels=body.optional_channels,
        fallback=body.fallback,
        scope_unit_id=p.scope_root,
        created_by=p.key_id,
        escalation=escalation,
        send_at=body.send_at,
        expires_at=body.expires_at,
    )
    if missing_policy is not None:
        await timeline.record(
            conn,
            str(row["id"]),
            "policy_missing",
            {"policy": missing_policy, "unit_id": p.scope_root, "sent": "without escalation"},
        )
    zero = {k: 0 for k in Counts.model_fields}
    return NoticeOut.model_validate(notices.as_dict(row, zero)).model_dump(mode="json")


@routes.route(
    "POST",
    "/v1/notices",
    summary="Enqueue a notice (fan-out happens in the worker)",
    tag="notices",
    body=NoticeIn,
    response=NoticeOut,
    status=202,
    headers={IDEMPOTENCY_HEADER: "Replays the first response for the same key and body (24 h)"},
    responses={
        409: "a request with this Idempotency-Key is still being processed",
        422: "a channel is not one this deployment configures; an optional channel is not one of "
        "`channels`, or no channel that reaches members is left required; the audience names units "
        "or members that are unknown or outside your reach; the escalation policy is unknown; the "
        "Idempotency-Key was used with a different body",
    },
    links={
        "get_notice": {"notice_id": "$response.body#/id"},
        "list_recipients": {"notice_id": "$response.body#/id"},
        "notice_events": {"notice_id": "$response.body#/id"},
        "recall_notice": {"notice_id": "$response.body#/id"},
    },
)
async def create_notice(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    body = call.body_as(NoticeIn)
    deps = request.app[DEPS]
    require_channels(deps, body.channels, body.optional_channels)
    key = idempotency_key(request)
    async with deps.pool.acquire() as conn, conn.transaction():
        data, replayed = await create_once(
            conn, deps, p, key, request_digest(body), lambda: insert_notice(conn, deps, p, body)
        )
        if replayed:
            return json_response(data, status=202, headers={"Idempotent-Replayed": "true"})
        # About the creating unit and the units addressed; never the title or body.
        await audit.record(
            conn,
            request,
            "notice.create",
            "notice",
            str(data["id"]),
            [p.scope_root, *body.audience.units],
            {"kind": body.kind, "channels": list(body.channels), "state": data["state"]},
        )
    await wake_fanout(deps, data, body.send_at)
    return json_response(data, status=202, headers={"Location": f"/v1/notices/{data['id']}"})


async def wake_fanout(deps: AppDeps, data: dict[str, Any], send_at: datetime | None) -> None:
    """After the commit of a new notice: wake the fan-out now, or the tick at ``send_at``.

    Best effort: the reconciler finds a notice whose wake-up was lost in PostgreSQL."""
    try:
        if data["state"] == "queued":
            await enqueue_fanout(deps.queue, data["id"])
        elif data["state"] == "scheduled":
            await wake_tick_in(deps.queue, (send_at - datetime.now(UTC)).total_seconds() if send_at else 0)
    except Exception:
        log.warning("could not enqueue fan-out for notice %s; the reconciler will", data["id"], exc_info=True)


def require_channels(deps: AppDeps, channels: list[str], optional: list[str] | None = None) -> None:
    """Every channel named is one this deployment configures (422 naming the first that is not);
    the ``optional`` ones are among them, and a channel that reaches members stays required."""
    for i, channel in enumerate(channels):
        if channel not in deps.channels:
            raise invalid(f"channels[{i}]", f"unknown channel; one of {', '.join(deps.channels.ids())}")
    for i, channel in enumerate(optional or []):
        if channel not in channels:
            raise invalid(f"optional_channels[{i}]", "not one of this notice's channels")
    if optional and all(
        channel in optional or deps.channels.get(channel).capabilities.unit_level for channel in channels
    ):
        raise invalid("optional_channels", "at least one channel that reaches members must stay required")


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key, if it sent one that is well formed (else 422)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not (1 <= len(key) <= 255 and key.isascii() and key.isprintable()):
        raise invalid(IDEMPOTENCY_HEADER, "must be 1..255 printable ASCII characters")
    return key


async def previous_answer(
    conn: Connection, owner: str, key: str, digest: bytes, ttl: float, *, what: str = "body"
) -> dict[str, Any] | None:
    """The answer first given for this key, if any; 422 when the key came with another ``what``."""
    previous = await conn.fetchrow(notices.IDEMPOTENCY_GET, owner, key, ttl)
    if previous is None:
        return None
    if bytes(previous["request_hash"]) != digest:
        raise Problem(
            422,
            "Unprocessable Content",
            "this Idempotency-Key was used with a different request" + (" body" if what == "body" else ""),
            type_="idempotency-mismatch",
            errors=[{"field": IDEMPOTENCY_HEADER, "message": f"reused with a different {what}"}],
        )
    return dict(previous["response_body"])


async def create_once(
    conn: Connection,
    deps: AppDeps,
    p: Principal,
    key: str | None,
    digest: bytes,
    create: CreateFn,
    *,
    notice_of: Callable[[dict[str, Any]], str | None] = lambda data: str(data["id"]),
) -> tuple[dict[str, Any], bool]:
    """Run ``create`` (which stores a notice and answers with its ``id``) once per Idempotency-Key,
    inside the caller's transaction: (answer, replayed). Without a key, ``create`` just runs.
    ``notice_of``: the notice an answer created, when its ``id`` is another row's (a quiz sent
    with a notice, or none: the key then lives its TTL, not its notice's life).

    The advisory lock is held to the end of the transaction: a concurrent request with the same key
    cannot take it and gets 409 instead of a second notice. A key reused with another body: 422."""
    if key is None:
        return await create(), False
    if not await conn.fetchval(notices.IDEMPOTENCY_LOCK, p.owner, key):
        raise Problem(
            409,
            "Conflict",
            "a request with this Idempotency-Key is still being processed",
            type_="idempotency-in-flight",
        )
    replay = await previous_answer(conn, p.owner, key, digest, float(deps.settings.idempotency_ttl_seconds))
    if replay is not None:
        return replay, True
    data = await create()
    await conn.execute(notices.IDEMPOTENCY_PUT, p.owner, key, digest, notice_of(data), 202, data)
    return data, False


async def load_visible_notice(
    conn: Connection, p: Principal, notice_id: str, *, own: bool = False
) -> NoticeView:
    """The notice as this caller may see it (db/visibility.py has the rule), else 404. ``own``:
    only a notice created inside the caller's subtree (changing it, e.g. recall)."""
    view = await visible_notice(conn, notice_id_for(p, notice_id), p.scope_root)
    if view is None or (own and not view.owner):
        raise not_found("notice")
    return view


def notice_id_for(p: Principal, notice_id: str) -> str:
    """The notice id of a path as this caller may ask for one, else 404: a UUID, and a caller of
    the notice API (member keys have their inbox instead)."""
    nid = parse_uuid(notice_id)
    if nid is None or (not p.is_admin and p.scope_root is None):
        raise not_found("notice")
    return nid


class NoticeQuery(Strict):
    unit: Id | None = Field(
        default=None,
        description="counts of this unit's subtree (inside the caller's units); default: the caller's",
    )


@routes.route(
    "GET",
    "/v1/notices/{notice_id}",
    summary="A notice with its live counts (a unit-bound key: of its subtree, or ?unit=)",
    tag="notices",
    query=NoticeQuery,
    response=NoticeOut,
)
async def get_notice(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(NoticeQuery)
    deps = request.app[DEPS]
    if q.unit is None:  # the status poll: the notice and its counts in one round trip, planned once
        nid = notice_id_for(p, request.match_info["notice_id"])
        async with deps.status_pool.acquire() as conn:
            found = await visible_notice_with_counts(conn, nid, p.scope_root)
        if found is None:
            raise not_found("notice")
        view, counts = found
    else:
        async with deps.pool.acquire() as conn:
            view = await load_visible_notice(conn, p, request.match_info["notice_id"])
            await require_unit(conn, p, q.unit)
            counts = await notices.counts(conn, view.id, q.unit)
    return notice_answer(view.row, counts)


def _floats_written_alike(value: Any) -> bool:
    """Whether json.dumps and pydantic write every float in ``value`` (a policy snapshot's
    durations) alike: they differ only below 1e-4 (``1.5e-05`` and ``0.000015``)."""
    if isinstance(value, float):
        return value == 0 or abs(value) >= 1e-4
    if isinstance(value, dict):
        return all(_floats_written_alike(v) for v in value.values())
    if isinstance(value, list):
        return all(_floats_written_alike(v) for v in value)
    return True


_STATES = frozenset(get_args(NoticeState))
_AUDIENCE_KEYS = frozenset(Audience.model_fields)


def notice_answer(row: Record, counts: dict[str, int]) -> web.Response:
    """A notice row and its counts answered as its NoticeOut, written without building the model
    (the status poll's answer: validating and dumping it were a fifth of the poll's API CPU): the
    same fields in the same order, times as pydantic writes them. A row the model would not take
    as it is (an audience of another shape, a state it does not know) goes through the model."""
    audience = row["audience"]
    plain = (
        isinstance(audience, dict)
        and audience.keys() <= _AUDIENCE_KEYS
        and row["state"] in _STATES
        and isinstance(row["escalation"], dict | None)
    )
    if not (plain and _floats_written_alike(row["escalation"])):
        return json_response(NoticeOut.model_validate(notices.as_dict(row, counts)).model_dump(mode="json"))
    out = {
        "id": str(row["id"]),
        "kind": row["kind"],
        "title": row["title"],
        "body": row["body"],
        "audience": {"members": audience.get("members", []), "units": audience.get("units", [])},
        "channels": list(row["channels"]),
        "optional_channels": list(row["optional_channels"]),
        "fallback": row["fallback"],
        "state": row["state"],
        "send_at": row["send_at"],
        "expires_at": row["expires_at"],
        "recalled_at": row["recalled_at"],
        "escalation": row["escalation"],
        "created_at": row["created_at"],
        "fanned_out_at": row["fanned_out_at"],
        "counts": {k: counts[k] for k in Counts.model_fields},
    }
    return web.Response(body=pydantic_core.to_json(out), content_type="application/json")


def _recipient(row: Record, deliveries: list[Record], visible_units: set[str] | None) -> dict[str, Any]:
    return {
        "member_id": row["member_id"],
        "name": row["name"],
        "units": [u for u in row["units"] if visible_units is None or u in visible_units],
        "status": "read" if row["read_at"] else row["dstatus"],
        "delivery_status": row["dstatus"],
        "delivered_at": row["delivered_at"],
        "read_at": row["read_at"],
        "deliveries": [
            {
                "channel": d["channel"],
                "step": d["step"],
                "state": delivery_state(d["state"], d["wait_reason"]),
                "attempts": d["attempts"],
                "error": d["error"],
                "updated_at": d["updated_at"],
                "next_attempt_at": d["next_attempt_at"] if d["state"] == "queued" else None,
            }
            for d in deliveries
        ],
    }


@routes.route(
    "GET",
    "/v1/notices/{notice_id}/recipients",
    summary="Who has (not) received and read it",
    tag="notices",
    query=RecipientQuery,
    response=RecipientPage,
    responses={422: "cursor is not a next_cursor this API returned"},
)
async def list_recipients(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(RecipientQuery)
    after = decode_cursor(q.cursor)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        view = await load_visible_notice(conn, p, request.match_info["notice_id"])
        if q.unit is not None:
            await require_unit(conn, p, q.unit)
        notice_id = view.id
        rows = await recipients.page(
            conn,
            notice_id,
            after=after,
            status=q.status or "",
            limit=q.limit + 1,
            unit_id=q.unit or view.slice_root,
        )
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        by_member: dict[str, list[Record]] = {r["member_id"]: [] for r in rows}
        for d in await recipients.deliveries_for(conn, notice_id, list(by_member)):
            by_member[d["member_id"]].append(d)
        root = p.scope_root  # like GET /v1/members/{id}: units outside the caller's reach stay hidden
        listed = sorted({u for r in rows for u in r["units"]})
        visible = None if root is None else await units.all_within(conn, listed, root)
    items = [
        RecipientOut.model_validate(_recipient(r, by_member[r["member_id"]], visible)).model_dump(mode="json")
        for r in rows
    ]
    return json_response(
        {"items": items, "next_cursor": encode_cursor(rows[-1]["member_id"]) if more else None}
    )
