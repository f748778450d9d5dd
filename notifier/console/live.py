"""The notice page's live counters: Server-Sent Events for the session's slice.

Frames are the stream contract's (``id: <version>`` / ``event: counts`` / ``data: {notice_id,
unit, counts, units}`` with ``counts`` and ``units`` exactly what GET /v1/notices/{id} and
/units return to this caller), sent at once on connect and whenever they change, at most
``MAX_PER_SECOND`` a second, with a heartbeat comment. This reads them through the API's own
handlers, polling the counters while someone watches.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from notifier.api import notices as notices_api
from notifier.api import unit_counts as unit_counts_api
from notifier.api.principal import Principal
from notifier.api.problems import Problem
from notifier.console.apicall import call

MAX_PER_SECOND = 4
HEARTBEAT_SECONDS = 15.0


async def snapshot(request: web.Request, p: Principal, parent: str | None) -> dict[str, Any]:
    notice = await call(request, p, notices_api.get_notice, query=notices_api.NoticeQuery())
    units: list[dict[str, Any]] = []
    unit = p.scope_root or parent
    if unit is not None:
        rollup = await call(
            request, p, unit_counts_api.notice_units, query=unit_counts_api.RollupQuery(parent=parent)
        )
        units, unit = rollup["units"], rollup["parent"]
    return {"notice_id": notice["id"], "unit": unit, "counts": notice["counts"], "units": units}


async def stream_counts(request: web.Request, p: Principal, parent: str | None) -> web.StreamResponse:
    first = await snapshot(request, p, parent)  # a 404 is still a page, before the stream starts
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    version, last, quiet = 0, None, 0.0
    current: dict[str, Any] | None = first
    try:
        while True:
            if current is not None and current != last:
                version += 1
                frame = f"id: {version}\nevent: counts\ndata: {json.dumps(current, ensure_ascii=False)}\n\n"
                await response.write(frame.encode())
                last, quiet = current, 0.0
            elif quiet >= HEARTBEAT_SECONDS:
                await response.write(b": heartbeat\n\n")
                quiet = 0.0
            await asyncio.sleep(1 / MAX_PER_SECOND)
            quiet += 1 / MAX_PER_SECOND
            current = await snapshot(request, p, parent)
    except (ConnectionResetError, Problem):  # the browser left, or the notice is gone from view
        pass
    return response
