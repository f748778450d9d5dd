"""Meetings in a real browser against a real app: a branch secretary calls a 党小组会 from the
console form (the venue by coordinates, with their datum); members check in on /m/ with the
browser's geolocation (Playwright's override: a phone at the venue, another 800 m away) and see
the verdict; the secretary's page shows both attempts -- accepted and refused, with the reason --
without a reload; the sibling branch sees none of it; every page carries the strict CSP and no
untranslated catalogue key."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from playwright.async_api import expect

from notifier.console.pages import CSP
from notifier.domain import geo
from tests.console.conftest import Live
from tests.console.test_browser import build_branch, sign_in, untranslated

WAIT_MS = 20_000
MEETING_URL = re.compile(r".*/console/meetings/[0-9a-f-]{36}$")
VENUE = (39.9087, 116.3975)  # WGS-84, as a phone's GPS reports it


async def member_page(browser: Any, live: Live, member_id: str, where: tuple[float, float]) -> Any:
    """A phone signed in as ``member_id`` whose geolocation reports ``where`` (WGS-84, 15 m)."""
    context = await browser.new_context(
        locale="zh-CN",
        viewport={"width": 390, "height": 800},
        geolocation={"latitude": where[0], "longitude": where[1], "accuracy": 15},
    )
    await context.grant_permissions(["geolocation"], origin=live.url)
    page = await context.new_page()
    await page.goto(await live.link(member_id))
    await page.click("#continue")
    await page.wait_for_url("**/m/")
    return context, page


async def test_a_secretary_calls_a_meeting_and_watches_members_check_in(
    live: Live, browser: Any, db: asyncpg.Connection, output: Path
) -> None:
    await build_branch(live)
    violations: list[str] = []
    context = await browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 900})
    context.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    phones: list[Any] = []
    try:
        page = await sign_in(context, live, "s0")
        response = await page.goto(live.url + "/console/meetings/new")
        assert response.status == 200 and response.headers["content-security-policy"] == CSP
        start = (datetime.now(UTC) + timedelta(minutes=10)).astimezone(ZoneInfo("Asia/Shanghai"))
        await page.select_option("#type", "group_meeting")
        await page.fill("#title", "第一小组党小组会")
        await page.select_option("#unit_id", "g0")
        await page.fill("#starts_at", start.strftime("%Y-%m-%dT%H:%M"))
        await page.fill("#ends_at", (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
        await page.fill("#venue_name", "党员活动室")
        await page.fill("#lat", str(VENUE[0]))
        await page.fill("#lng", str(VENUE[1]))
        await page.select_option("#datum", "wgs84")
        assert not untranslated(await page.content())
        await page.screenshot(path=str(output / "console-meeting-new.png"), full_page=True)
        await page.dblclick("#create-meeting")  # a double click calls it once
        await page.wait_for_url(MEETING_URL)
        meeting_id = page.url.rsplit("/", 1)[1]
        assert await db.fetchval("SELECT count(*) FROM meetings") == 1
        row = await db.fetchrow("SELECT venue_datum, radius_m, unit_id FROM meetings")
        assert row is not None
        assert (row["venue_datum"], row["radius_m"], row["unit_id"]) == ("wgs84", 300, "g0")
        await expect(page.locator("#no-checkins")).to_be_visible()
        await expect(page.locator("[data-count=recipients]")).to_have_text("3", timeout=WAIT_MS)
        await page.evaluate("window.__noReload = 1")

        # m00 is at the venue (a few metres off), m01 is 800 m away.
        inside = geo.destination(*VENUE, 30.0, 40.0)
        outside = geo.destination(*VENUE, 120.0, 800.0)
        for member_id, where, verdict in (("m00", inside, "ok"), ("m01", outside, "outside")):
            phone, mpage = await member_page(browser, live, member_id, where)
            phones.append(phone)
            await mpage.goto(f"{live.url}/m/notices/{meeting_id}")
            await mpage.click("#go-checkin")
            await mpage.wait_for_url(f"**/m/meetings/{meeting_id}")
            assert not untranslated(await mpage.content())
            await mpage.click("#checkin")
            await expect(mpage.locator("#checkin-verdict")).to_have_attribute(
                "data-verdict", verdict, timeout=WAIT_MS
            )
            if verdict == "ok":
                await expect(mpage.locator("#checkin-verdict")).to_have_text("签到成功")
                assert await mpage.locator("#checkin").is_hidden()
            else:
                await expect(mpage.locator("#checkin-verdict")).to_have_text("不在签到范围内")
                assert "800 米" in await mpage.inner_text("#checkin-reason")
                assert await mpage.locator("#checkin").is_enabled()  # a retry is allowed
            await mpage.screenshot(path=str(output / f"member-checkin-{verdict}.png"), full_page=True)

        # The attempts were judged on the server with the browser's numbers.
        rows = await db.fetch(
            "SELECT member_id, verdict, datum, distance_m FROM meeting_checkins ORDER BY id"
        )
        assert [(r["member_id"], r["verdict"], r["datum"]) for r in rows] == [
            ("m00", "ok", "wgs84"),
            ("m01", "outside", "wgs84"),
        ]
        assert abs(rows[0]["distance_m"] - 40.0) < 1 and abs(rows[1]["distance_m"] - 800.0) < 1
        assert (
            await db.fetchval(
                "SELECT read_via FROM recipients WHERE notice_id = $1 AND member_id = 'm00'", meeting_id
            )
            == "checkin"
        )

        # The secretary's page shows both, live: accepted and refused with the reason.
        table = page.locator("table.checkins tbody tr")
        await expect(table).to_have_count(2, timeout=WAIT_MS)
        await expect(page.locator('tr[data-member="m00"]')).to_have_attribute("data-verdict", "ok")
        refused = page.locator('tr[data-member="m01"]')
        await expect(refused).to_contain_text("不在签到范围内")
        await expect(refused).to_contain_text("800 米（精度 15 米，半径 300 米）")
        await expect(page.locator("[data-count=read]")).to_have_text("1", timeout=WAIT_MS)
        assert await page.evaluate("window.__noReload") == 1
        assert not untranslated(await page.content())
        await page.screenshot(path=str(output / "console-meeting.png"), full_page=True)
        response = await page.goto(live.url + "/console/meetings")
        assert response.status == 200 and await page.locator(f'li[data-meeting="{meeting_id}"]').count() == 1

        # The sibling branch's secretary and members see none of it.
        other = await browser.new_context(locale="zh-CN")
        try:
            sibling = await sign_in(other, live, "s1")
            await sibling.goto(live.url + "/console/meetings")
            assert await sibling.locator("li[data-meeting]").count() == 0
            for path in (f"/console/meetings/{meeting_id}", f"/console/meetings/{meeting_id}/checkins"):
                assert (await sibling.goto(live.url + path)).status == 404
        finally:
            await other.close()
        phone, stranger = await member_page(browser, live, "x1", inside)
        phones.append(phone)
        assert (await stranger.goto(f"{live.url}/m/meetings/{meeting_id}")).status == 404
        refused_post = await stranger.request.post(
            f"{live.url}/m/meetings/{meeting_id}/checkins",
            data={"lat": inside[0], "lng": inside[1], "datum": "wgs84", "accuracy_m": 5},
        )
        assert refused_post.status == 403  # no CSRF token: refused before anything runs
        assert await db.fetchval("SELECT count(*) FROM meeting_checkins") == 2
        assert violations == []
    finally:
        for phone in phones:
            await phone.close()
        await context.close()


async def test_a_member_denied_location_is_told_so(live: Live, browser: Any, db: asyncpg.Connection) -> None:
    await build_branch(live)
    start = datetime.now(UTC) + timedelta(minutes=5)
    body = {
        "type": "party_lecture",
        "title": "党课",
        "unit_id": "b0",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=1)).isoformat(),
        "venue": {"lat": VENUE[0], "lng": VENUE[1], "datum": "wgs84"},
    }
    meeting = await live.api("POST", "/v1/meetings", body, status=201)
    for _ in range(200):  # the worker fans it out
        if await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", meeting["id"]):
            break
        await asyncio.sleep(0.05)
    context = await browser.new_context(locale="en-US")  # no geolocation permission
    try:
        page = await context.new_page()
        await page.goto(await live.link("m00"))
        await page.click("#continue")
        await page.wait_for_url("**/m/")
        await page.goto(f"{live.url}/m/meetings/{meeting['id']}")
        await page.click("#checkin")
        await expect(page.locator("#checkin-verdict")).to_contain_text("permission", timeout=WAIT_MS)
        assert await db.fetchval("SELECT count(*) FROM meeting_checkins") == 0
    finally:
        await context.close()
