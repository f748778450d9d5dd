"""The console and member pages over HTTP (no browser): sign-in links are one-time and expire,
sessions end when idle, at sign-out and when the key behind them is revoked, every form post
needs the session's CSRF token, every page carries the strict CSP and renders without an
untranslated key in either language, and a secretary session sees what a secretary key sees."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.console.i18n import LANGS, catalogue
from notifier.console.pages import CSP
from notifier.db import console as console_db
from notifier.links import make_token
from notifier.settings import Settings
from tests.api.conftest import issue_key
from tests.conftest import ADMIN_TOKEN, advance_clock, auth, running_worker, wait_until
from tests.helpers import post, put

CATALOGUES = Path(__file__).resolve().parents[2] / "notifier" / "console" / "i18n"


async def org(client: TestClient[Any, Any]) -> None:
    """c -> b0 (secretary s0, members m0 m1), b1 (secretary s1, member x1)."""
    await put(client, "/v1/units/c", {"name": "市委", "parent_id": None})
    for b in ("b0", "b1"):
        await put(client, f"/v1/units/{b}", {"name": f"支部{b}", "parent_id": "c"})
    batch = [
        {"id": "s0", "name": "书记甲", "units": ["b0"]},
        {"id": "m0", "name": "民警0", "units": ["b0"]},
        {"id": "m1", "name": "民警1", "units": ["b0"]},
        {"id": "s1", "name": "书记乙", "units": ["b1"]},
        {"id": "x1", "name": "民警x", "units": ["b1"]},
    ]
    await post(client, "/v1/members:batch", {"members": batch}, status=200)
    await put(client, "/v1/units/b0", {"name": "支部b0", "parent_id": "c", "secretaries": ["s0"]})
    await put(client, "/v1/units/b1", {"name": "支部b1", "parent_id": "c", "secretaries": ["s1"]})


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def csrf_of(client: TestClient[Any, Any], path: str) -> str:
    html = await (await client.get(path)).text()
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


async def sign_in(client: TestClient[Any, Any], member_id: str) -> str:
    """Follow a fresh console link for the member; the landing path."""
    url = (await post(client, "/v1/console-links", {"member_id": member_id}))["url"]
    path = "/console/in/" + token_of(url)
    pre = await csrf_of(client, path)
    resp = await client.post(path, data={"csrf": pre}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    return resp.headers["Location"]


async def sign_in_with_token(client: TestClient[Any, Any], token: str) -> None:
    """Sign in on the sign-in page with an API key or the bootstrap admin's token (a new session)."""
    client.session.cookie_jar.clear()
    pre = await csrf_of(client, "/console/sign-in")
    resp = await client.post("/console/sign-in", data={"csrf": pre, "token": token}, allow_redirects=False)
    assert resp.status == 303, await resp.text()


def test_both_catalogues_have_the_same_keys() -> None:
    keys = [set(catalogue(lang)) for lang in LANGS]
    parts = {p.name.split(".")[0] for p in CATALOGUES.glob("*.*.json")}
    for part in parts:  # every part exists in every language
        assert all((CATALOGUES / f"{part}.{lang}.json").is_file() for lang in LANGS), part
    assert keys[0] == keys[1]
    assert all(catalogue(lang) for lang in LANGS)


async def fanned_out(db: asyncpg.Connection, nid: str) -> None:
    async def done() -> bool:
        return bool(await db.fetchval("SELECT state = 'active' FROM notices WHERE id = $1", nid))

    await wait_until(done)


