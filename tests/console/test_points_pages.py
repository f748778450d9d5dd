"""Study points pages over HTTP (no browser): 学习积分 per branch for a secretary (their subtree
only), the suggested rules shown but not applied, "my points" on the member's inbox, a lesson's
point on its page, and the page's view reports (CSRF-checked, the member's own)."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.console.i18n import LANGS
from notifier.console.pages import CSP
from notifier.db import points
from tests.conftest import advance_clock, frozen_clock
from tests.console.test_console import fanned_out, org, sign_in
from tests.helpers import post

RULE = {"unit_id": "c", "code": "lesson_read", "points": 1, "daily_cap": 6, "min_dwell_seconds": 60}


def _csrf(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match
    return match.group(1)


async def test_points_pages_render_translated_and_scoped(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await org(client)
    assert await sign_in(client, "s0") == "/console/"
    html = await (await client.get("/console/points")).text()
    assert 'id="points-no-rules"' in html and "lesson_read" in html  # suggested, not applied
    assert await db.fetchval("SELECT count(*) FROM point_rules") == 0
    await post(client, "/v1/point-rules", {**RULE, "min_dwell_seconds": 0})
    assert await points.award(db, "m0", "lesson_read", "notice:a") == 1
    assert await points.award(db, "x1", "lesson_read", "notice:a") == 1
    for lang in LANGS:
        client.session.cookie_jar.update_cookies({"lang": lang})
        resp = await client.get("/console/points")
        html = await resp.text()
        assert resp.status == 200 and resp.headers["Content-Security-Policy"] == CSP
        assert "⟦" not in html, re.findall("⟦[^⟧]*⟧", html)
        assert 'id="points-rules"' in html and "points-no-rules" not in html
    # s0's session is b0's: its own totals (m0 1 of 3 members), never the sibling branch b1.
    assert re.search(r'<tr class="total" data-unit="b0"><th>[^<]+</th><th>1</th><th>3</th><th>1</th>', html)
    assert 'data-unit="b1"' not in html
    assert (await client.get("/console/points?unit=b1")).status == 404
    client.session.cookie_jar.clear()
    # "My points" on the member's inbox (m0 signs in to the inbox).
    assert await sign_in(client, "m0") in ("/m/", "/console/")
    inbox = await (await client.get("/m/")).text()
    assert re.search(r'id="points-today">1<', inbox) and re.search(r'id="points-month">1<', inbox)


async def test_a_lesson_page_reports_its_view_and_shows_the_point(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await org(client)
    await post(client, "/v1/point-rules", RULE)
    body = {"kind": "lesson", "title": "今日一课", "body": "学习", "audience": {"units": ["b0"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    await fanned_out(db, nid)
    await sign_in(client, "m0")
    async with frozen_clock(db):
        html = await (await client.get(f"/m/notices/{nid}")).text()
        assert 'id="lesson-points"' in html and 'data-dwell="60"' in html and 'data-earned=""' in html
        csrf = _csrf(html)
        # Without the CSRF token nothing is opened.
        assert (await client.post(f"/m/notices/{nid}/views", json={})).status == 403
        assert await db.fetchval("SELECT count(*) FROM notice_views") == 0
        opened = await client.post(f"/m/notices/{nid}/views", json={}, headers={"X-CSRF-Token": csrf})
        assert opened.status == 201
        view = (await opened.json())["id"]
        read = await client.post(f"/m/notices/{nid}/read", headers={"X-CSRF-Token": csrf})
        assert read.status == 200  # the read beacon, at once: too short to earn
        await advance_clock(db, 61)
        resp = await client.post(
            f"/m/notices/{nid}/views/{view}", json={"visible_seconds": 61}, headers={"X-CSRF-Token": csrf}
        )
        assert resp.status == 200 and (await resp.json())["points"] == 1
        resp = await client.post(
            f"/m/notices/{nid}/views/{view}", json={"visible_seconds": "x"}, headers={"X-CSRF-Token": csrf}
        )
        assert resp.status == 422
    html = await (await client.get(f"/m/notices/{nid}")).text()
    assert 'data-earned="1"' in html
    # Another member cannot report on m0's view.
    await sign_in(client, "m1")
    html = await (await client.get(f"/m/notices/{nid}")).text()
    resp = await client.post(f"/m/notices/{nid}/views/{view}", json={}, headers={"X-CSRF-Token": _csrf(html)})
    assert resp.status == 404
    assert await db.fetchval("SELECT count(*) FROM point_awards") == 1
