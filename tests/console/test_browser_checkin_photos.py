"""A photo taken at check-in, in a real browser: on a photo_required meeting the member checks in
on /m/ (Playwright's geolocation at the venue), is told the check-in counts once a photo is
attached, picks one in the file input (``capture``: the camera on a phone), and the check-in
becomes attendance and the read receipt; the secretary's check-in list links the photo."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from playwright.async_api import expect

from notifier.domain import geo
from tests.console.conftest import Live
from tests.console.test_browser import build_branch, sign_in
from tests.console.test_browser_meetings import VENUE, WAIT_MS, member_page

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(100))


async def test_a_member_attaches_the_required_photo_after_checking_in(
    live: Live, browser: Any, db: asyncpg.Connection
) -> None:
    await build_branch(live)
    start = datetime.now(UTC) + timedelta(minutes=5)
    body = {
        "type": "group_meeting",
        "title": "党小组会",
        "unit_id": "g0",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=1)).isoformat(),
        "venue": {"lat": VENUE[0], "lng": VENUE[1], "datum": "wgs84"},
        "photo_required": True,
    }
    meeting = await live.api("POST", "/v1/meetings", body, status=201)
    nid = meeting["id"]
    for _ in range(200):  # the worker fans it out
        if await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", nid):
            break
        await asyncio.sleep(0.05)
    phone, mpage = await member_page(browser, live, "m00", geo.destination(*VENUE, 30.0, 40.0))
    secretary = await browser.new_context(locale="zh-CN")
    try:
        await mpage.goto(f"{live.url}/m/meetings/{nid}")
        assert await mpage.locator("#checkin-photo").is_hidden()
        await mpage.click("#checkin")
        await expect(mpage.locator("#checkin-verdict")).to_have_attribute(
            "data-verdict", "ok", timeout=WAIT_MS
        )
        await expect(mpage.locator("#photo-pending")).to_be_visible()
        file = mpage.locator("#photo-file")
        assert await file.get_attribute("capture") == "environment"
        assert await file.get_attribute("accept") == "image/*"
        read = "SELECT read_via FROM recipients WHERE notice_id = $1 AND member_id = 'm00'"
        assert await db.fetchval(read, nid) is None  # pending its photo
        await file.set_input_files({"name": "photo.png", "mimeType": "image/png", "buffer": PNG})
        await expect(mpage.locator("#photo-status")).to_have_attribute("data-counted", "yes", timeout=WAIT_MS)
        assert await mpage.locator("#photo-pending").is_hidden()
        assert await db.fetchval(read, nid) == "checkin"
        # Reloaded: checked in, photo attached, nothing more to ask.
        await mpage.reload()
        await expect(mpage.locator("#photo-done")).to_be_visible()
        assert await mpage.locator("#checkin-photo").is_hidden()

        page = await sign_in(secretary, live, "s0")
        await page.goto(f"{live.url}/console/meetings/{nid}")
        link = page.locator('tr[data-member="m00"] a.checkin-photo')
        await expect(link).to_have_count(1, timeout=WAIT_MS)
        href = await link.get_attribute("href")
        shown = await page.request.get(live.url + str(href))
        assert shown.status == 200 and await shown.body() == PNG
    finally:
        await secretary.close()
        await phone.close()