async def test_every_page_renders_translated_with_the_strict_csp(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await org(client)
    body = {"kind": "ding", "title": "集合", "body": "立即集合", "audience": {"units": ["b0"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    await fanned_out(db, nid)
    assert await sign_in(client, "s0") == "/console/"
    pages = [
        "/console/notices",
        "/console/send",
        "/console/units",
        "/console/reports",
        f"/console/notices/{nid}",
        f"/console/notices/{nid}/recipients/m0",
        "/console/sign-in",
        "/m/",
        f"/m/notices/{nid}",
        "/console/notices/00000000-0000-0000-0000-000000000000",  # the 404 page, translated too
    ]
    for lang in LANGS:
        client.session.cookie_jar.update_cookies({"lang": lang})
        for path in pages:
            resp = await client.get(path)
            html = await resp.text()
            assert resp.status == (404 if "0000-0000" in path else 200), (path, html[:300])
            assert resp.headers["Content-Security-Policy"] == CSP
            assert "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP
            assert "⟦" not in html, (lang, path, re.findall("⟦[^⟧]*⟧", html))
            assert "<script>" not in html and " style=" not in html and "onclick" not in html
    client.session.cookie_jar.update_cookies({"lang": "zh-CN"})
    assert "通知" in await (await client.get("/console/notices")).text()
    client.session.cookie_jar.clear()  # no cookie: Accept-Language decides
    page = await client.get("/console/sign-in", headers={"Accept-Language": "en-GB,en;q=0.8"})
    assert '<html lang="en">' in await page.text()
    page = await client.get("/console/sign-in", headers={"Accept-Language": "fr"})
    assert '<html lang="zh-CN">' in await page.text()


async def test_a_console_link_works_once_and_expires(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await org(client)
    url = (await post(client, "/v1/console-links", {"member_id": "s0"}))["url"]
    path = "/console/in/" + token_of(url)
    pre = await csrf_of(client, path)
    assert (await client.post(path, data={"csrf": pre}, allow_redirects=False)).status == 303
    replay = await client.post(path, data={"csrf": pre}, allow_redirects=False)
    assert replay.status == 403
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 1

    late = (await post(client, "/v1/console-links", {"member_id": "s0"}))["url"]
    await advance_clock(db, 16 * 60)
    resp = await client.post("/console/in/" + token_of(late), data={"csrf": pre}, allow_redirects=False)
    assert resp.status == 403
    forged = token_of(url)[:-2] + ("AA" if not token_of(url).endswith("AA") else "BB")
    resp = await client.post("/console/in/" + forged, data={"csrf": pre}, allow_redirects=False)
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 1
    # A GET of the link (a link preview) does not use it up.
    fresh = (await post(client, "/v1/console-links", {"member_id": "s0"}))["url"]
    await client.get("/console/in/" + token_of(fresh))
    assert await db.fetchval("SELECT count(*) FROM console_links WHERE used_at IS NOT NULL") == 1


async def test_a_service_key_gets_links_only_for_members_in_its_subtree(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await org(client)
    service = await issue_key(client, {"name": "b0 hr", "role": "service", "unit_id": "b0"})
    await post(client, "/v1/console-links", {"member_id": "m0"}, token=service)
    await post(client, "/v1/console-links", {"member_id": "x1"}, token=service, status=404)
    await post(client, "/v1/console-links", {"member_id": "nobody"}, token=service, status=404)
    secretary = await issue_key(client, {"name": "b0 desk", "role": "secretary", "unit_id": "b0"})
    await post(client, "/v1/console-links", {"member_id": "m0"}, token=secretary, status=403)


async def test_a_session_sees_what_a_secretary_key_of_its_unit_sees(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await org(client)
    body = {"kind": "ding", "title": "支部b1集合", "body": "x", "audience": {"units": ["b1"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    await sign_in(client, "s0")
    assert (await client.get(f"/console/notices/{nid}")).status == 404
    assert (await client.get(f"/console/notices/{nid}/roll-call.csv")).status == 404
    assert (await client.get(f"/console/notices/{nid}/stream")).status == 404
    assert "支部b1集合" not in await (await client.get("/console/notices")).text()
    csrf = await csrf_of(client, "/console/notices")
    resp = await client.post(f"/console/notices/{nid}/recall", data={"csrf": csrf, "confirm": "yes"})
    assert resp.status == 404
    assert await db.fetchval("SELECT recalled_at FROM notices WHERE id = $1", nid) is None


async def test_an_admin_notice_to_sibling_branches_shows_a_bar_for_every_branch(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await org(client)
    body = {"kind": "ding", "title": "集合", "body": "x", "audience": {"units": ["b1", "b0"]}}
    both = (await post(client, "/v1/notices", body, status=202))["id"]
    one = (await post(client, "/v1/notices", {**body, "audience": {"units": ["b0"]}}, status=202))["id"]
    for nid in (both, one):
        await fanned_out(db, nid)
    await sign_in_with_token(client, ADMIN_TOKEN)

    async def bars(nid: str) -> dict[str, str]:
        html = await (await client.get(f"/console/notices/{nid}")).text()
        return dict(re.findall(r'<td data-read="([^"]+)">([^<]*)</td>', html))

    # Rolled up over their common parent c: each branch its own bar (and c's own members, none).
    assert await bars(both) == {"b0": "0/3", "b1": "0/2", "c": "0/0"}
    assert await bars(one) == {"b0": "0/3"}  # one unit: over its own children (it has none) and itself
    resp = await client.get(f"/v1/notices/{both}/stream", headers={**auth(), "Accept": "application/json"})
    assert {u["unit_id"] for u in (await resp.json())["units"]} == {"b0", "b1", "c"}  # the stream agrees


async def test_posts_without_the_csrf_token_change_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await org(client)
    await sign_in(client, "s0")
    form = {"title": "t", "body": "b", "units": "b0", "channels": "inapp", "step": "send", "key": "k1"}
    assert (await client.post("/console/send", data=form)).status == 403
    assert (await client.post("/console/send", data={**form, "csrf": "wrong"})).status == 403
    assert await db.fetchval("SELECT count(*) FROM notices") == 0
    csrf = await csrf_of(client, "/console/send")
    assert (
        await client.post("/console/send", data={**form, "csrf": csrf}, allow_redirects=False)
    ).status == 303
    again = await client.post("/console/send", data={**form, "csrf": csrf}, allow_redirects=False)
    assert again.status == 303  # the same key: the same notice, not a second send
    assert await db.fetchval("SELECT count(*) FROM notices") == 1
    assert await db.fetchval("SELECT scope_unit_id FROM notices") == "b0"


async def test_sessions_end_when_idle_at_sign_out_and_with_their_key(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await org(client)
    await sign_in(client, "s0")
    assert (await client.get("/console/notices", allow_redirects=False)).status == 200
    await advance_clock(db, 31 * 60)
    assert (await client.get("/console/notices", allow_redirects=False)).status == 303

    await sign_in(client, "s0")
    csrf = await csrf_of(client, "/console/notices")
    assert (await client.post("/console/sign-out", data={"csrf": csrf}, allow_redirects=False)).status == 303
    assert (await client.get("/console/notices", allow_redirects=False)).status == 303

    key = await issue_key(client, {"name": "b0 desk", "role": "secretary", "unit_id": "b0"})
    pre = await csrf_of(client, "/console/sign-in")
    resp = await client.post("/console/sign-in", data={"csrf": pre, "token": key}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/console/notices", allow_redirects=False)).status == 200
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE name = 'b0 desk'")
    revoke = await client.delete(f"/v1/api-keys/{key_id}", headers=auth())
    assert revoke.status in (200, 204), await revoke.text()
    assert (await client.get("/console/notices", allow_redirects=False)).status == 303
    bad = await client.post("/console/sign-in", data={"csrf": pre, "token": "nope"}, allow_redirects=False)
    assert bad.status == 401


async def test_the_cookie_is_secure_behind_an_https_proxy(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await org(client)
    url = (await post(client, "/v1/console-links", {"member_id": "m0"}))["url"]
    path = "/console/in/" + token_of(url)
    pre = await csrf_of(client, path)
    resp = await client.post(
        path, data={"csrf": pre}, headers={"X-Forwarded-Proto": "https"}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/m/"  # no secretary role: the inbox
    assert "Secure" in resp.headers["Set-Cookie"]


async def test_a_member_read_is_recorded_by_a_post_never_by_a_get(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await org(client)
    body = {"kind": "notice", "title": "学习", "body": "x", "audience": {"members": ["m0"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    await fanned_out(db, nid)
    assert await sign_in(client, "m0") == "/m/"
    assert "学习" in await (await client.get("/m/")).text()
    assert (await client.get(f"/m/notices/{nid}")).status == 200
    assert await db.fetchval("SELECT read_at FROM recipients WHERE notice_id = $1", nid) is None
    assert (await client.post(f"/m/notices/{nid}/read", headers={"X-CSRF-Token": "no"})).status == 403
    html = await (await client.get(f"/m/notices/{nid}")).text()
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    resp = await client.post(f"/m/notices/{nid}/read", headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    assert await db.fetchval("SELECT read_at FROM recipients WHERE notice_id = $1", nid) is not None
    other = (await post(client, "/v1/notices", {**body, "audience": {"members": ["x1"]}}, status=202))["id"]
    assert (await client.get(f"/m/notices/{other}")).status == 404


async def test_a_read_link_opens_the_inbox_once_without_recording_the_read(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, settings: Settings
) -> None:
    await org(client)
    body = {"kind": "ding", "title": "集合", "body": "x", "audience": {"members": ["m0"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    await fanned_out(db, nid)
    secret = settings.link_secret.get_secret_value().encode()
    token = make_token(secret, nid, "m0", int(time.time()) + 3600)
    path = f"/m/r/{token}"
    pre = await csrf_of(client, path)  # a GET (a link preview) signs nobody in
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0
    resp = await client.post(path, data={"csrf": pre}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == f"/m/notices/{nid}"
    assert (await client.get(f"/m/notices/{nid}")).status == 200
    assert await db.fetchval("SELECT read_at FROM recipients WHERE notice_id = $1", nid) is None
    assert (await client.post(path, data={"csrf": pre}, allow_redirects=False)).status == 403  # once
    forged = make_token(b"another secret", nid, "m0", int(time.time()) + 3600)
    assert (await client.post(f"/m/r/{forged}", data={"csrf": pre}, allow_redirects=False)).status == 403


async def test_the_live_recipient_count_is_the_fan_outs_audience(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    """One audience rule (db/units.audience_members): overlapping units and named members already
    inside them count once, on the send form as in the fan-out."""
    await org(client)
    units, members = ["b0", "c"], ["m0", "x1"]
    count = await console_db.audience_count(db, units, members)
    body = {"kind": "ding", "title": "t", "body": "b", "audience": {"units": units, "members": members}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    async with running_worker(settings):
        await fanned_out(db, nid)
    assert count == 5
    assert await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", nid) == count


async def test_signing_in_and_out_of_the_console_is_audited(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """By link and by pasted key, and the sign-out: in GET /v1/audit, readable by the unit's keys."""
    await org(client)
    await sign_in(client, "s0")
    csrf = await csrf_of(client, "/console/notices")
    assert (await client.post("/console/sign-out", data={"csrf": csrf}, allow_redirects=False)).status == 303
    key = await issue_key(client, {"name": "b0 desk", "role": "secretary", "unit_id": "b0"})
    pre = await csrf_of(client, "/console/sign-in")
    resp = await client.post("/console/sign-in", data={"csrf": pre, "token": key}, allow_redirects=False)
    assert resp.status == 303
    bad = await client.post("/console/sign-in", data={"csrf": pre, "token": "nope"}, allow_redirects=False)
    assert bad.status == 401
    key_id = str(await db.fetchval("SELECT id FROM api_keys WHERE name = 'b0 desk'"))

    entries = (await (await client.get("/v1/audit?limit=100", headers=auth(key))).json())["items"]
    console_entries = [
        (e["action"], e["actor_role"], e["actor_member_id"], e["actor_key_id"], e["details"], e["unit_ids"])
        for e in reversed(entries)
        if e["action"].startswith("console.")
    ]
    assert console_entries == [
        ("console.sign_in", "secretary", "s0", None, {"by": "link"}, ["b0"]),
        ("console.sign_out", "secretary", "s0", None, {}, ["b0"]),
        ("console.sign_in", "secretary", None, key_id, {"by": "key"}, ["b0"]),
    ]
    s1_view = await client.get("/v1/audit?limit=100", headers=auth(await s1_key(client)))
    assert not [e for e in (await s1_view.json())["items"] if e["action"].startswith("console.")]


async def s1_key(client: TestClient[Any, Any]) -> str:
    return await issue_key(client, {"name": "b1 desk", "role": "secretary", "unit_id": "b1"})


async def test_member_pages_show_times_in_the_members_own_time_zone(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    """The member's zone (db/quiet.py's rule: their own, else inherited from their units), not the
    default Asia/Shanghai."""
    await org(client)
    await put(client, "/v1/units/c", {"name": "市委", "parent_id": None, "timezone": "Europe/London"})
    body = {"kind": "notice", "title": "t", "body": "b", "audience": {"members": ["m0"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    async with running_worker(settings):
        await fanned_out(db, nid)
    created = await db.fetchval("SELECT created_at FROM notices WHERE id = $1", nid)

    def shown(tz: str) -> str:
        return str(created.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M"))

    await sign_in(client, "m0")
    for path in ("/m/", f"/m/notices/{nid}"):
        html = await (await client.get(path)).text()
        assert f"<time>{shown('Europe/London')}</time>" in html, path
    batch = [{"id": "m0", "name": "民警0", "units": ["b0"], "timezone": "America/New_York"}]
    await post(client, "/v1/members:batch", {"members": batch}, status=200)
    html = await (await client.get("/m/")).text()
    assert f"<time>{shown('America/New_York')}</time>" in html


async def test_the_read_link_a_message_carries_leads_to_the_members_inbox_once(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, settings: Settings
) -> None:
    """The /r/ page links the same token's one-time inbox sign-in; a preview fetch of either
    records no read and signs nobody in."""
    await org(client)
    body = {"kind": "ding", "title": "集合", "body": "x", "audience": {"members": ["m0"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]
    await fanned_out(db, nid)
    secret = settings.link_secret.get_secret_value().encode()
    token = make_token(secret, nid, "m0", int(time.time()) + 3600)
    preview = {"User-Agent": "Slackbot-LinkExpanding 1.0"}
    page = await client.get(f"/r/{token}", headers=preview)
    assert page.status == 200 and f'href="/m/r/{token}"' in await page.text()
    pre = await csrf_of(client, f"/m/r/{token}")
    assert await db.fetchval("SELECT read_at FROM recipients WHERE notice_id = $1", nid) is None
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0
    resp = await client.post(f"/m/r/{token}", data={"csrf": pre}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == f"/m/notices/{nid}"
    assert (await client.get("/m/")).status == 200
    assert await db.fetchval("SELECT read_at FROM recipients WHERE notice_id = $1", nid) is None


async def test_the_empty_roll_call_says_what_is_true_in_each_state(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    """Queued (no worker yet, no recipients): "not sent yet", never "everyone has read"; fanned
    out with everyone read: "everyone has read"; recalled: "recalled". The page and its roll-call
    fragment (what htmx re-fetches) say the same, in both catalogues."""
    await org(client)
    desk = await issue_key(client, {"name": "b0 desk", "role": "secretary", "unit_id": "b0"})
    body = {"kind": "notice", "title": "学习", "body": "材料", "audience": {"units": ["b0"]}}
    nid = (await post(client, "/v1/notices", body, token=desk, status=202))["id"]
    await sign_in(client, "s0")

    async def empty_says(key: str) -> None:
        for lang in LANGS:
            client.session.cookie_jar.update_cookies({"lang": lang})
            for path in (f"/console/notices/{nid}", f"/console/notices/{nid}/roll-call"):
                resp = await client.get(path)
                html = await resp.text()
                assert resp.status == 200, (path, html[:300])
                assert resp.headers["Content-Security-Policy"] == CSP
                assert catalogue(lang)[f"notice.roll_empty.{key}"] in html, (lang, path, key)
                others = [
                    s for s in catalogue(lang) if s.startswith("notice.roll_empty.") and s[-len(key) :] != key
                ]
                assert not any(catalogue(lang)[o] in html for o in others), (lang, path, key)
                assert '<ul class="roll"' not in html

    assert await db.fetchval("SELECT state FROM notices WHERE id = $1", nid) == "queued"
    await empty_says("queued")
    async with running_worker(settings):
        await fanned_out(db, nid)
    for m in ("s0", "m0", "m1"):
        await post(client, f"/v1/notices/{nid}/receipts", {"type": "read", "member_id": m}, status=200)
    await empty_says("active")
    await post(client, f"/v1/notices/{nid}/recall", {}, status=200)
    await empty_says("recalled")
