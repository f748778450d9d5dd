"""Branch group robots (``dingtalk_robot``) on the real engine and API (PostgreSQL + Redis) and
the fake DingTalk's custom robot (signature, timestamp, keywords, IP rule, 20 a minute): a unit's
robot is a unit-level contact, a notice is posted once per unit -- never once per member -- and
the robot's limit is a shared rate limit; security refusals are permanent, with the reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.channels.dingtalk_robot import sign
from notifier.workers.context import WorkerDeps
from notifier.workers.fanout import fanout_notice
from notifier.workers.tick import tick_once
from tests.conftest import advance_clock, auth, make_settings
from tests.fakes.dingtalk import FakeDingTalk
from tests.helpers import worker_deps
from tests.workers.test_dingtalk_reads import org, recall_via_api


@pytest.fixture
async def deps(
    server_urls: tuple[str, str], db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> AsyncIterator[WorkerDeps]:
    settings = make_settings(
        server_urls, **dingtalk_fake.settings_overrides(), delivery_idle_wait_seconds=0.0
    )
    async with worker_deps(settings) as d:
        yield d


async def api(deps: WorkerDeps, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with TestClient(TestServer(create_app(deps.settings, deps.channels), host="127.0.0.1")) as client:
        resp = await client.request(method, path, json=body, headers=auth())
        return resp.status, await resp.json()


async def set_robot(deps: WorkerDeps, unit: str, target: dict[str, str]) -> None:
    status, body = await api(
        deps,
        "PUT",
        f"/v1/units/{unit}/contacts",
        {"items": [{"channel": "dingtalk_robot", "target": target}]},
    )
    assert status == 200, body


async def post_notice(deps: WorkerDeps, units: list[str], title: str = "支部通知: 周五学习") -> str:
    status, body = await api(
        deps,
        "POST",
        "/v1/notices",
        {
            "kind": "notice",
            "title": title,
            "body": "周五 19:00 三楼会议室",
            "audience": {"units": units},
            "channels": ["dingtalk", "dingtalk_robot"],
        },
    )
    assert status == 202, body
    await fanout_notice(deps, body["id"])
    return str(body["id"])


async def posts(db: asyncpg.Connection, nid: str) -> list[tuple[str, str, str | None]]:
    rows = await db.fetch(
        "SELECT unit_id, state, error FROM unit_posts WHERE notice_id = $1 ORDER BY unit_id", nid
    )
    return [(r["unit_id"], r["state"], r["error"]) for r in rows]


async def test_one_post_per_unit_group_never_per_member(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    await org(db, 30, unit="b1")
    await org(db, 20, unit="b2", first=30)
    await org(db, 5, unit="b3", first=50)  # no robot
    r1, r2 = dingtalk_fake.new_robot(), dingtalk_fake.new_robot()
    await set_robot(deps, "b1", r1)
    await set_robot(deps, "b2", r2)
    status, shown = await api(deps, "GET", "/v1/units/b1/contacts")
    assert status == 200 and [i["channel"] for i in shown["items"]] == ["dingtalk_robot"]
    assert r1["secret"] not in str(shown) and r1["webhook"] not in str(shown)  # secrets never shown

    nid = await post_notice(deps, ["b1", "b2", "b3"])
    # The members get their work notifications; no member has a dingtalk_robot delivery.
    channels = await db.fetch(
        "SELECT channel, count(*) AS n FROM deliveries WHERE notice_id = $1 GROUP BY 1", nid
    )
    assert [(r["channel"], r["n"]) for r in channels] == [("dingtalk", 55)]
    assert await posts(db, nid) == [("b1", "queued", None), ("b2", "queued", None)]
    assert (await tick_once(deps))["unit_posts"] == 2
    assert await posts(db, nid) == [("b1", "sent", None), ("b2", "sent", None)]
    assert (
        len(dingtalk_fake.posts_to(r1)) == 1
        and len(dingtalk_fake.posts_to(r2)) == 1
        and dingtalk_fake.robot_rejected == 0
    )
    text = dingtalk_fake.posts_to(r1)[0]["markdown"]["text"]
    assert "支部通知: 周五学习" in text and "三楼会议室" in text
    await advance_clock(db, 3600)
    await tick_once(deps)
    assert len(dingtalk_fake.group_posts) == 2  # posted once


async def test_the_robots_20_a_minute_is_a_shared_rate_limit(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    await org(db, 1, unit="b1")
    robot = dingtalk_fake.new_robot()
    await set_robot(deps, "b1", robot)
    notices = [await post_notice(deps, ["b1"], title=f"通知 {i}") for i in range(25)]
    await tick_once(deps)
    rows = await db.fetch("SELECT state, wait_reason, attempts FROM unit_posts")
    assert sorted(r["state"] for r in rows).count("sent") == 10
    held = [r for r in rows if r["state"] == "queued"]
    assert len(held) == 15 and {(r["wait_reason"], r["attempts"]) for r in held} == {("throttled", 0)}
    await advance_clock(db, 60)
    await tick_once(deps)
    assert len(dingtalk_fake.posts_to(robot)) == 20  # never more than 20 in a minute: DingTalk never muted it
    await advance_clock(db, 60)
    dingtalk_fake.advance(61)
    await tick_once(deps)
    assert len(dingtalk_fake.posts_to(robot)) == 25 and dingtalk_fake.robot_rejected == 0
    assert {s for n in notices for _, s, _ in await posts(db, n)} == {"sent"}


async def test_security_refusals_fail_with_the_reason_and_disable_the_robot(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    for i, unit in enumerate(("k", "ip", "sig", "ok")):
        await org(db, 1, unit=unit, first=i)
    await set_robot(deps, "k", dingtalk_fake.new_robot(keywords=["警报"]))
    blocked = dingtalk_fake.new_robot()
    dingtalk_fake.robots[blocked["webhook"].split("=")[1]]["ip_blocked"] = True
    await set_robot(deps, "ip", blocked)
    wrong = dingtalk_fake.new_robot()
    await set_robot(deps, "sig", {**wrong, "secret": "SEC" + "0" * 64})
    await set_robot(deps, "ok", dingtalk_fake.new_robot(keywords=["通知"]))
    nid = await post_notice(deps, ["k", "ip", "sig", "ok"])
    await tick_once(deps)
    rows = {u: (s, e) for u, s, e in await posts(db, nid)}
    assert rows["ok"] == ("sent", None)
    assert rows["k"][0] == "failed" and "keywords not in content" in (rows["k"][1] or "")
    assert rows["ip"][0] == "failed" and "not in whitelist" in (rows["ip"][1] or "")
    assert rows["sig"][0] == "failed" and "sign not match" in (rows["sig"][1] or "")
    # The notice's timeline says where it was posted and where not, and why.
    events = await db.fetch(
        "SELECT kind, detail FROM notice_events WHERE notice_id = $1 AND kind LIKE 'group_post%' ORDER BY 1",
        nid,
    )
    details = [(e["kind"], json.loads(e["detail"])) for e in events]
    assert sorted((kind, d["unit"]) for kind, d in details) == [
        ("group_post_failed", "ip"),
        ("group_post_failed", "k"),
        ("group_post_failed", "sig"),
        ("group_posted", "ok"),
    ]
    assert all("error" in d for kind, d in details if kind == "group_post_failed")
    disabled = await db.fetch(
        "SELECT unit_id, disabled_reason FROM unit_contacts WHERE disabled_at IS NOT NULL ORDER BY 1"
    )
    assert [r["unit_id"] for r in disabled] == ["ip", "k", "sig"]
    # A later notice is not posted through a disabled robot; setting it again enables it.
    later = await post_notice(deps, ["k", "ok"])
    assert [u for u, _, _ in await posts(db, later)] == ["ok"]
    await set_robot(deps, "k", dingtalk_fake.new_robot())
    assert await db.fetchval("SELECT disabled_at FROM unit_contacts WHERE unit_id = 'k'") is None


async def test_a_recalled_notice_is_not_posted(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    await org(db, 1, unit="b1")
    await set_robot(deps, "b1", dingtalk_fake.new_robot())
    nid = await post_notice(deps, ["b1"])
    await recall_via_api(deps, nid)
    await tick_once(deps)
    assert await posts(db, nid) == [("b1", "cancelled", "the notice was recalled or expired")]
    assert dingtalk_fake.group_posts == []


async def test_bad_unit_contacts_are_422_naming_the_field(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    await org(db, 1, unit="b1")
    good = dingtalk_fake.new_robot()
    cases = [
        ({"channel": "dingtalk", "target": good}, "items[0].channel"),
        (
            {
                "channel": "dingtalk_robot",
                "target": {**good, "webhook": "https://evil.example/robot/send?access_token=" + "a" * 64},
            },
            "items[0].target.webhook",
        ),
        ({"channel": "dingtalk_robot", "target": {**good, "secret": "nope"}}, "items[0].target.secret"),
        ({"channel": "dingtalk_robot", "target": {"url": "x"}}, "items[0].target"),
    ]
    for item, where in cases:
        status, problem = await api(deps, "PUT", "/v1/units/b1/contacts", {"items": [item]})
        assert status == 422 and [e["field"] for e in problem["errors"]] == [where], problem
    status, _ = await api(deps, "PUT", "/v1/units/nowhere/contacts", {"items": []})
    assert status == 404
    assert await db.fetchval("SELECT count(*) FROM unit_contacts") == 0


def test_the_signature_is_dingtalks() -> None:
    # HMAC-SHA256 with the secret as key over "timestamp\nsecret", base64 (a known vector).
    assert sign("SECabc", 1_700_000_000_000) == sign("SECabc", 1_700_000_000_000)
    assert sign("SECabc", 1_700_000_000_000) != sign("SECabd", 1_700_000_000_000)
    import base64
    import hashlib
    import hmac

    expected = base64.b64encode(
        hmac.new(b"SECabc", b"1700000000000\nSECabc", hashlib.sha256).digest()
    ).decode()
    assert sign("SECabc", 1_700_000_000_000) == expected


async def test_a_notice_only_for_the_group_is_posted_and_fans_out(
    deps: WorkerDeps, db: asyncpg.Connection, dingtalk_fake: FakeDingTalk
) -> None:
    await org(db, 3, unit="b1")
    robot = dingtalk_fake.new_robot()
    await set_robot(deps, "b1", robot)
    status, body = await api(
        deps,
        "POST",
        "/v1/notices",
        {
            "kind": "notice",
            "title": "群通知",
            "body": "b",
            "audience": {"units": ["b1"]},
            "channels": ["dingtalk_robot"],
        },
    )
    assert status == 202, body
    await fanout_notice(deps, body["id"])
    await tick_once(deps)
    assert len(dingtalk_fake.posts_to(robot)) == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE notice_id = $1", body["id"]) == 0
    status, shown = await api(deps, "GET", f"/v1/notices/{body['id']}")
    # Posted in the group only: nobody is a recipient, so nothing waits on a read.
    assert status == 200 and shown["state"] == "active" and shown["counts"]["recipients"] == 0, shown
