"""Units and Reports: the caller's unit tree with read rates over 7 and 30 days (from the unit
reports endpoint), secretaries, today's duty roster and quiet hours; and read rate and time to
read per branch over weeks, as server-rendered SVG charts and a table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from notifier.api import unit_reports as reports_api
from notifier.api.keys import DEPS
from notifier.api.principal import Principal
from notifier.console import charts
from notifier.console.apicall import call
from notifier.console.pages import TZ, page, render
from notifier.console.session import Session
from notifier.db import console, duty, units
from notifier.db.quiet import DEFAULT_TIMEZONE

TREE_LIMIT = 300
REPORT_PARENTS = 30  # units whose children's rates are fetched (one report each)
WEEKS = 12


def _today(request: web.Request) -> dt.date:
    return dt.datetime.now(ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE))).date()


async def _report(
    request: web.Request, p: Principal, unit_id: str, start: dt.date, end: dt.date, bucket: str
) -> Any:
    query = reports_api.ReportQuery.model_validate({"from": start, "to": end, "bucket": bucket})
    return await call(request, p, reports_api.unit_report, query=query, match={"unit_id": unit_id})


def tree_order(rows: list[dict[str, Any]], root: str | None) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first order with depths, starting at the units whose parent is not listed."""
    ids = {r["id"] for r in rows}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for r in rows:
        parent = r["parent_id"] if r["parent_id"] in ids and r["id"] != root else None
        children.setdefault(parent, []).append(r)
    out: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, r) for r in reversed(children.get(None, []))]
    while stack:
        depth, row = stack.pop()
        out.append((depth, row))
        stack.extend((depth + 1, c) for c in reversed(children.get(row["id"], [])))
    return out


@page()
async def show_units(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    deps = request.app[DEPS]
    tz = ZoneInfo(request.get(TZ, DEFAULT_TIMEZONE))
    today = _today(request)
    start = dt.datetime.combine(today, dt.time(0), tz)
    async with deps.pool.acquire() as conn:
        rows = [units.as_dict(r) for r in await units.list_units(conn, p.scope_root, None, TREE_LIMIT)]
        ids = [r["id"] for r in rows]
        names = await console.member_names(conn, sorted({s for r in rows for s in r["secretaries"]}))
        shifts = {u: await duty.list_shifts(conn, u, start, start + dt.timedelta(days=1)) for u in ids}
    tree = tree_order(rows, p.scope_root)
    parents = [r["id"] for _, r in tree if any(c["parent_id"] == r["id"] for c in rows)][:REPORT_PARENTS]
    if not parents and tree:
        parents = [tree[0][1]["id"]]
    rates: dict[str, dict[int, Any]] = {}
    for days in (7, 30):
        for unit_id in parents:
            report = await _report(
                request, p, unit_id, today - dt.timedelta(days=days - 1), today + dt.timedelta(days=1), "day"
            )
            for u in report["units"]:
                rates.setdefault(u["unit_id"], {})[days] = u["read_rate"]
    return render(request, "units.html", {"tree": tree, "rates": rates, "names": names, "shifts": shifts})


@page()
async def show_reports(request: web.Request, session: Session) -> web.Response:
    p = session.principal
    async with request.app[DEPS].pool.acquire() as conn:
        rows = await units.list_units(conn, p.scope_root, None, TREE_LIMIT)
    choices = [{"id": r["id"], "name": r["name"]} for r in rows]
    unit_id = request.query.get("unit") or p.scope_root or (choices[0]["id"] if choices else None)
    if unit_id is None:
        return render(request, "reports.html", {"choices": [], "report": None, "unit_id": None})
    today = _today(request)
    monday = today - dt.timedelta(days=today.weekday())
    report = await _report(
        request, p, unit_id, monday - dt.timedelta(weeks=WEEKS - 1), monday + dt.timedelta(weeks=1), "week"
    )
    series = [{"name": u["name"], "points": [pt["read_rate"] for pt in u["series"]]} for u in report["units"]]
    starts = [pt["start"] for pt in report["units"][0]["series"]] if report["units"] else []
    chart = charts.lines(series, [s[5:] for s in starts])
    fast = charts.hbars([(u["name"], u["read_within_30m"]) for u in report["units"]])
    context = {"choices": choices, "report": report, "unit_id": unit_id, "chart": chart, "fast": fast}
    return render(request, "reports.html", context)
