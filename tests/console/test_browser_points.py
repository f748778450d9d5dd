"""A member opens today's lesson on /m/ in Chromium, stays on it, and sees its study point appear:
the page's read beacon comes too early to earn (60 s of dwell are required), its view reports
carry on while it stays visible, and once the server's clock says 60 s have passed the point is
awarded and shown; the inbox then shows it for today and this month. Neither clock is waited
for: the engine clock is moved (advance_clock) and so is the page's (Playwright's clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from playwright.async_api import expect

from tests.conftest import advance_clock, frozen_clock, wait_until
from tests.console.conftest import Live

WAIT_MS = 20_000


async def test_a_member_stays_on_a_lesson_and_sees_the_point_appear(
    live: Live, browser: Any, db: asyncpg.Connection, output: Path
) -> None:
    await live.api("PUT", "/v1/units/c", {"name": "市委", "parent_id": None})
    await live.api("PUT", "/v1/units/b0", {"name": "第一支部", "parent_id": "c"})
    await live.api("PUT", "/v1/members/m00", {"name": "民警甲", "units": ["b0"]})
    rule = {"unit_id": "c", "code": "lesson_read", "points": 1, "daily_cap": 6, "min_dwell_seconds": 60}
    await live.api("POST", "/v1/point-rules", rule, status=201)
    body = {"kind": "lesson", "title": "今日一课", "body": "学习党章", "audience": {"members": ["m00"]}}
    nid = (await live.api("POST", "/v1/notices", body, status=202))["id"]

    async def fanned_out() -> bool:
        return bool(await db.fetchval("SELECT state = 'active' FROM notices WHERE id = $1", nid))

    await wait_until(fanned_out, within=20)

    async def one_view() -> bool:
        return bool(await db.fetchval("SELECT count(*) = 1 FROM notice_views WHERE notice_id = $1", nid))

    context = await browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 800})
    try:
        page = await context.new_page()
        await page.goto(await live.link("m00"))
        await page.click("#continue")
        await page.wait_for_url("**/m/")
        await expect(page.locator("#points-today")).to_have_text("0")
        async with frozen_clock(db):
            await page.clock.install()
            await page.goto(f"{live.url}/m/notices/{nid}")
            badge = page.locator("#lesson-points")
            await expect(badge).to_have_attribute("data-earned", "")
            await wait_until(one_view, within=20)  # the view opens as the page is shown
            # The read beacon (1.5 s after showing) is recorded, but earns nothing yet.
            await page.clock.run_for(2000)
            await expect(page.locator("#member-notice")).to_have_attribute(
                "data-read", "yes", timeout=WAIT_MS
            )
            assert await db.fetchval("SELECT count(*) FROM point_awards") == 0
            await expect(badge).to_have_attribute("data-earned", "")
            # A minute later by both clocks: the next view report reaches the dwell.
            await advance_clock(db, 61)
            await page.clock.run_for(61_000)
            await expect(badge).to_have_attribute("data-earned", "1", timeout=WAIT_MS)
            await expect(badge).to_have_class("ok")
            assert "1" in (await badge.text_content() or "")
            await page.screenshot(path=str(output / "member-lesson-point.png"), full_page=True)
            row = await db.fetchrow("SELECT member_id, source, points FROM point_awards")
            assert row is not None and tuple(row) == ("m00", f"notice:{nid}", 1)
            await page.goto(f"{live.url}/m/")
            await expect(page.locator("#points-today")).to_have_text("1")
            await expect(page.locator("#points-month")).to_have_text("1")
    finally:
        await context.close()
