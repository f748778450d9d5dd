"""GET /v1/notices/{id}/stream: a notice's live counts over Server-Sent Events.

The caller sees what GET /v1/notices/{id}?unit= and GET /v1/notices/{id}/units?parent= show it,
pushed when it changes. Frames::

    id: <version>
    event: counts
    data: {"notice_id": ..., "unit": <slice unit>, "state": ..., "counts": {...}, "units": [...]}

The first event goes at once; then one per change, at most one per ``stream_min_interval_seconds``
(4 a second), with a ``: heartbeat`` comment after ``stream_heartbeat_seconds`` of quiet. After
``stream_max_seconds`` the stream ends and the client reconnects, authenticated afresh. The
version is a digest of the data: a client reconnecting with ``Last-Event-ID`` equal to the
current version is sent nothing until the next change; with any other id, the current state at
once. The counts come from the app's watcher hub (api/watch.py), shared by every stream of a slice.

``stream_notice`` is the stream itself, for any route that has already decided what the caller
may see (the console calls it from its session-authenticated pages).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from pydantic import BaseModel, Field

from notifier.api.auth import require_unit
from notifier.api.keys import DEPS, SETTINGS, principal
from notifier.api.notices import Counts, NoticeState, load_visible_notice
from notifier.api.routing import Call, Router, json_response
from notifier.api.types import Id, Strict
from notifier.api.unit_counts import UnitRow, unit_parent
from notifier.api.watch import Subscriber, WatchHub, event_data
from notifier.db import unit_counts
from notifier.db.pool import Connection
from notifier.db.visibility import NoticeView

routes = Router()

WATCHERS = web.AppKey("watchers", WatchHub)
EVENT_STREAM = "text/event-stream"
HEARTBEAT = b": heartbeat\n\n"


class StreamQuery(Strict):
    unit: Id | None = Field(
        default=None,
        description="the counts of this unit's subtree (inside the caller's units); default: the caller's",
    )


class StreamEvent(BaseModel):
    """The data of one ``counts`` event (with Accept: application/json, the current one, once)."""

    notice_id: str
    unit: str | None = Field(description="the slice: whose subtree the counts are of (null: all)")
    state: NoticeState = Field(description="the notice's state, as GET /v1/notices/{notice_id} has it")
    counts: Counts = Field(description="as GET /v1/notices/{notice_id}?unit= has them")
    units: list[UnitRow] = Field(description="as GET /v1/notices/{notice_id}/units?parent=<unit> has them")


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and EVENT_STREAM not in accept


def last_event_id(request: web.Request) -> int | None:
    value = request.headers.get("Last-Event-ID", "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 20 else None


@routes.route(
    "GET",
    "/v1/notices/{notice_id}/stream",
    summary="Live counts of a notice over Server-Sent Events (Last-Event-ID resumes; "
    "Accept: application/json for the current event once)",
    tag="notices",
    query=StreamQuery,
    response=StreamEvent,
    alternatives={
        EVENT_STREAM: {
            "type": "string",
            "description": "the default: `id: <version>`, `event: counts`, `data: <StreamEvent JSON>` "
            "frames, the first at once, then on change (at most 4 a second), a `: heartbeat` comment "
            "when quiet. Reconnecting with Last-Event-ID equal to the current version waits for the "
            "next change",
        }
    },
)
async def notice_stream(request: web.Request, call: Call) -> web.StreamResponse:
    p = principal(request)
    p.require("admin", "service", "secretary")
    q = call.query_as(StreamQuery)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        view = await load_visible_notice(conn, p, request.match_info["notice_id"])
        if q.unit is not None:
            await require_unit(conn, p, q.unit)
        if wants_json(request):
            unit, parent = await slice_of(conn, view, q.unit)
            (rows,) = await unit_counts.watched(conn, [(view.id, unit, parent)])
            return json_response(event_data(view.id, unit, rows))
    return await stream_notice(request, view, q.unit)


async def slice_of(conn: Connection, view: NoticeView, unit: str | None) -> tuple[str | None, str | None]:
    """(the slice unit, the roll-up parent): as GET /v1/notices/{id} and /units choose them; for an
    admin's notice with no creating unit, ``unit_parent``'s (as the console's page shows)."""
    slice_unit = unit or view.root
    return slice_unit, slice_unit or await unit_parent(conn, view.row)


async def stream_notice(request: web.Request, view: NoticeView, unit: str | None) -> web.StreamResponse:
    """Stream ``view``'s counts (of ``unit``'s subtree, else the caller's) until the client goes or
    the app shuts down. The caller has checked that it may see them (``unit`` included)."""
    hub = request.app[WATCHERS]
    settings = request.app[SETTINGS]
    loop = asyncio.get_running_loop()
    transport = request.transport
    sub = Subscriber(lambda: transport is None or transport.is_closing())
    seen = last_event_id(request)
    async with request.app[DEPS].pool.acquire() as conn:
        slice_unit, parent = await slice_of(conn, view, unit)
    watch = hub.subscribe(view.id, slice_unit, parent, sub)
    resp = web.StreamResponse(
        headers={"Content-Type": EVENT_STREAM, "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    try:
        await hub.load(watch)
        await resp.prepare(request)
        last_sent = -settings.stream_min_interval_seconds
        end = loop.time() + settings.stream_max_seconds
        while not hub.closed and not sub.gone() and loop.time() < end:
            if watch.data is not None and watch.version != seen:
                wait = settings.stream_min_interval_seconds - (loop.time() - last_sent)
                if wait > 0:  # at most one event per interval; then the latest
                    await asyncio.sleep(wait)
                    continue
                seen = watch.version
                assert seen is not None
                await resp.write(watch.frame)
                last_sent = loop.time()
                continue
            sub.wake.clear()
            try:
                async with asyncio.timeout(
                    min(settings.stream_heartbeat_seconds, max(0.0, end - loop.time()))
                ):
                    await sub.wake.wait()
            except TimeoutError:
                if loop.time() < end:
                    await resp.write(HEARTBEAT)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
    except ConnectionError:  # the client went away mid-write
        pass
    finally:
        hub.unsubscribe(watch, sub)
    return resp
