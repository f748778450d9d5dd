"""The study pages in Chromium: a branch secretary creates a monthly test from the console form,
members take it on /m/ (the attempt's own question order, progress saved, submitted, the score at
once) without the answer key ever being in a page's source, and the secretary reads the results
ranked per member and per branch and downloads the CSV; a sibling branch's secretary sees none
of it. Every page carries the strict CSP and no untranslated catalogue key."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from playwright.async_api import expect

from tests.console.conftest import Live
from tests.console.test_browser import WAIT_MS, build_branch, sign_in, untranslated

SECRET = "人大制度KEY"  # an accepted fill-in answer nobody types: it must never reach a page
QUESTIONS = f"""党的根本宗旨是什么？
- 发展经济
* 全心全意为人民服务

“三会一课”中的“一课”是党课。
= 对

“三会”包括哪些？
* 支部党员大会
* 支部委员会
* 党小组会
- 运动会

我国的根本政治制度是______。
= 人民代表大会制度 | {SECRET}
"""
RIGHT = {"全心全意为人民服务", "支部党员大会", "支部委员会", "党小组会"}


async def member_page(browser: Any, live: Live, member_id: str) -> tuple[Any, Any]:
    context = await browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 844})
    page = await context.new_page()
    await page.goto(await live.link(member_id))
    await page.click("#continue")
    await page.wait_for_url("**/m/")
    return context, page


async def answer(page: Any, *, right: bool) -> None:
    """Answer each question on the attempt page: every one right, or the choices wrong."""
    for q in await page.locator("li.question").all():
        kind = await q.get_attribute("data-type")
        if kind == "true_false":
            await q.locator("input[value=true]").check()
        elif kind == "fill_in":
            await q.locator("input[type=text]").fill("人民代表大会制度" if right else "议会")
        else:
            for label in await q.locator("label").all():
                text = (await label.inner_text()).strip()
                if (text in RIGHT) == right:
                    await label.locator("input").check()


async def test_a_monthly_test_from_the_console_to_the_phone_and_back_ranked(
    live: Live, browser: Any, db: asyncpg.Connection, output: Path
) -> None:
    groups = await build_branch(live)
    staff = await browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 900})
    violations: list[str] = []
    for ctx in (staff,):
        ctx.on(
            "console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None
        )
    try:
        page = await sign_in(staff, live, "s0")
        await page.goto(live.url + "/console/exams")
        assert await page.locator("#no-exams").count() == 1
        await page.click("#new-exam")
        await page.wait_for_url("**/console/exams/new")
        assert not untranslated(await page.content())
        closes = datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(days=10)
        await page.fill("#title", "十一月月度测试")
        await page.fill("#body", "请在本月底前完成测试。")
        await page.fill("#questions", QUESTIONS)
        await page.fill("#points", "25")
        for g in groups:
            await page.check(f'input[name=units][value="{g}"]')
        await page.fill("#closes_at", closes.strftime("%Y-%m-%dT%H:%M"))
        await page.fill("#pass_mark", "60")
        await page.select_option("#review", "score")
        await page.screenshot(path=str(output / "console-exam-new.png"))  # not full_page: that moves the form
        await page.click("#create-exam")
        await page.wait_for_url("**/console/quizzes/*/ranking")
        quiz_id = page.url.rsplit("/", 2)[1]
        notice_id = str(await db.fetchval("SELECT notice_id FROM exams WHERE quiz_id = $1", quiz_id))
        assert await db.fetchval("SELECT kind FROM notices WHERE id = $1", notice_id) == "exam"
        for _ in range(400):
            if await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", notice_id) == 9:
                break
            await asyncio.sleep(0.05)

        # m00 opens the notice, starts the test, saves progress, comes back, submits: 100 at once.
        member, phone = await member_page(browser, live, "m00")
        member.on(
            "console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None
        )
        await phone.click(f'ul.inbox a[href="/m/notices/{notice_id}"]')
        await phone.wait_for_url(f"**/m/notices/{notice_id}")
        await asyncio.sleep(2.5)  # past the read beacon's moment (1.5 s): a test is not done by reading it
        await phone.click("#take-quiz")
        await phone.wait_for_url(f"**/m/quizzes/{quiz_id}")
        await phone.click("#start")
        await phone.wait_for_url(f"**/m/quizzes/{quiz_id}/attempts/*")
        attempt_id = phone.url.rsplit("/", 1)[1]
        shown = await phone.eval_on_selector_all("li.question", "els => els.map(e => e.dataset.question)")
        key_view = await live.api("GET", f"/v1/quizzes/{quiz_id}/attempts/{attempt_id}")
        assert shown == [q["id"] for q in key_view["questions"]]  # the attempt's own order
        assert SECRET not in await phone.content()
        await answer(phone, right=True)
        await phone.click("#save")
        await phone.wait_for_url("**?saved=1")
        await expect(phone.locator("#saved")).to_be_visible()
        await phone.reload()
        assert await phone.locator("input[type=radio]:checked, input[type=checkbox]:checked").count() == 5
        assert (
            await db.fetchval(
                "SELECT read_at FROM recipients WHERE notice_id = $1 AND member_id = 'm00'", notice_id
            )
            is None
        )  # saved, not submitted: not done, still to be reminded
        await phone.screenshot(path=str(output / "member-exam.png"), full_page=True)
        await phone.click("#submit")
        await expect(phone.locator("#score")).to_contain_text("100", timeout=WAIT_MS)
        await expect(phone.locator("#my-rank")).to_contain_text("1")
        await expect(phone.locator("#passed")).to_have_text("已及格")
        assert await phone.locator("input:not([type=hidden]):enabled").count() == 0
        html = await phone.content()
        assert SECRET not in html and not untranslated(html)
        await phone.screenshot(path=str(output / "member-exam-score.png"), full_page=True)
        await phone.goto(f"{live.url}/m/quizzes/{quiz_id}")
        assert SECRET not in await phone.content()
        assert await phone.locator("#no-attempts").count() == 1  # one attempt only
        await member.close()

        # m10 (another group) gets every choice wrong.
        member, phone = await member_page(browser, live, "m10")
        await phone.goto(f"{live.url}/m/quizzes/{quiz_id}")
        await phone.click("#start")
        await phone.wait_for_url("**/attempts/*")
        await answer(phone, right=False)
        await phone.click("#submit")
        await expect(phone.locator("#score")).to_contain_text("25")
        await expect(phone.locator("#passed")).to_have_text("未及格")
        assert SECRET not in await phone.content()
        await member.close()

        # The secretary: members ranked, branches ranked, the CSV.
        await page.reload()
        ranks = await page.eval_on_selector_all(
            "#members tbody tr",
            "rows => rows.map(r => [r.dataset.member, r.querySelector('.rank').textContent])",
        )
        assert ranks[:2] == [["m00", "1"], ["m10", "2"]] and all(r == "–" for _, r in ranks[2:])
        assert len(ranks) == 9
        assert await page.inner_text("[data-stat=participants]") == "2"
        branch_rows = await page.eval_on_selector_all(
            "#branches tbody tr", "rows => rows.map(r => r.dataset.unit)"
        )
        assert branch_rows == ["g0", "g1", "g2"]  # 1 of 3 each: the mean decides, g2 took none
        assert not untranslated(await page.content())
        await page.screenshot(path=str(output / "console-exam-ranking.png"), full_page=True)
        csv = await page.request.get(live.url + await page.get_attribute("#csv", "href"))
        body = await csv.body()
        assert csv.ok and body.startswith(b"\xef\xbb\xbf") and "民警m00".encode() in body
        await page.goto(live.url + "/console/exams")
        assert await page.locator(f'#exams tr[data-quiz="{quiz_id}"]').count() == 1

        # The sibling branch's secretary: no such test.
        other = await sign_in(staff, live, "s1")
        response = await other.goto(f"{live.url}/console/quizzes/{quiz_id}/ranking")
        assert response.status == 404
        response = await other.goto(f"{live.url}/console/quizzes/{quiz_id}/ranking.csv")
        assert response.status == 404
        assert violations == []
    finally:
        await staff.close()
