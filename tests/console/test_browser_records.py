"""The meeting record in Chromium, with Playwright's geolocation override: the secretary writes the
minutes and uploads a photo at the venue (the browser's position rides along), is refused 2 km
away, records a leave; the branch reads its quarter's supervision view."""

from __future__ import annotations

import struct
import zlib
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from playwright.async_api import expect

from notifier.domain import geo
from tests.conftest import wait_until
from tests.console.conftest import Live
from tests.console.test_browser import WAIT_MS, build_branch, sign_in, untranslated

VENUE = (39.9087, 116.3975)


def png() -> bytes:
    """A real 1x1 PNG (the browser decodes what the page shows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


async def meeting_for(live: Live, db: asyncpg.Connection, unit: str) -> str:
    now: datetime = await db.fetchval("SELECT notifier_now()")
    body = {
        "type": "group_meeting",
        "title": "党小组会",
        "unit_id": unit,
        "starts_at": (now - timedelta(minutes=10)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        "venue": {"lat": VENUE[0], "lng": VENUE[1], "datum": "wgs84", "name": "党员活动室"},
    }
    meeting = await live.api("POST", "/v1/meetings", body, status=201)

    async def fanned_out() -> bool:
        return bool((await live.api("GET", f"/v1/notices/{meeting['id']}"))["state"] == "active")

    await wait_until(fanned_out, within=20)
    return str(meeting["id"])


def position(metres: float) -> dict[str, float]:
    lat, lng = geo.destination(*VENUE, 90, metres)
    return {"latitude": lat, "longitude": lng, "accuracy": 15}


async def test_a_secretary_records_a_meeting_at_the_venue_and_is_refused_away_from_it(
    live: Live, browser: Any, db: asyncpg.Connection
) -> None:
    await build_branch(live)
    meeting = await meeting_for(live, db, "g0")
    await live.api("PUT", "/v1/units/g0/type", {"unit_type": "group"})
    group = {"unit_type": "group", "meeting_type": "group_meeting", "every": "month", "times": 1}
    await live.api("PUT", "/v1/meeting-requirements", {"requirements": [group]})
    context = await browser.new_context(
        locale="zh-CN",
        geolocation=position(60),
        permissions=["geolocation"],
        viewport={"width": 1200, "height": 900},
    )
    try:
        page = await sign_in(context, live, "s0")  # the secretary of b0, above g0
        record_url = f"{live.url}/console/meetings/{meeting}/record"
        await page.goto(record_url)
        await expect(page.locator("#geo-status")).to_have_attribute("data-ready", "1", timeout=WAIT_MS)
        await page.fill("#minutes", "学习了党章第一章。")
        await page.click("#save-minutes")
        await page.wait_for_url("**/record?done=minutes")
        await expect(page.locator("#minutes")).to_have_value("学习了党章第一章。")
        # A PNG named .jpg: the content decides, and the page shows it.
        await expect(page.locator("#geo-status")).to_have_attribute("data-ready", "1", timeout=WAIT_MS)
        await page.set_input_files(
            "#photo-file", files=[{"name": "site.jpg", "mimeType": "image/jpeg", "buffer": png()}]
        )
        await page.click("#upload-photos")
        await page.wait_for_url("**/record?done=photo")
        img = page.locator(".gallery img")
        await expect(img).to_have_count(1)
        await page.wait_for_function(
            "() => { const i = document.querySelector('.gallery img');"
            " return i.complete && i.naturalWidth === 1; }",
            timeout=WAIT_MS,
        )
        assert not untranslated(await page.content())

        # Two kilometres away: refused with the reason, nothing stored.
        await context.set_geolocation(position(2000))
        await page.goto(record_url)
        await expect(page.locator("#geo-status")).to_have_attribute("data-ready", "1", timeout=WAIT_MS)
        await page.set_input_files(
            "#photo-file", files=[{"name": "b.png", "mimeType": "image/png", "buffer": png() + b"x"}]
        )
        await page.click("#upload-photos")
        status = page.locator("#photo-status")
        await expect(status).to_have_attribute("data-refused", "1", timeout=WAIT_MS)
        await expect(status).to_contain_text("300 m")
        assert await db.fetchval("SELECT count(*) FROM meeting_photos") == 1

        # A leave for one absent member; the rate leaves them out.
        row = page.locator('tr[data-member="m00"]')
        await row.locator("input[name=reason]").fill("出差")
        await row.locator("button").click()
        await page.wait_for_url("**/record?done=absence")
        await expect(page.locator('tr[data-member="m00"] .status')).to_have_text("请假")
        await expect(page.locator("#attendance-summary")).to_contain_text("请假 1 人")

        await page.goto(f"{live.url}/console/supervision")
        # Not ended yet, so not held; g0 was created today: this month and the rest of the quarter owe.
        today = (await db.fetchval("SELECT notifier_now()")).astimezone(ZoneInfo("Asia/Shanghai"))
        owed = 3 - (today.month - 1) % 3
        await expect(page.locator('#supervision tr[data-unit="g0"] .held')).to_have_text(f"0/{owed}")
        await expect(page.locator('#supervision tr[data-unit="b0"]')).to_be_visible()
        assert not untranslated(await page.content())
        # The meeting's console page leads to its record.
        await page.goto(f"{live.url}/console/meetings/{meeting}")
        await page.click("#record-link")
        await page.wait_for_url(f"**/console/meetings/{meeting}/record")
    finally:
        await context.close()
    # A member asks for leave on the meeting's page.
    member = await browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 800})
    try:
        page = await member.new_page()
        await page.goto(await live.link("m01"))
        await page.click("#continue")
        await page.wait_for_url("**/m/")
        await page.goto(f"{live.url}/m/meetings/{meeting}")
        await page.fill("#leave-form input[name=reason]", "值班")
        await page.click("#leave-form button")
        await expect(page.locator("#leave-done")).to_be_visible()
        assert not untranslated(await page.content())
        leave = await db.fetchrow("SELECT reason, by_member FROM meeting_absences WHERE member_id = 'm01'")
        assert leave is not None and (leave["reason"], leave["by_member"]) == ("值班", True)
    finally:
        await member.close()
