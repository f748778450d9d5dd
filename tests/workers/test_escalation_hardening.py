"""Escalation under hostile or large inputs, on the real engine with the clock moved forward:
summaries stay inside the notice's own audience and link to a page their recipients can open, a
notice's escalation has a ceiling on sends, voice calls to one number are capped, a step never
blocks a read, and the events a step leaves are one per step (paged with a cursor)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.db import escalations, recipients, timeline
from notifier.domain.escalation import PolicyRules
from notifier.links import make_token
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from notifier.workers.tick import tick_once
from tests.conftest import advance_clock, auth, make_settings
from tests.fakes.twilio import FakeTwilio
from tests.helpers import worker_deps
from tests.workers.test_delivery_layer import ScriptedChannel, make_members, make_notice

Env = tuple[WorkerDeps, ScriptedChannel]
Client = TestClient[Any, Any]


async def _notice(
    deps: WorkerDeps,
    db: asyncpg.Connection,
    audience: dict[str, list[str]],
    escalation: dict[str, Any],
    scope: str | None = None,
) -> str:
    snapshot = json.dumps(PolicyRules.model_validate(escalation).snapshot(None))
    nid = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels, escalation, scope_unit_id) "
            "VALUES ('ding', 'Muster A', 'b', $1::jsonb, '{inapp}', $2::jsonb, $3) RETURNING id",
            json.dumps(audience),
            snapshot,
            scope,
        )
    )
    await fanout_notice(deps, nid)
    return nid


# --- defect 6: summaries stay inside the notice's audience --------------------------------------


async def test_a_shared_members_other_branch_never_hears_of_the_notice(
    env: Env, db: asyncpg.Connection, client: Client
) -> None:
    """x belongs to a7 (branch A) and b7 (branch B). A DING of branch A tells A's secretary only,
    counts x under a7, and its summary links to a signed page that opens without a token."""
    deps, _ = env
    await db.execute(
        "INSERT INTO units (id, name, parent_id) VALUES ('c', 'C', NULL), ('A', 'A', 'c'), "
        "('a7', 'A-7', 'A'), ('B', 'B', 'c'), ('b7', 'B-7', 'B')"
    )
    await db.execute(
        "INSERT INTO members (id, name) VALUES ('x', 'Officer X'), ('secA', 'Sec A'), ('secB', 'Sec B')"
    )
    await db.execute("INSERT INTO member_units VALUES ('x', 'a7'), ('x', 'b7'), ('secA', 'A'), ('secB', 'B')")
    await db.execute("INSERT INTO unit_secretaries VALUES ('A', 'secA'), ('B', 'secB')")
    policy = {"steps": [{"after": 60, "notify": ["secretary"], "channels": ["inapp"]}]}
    nid = await _notice(deps, db, {"units": ["a7"]}, policy, scope="A")
    await advance_clock(db, 61)
    await tick_once(deps)

    summary = await db.fetchrow("SELECT id, body, audience FROM notices WHERE parent_notice_id = $1", nid)
    assert summary is not None
    assert json.loads(summary["audience"])["members"] == ["secA"]
    body = summary["body"]
    assert "a7: 1" in body and "b7" not in body and "/v1/notices/" not in body
    match = re.search(r"https?://\S+/r/unread/[\w.-]+", body)
    assert match, body
    page = await client.get(urlsplit(match.group(0)).path)  # no Authorization header
    text = await page.text()
    assert page.status == 200, text
    assert "Officer X" in text and "a7" in text and "b7" not in text and "1/1" in text
    token = urlsplit(match.group(0)).path.rsplit("/", 1)[1]
    forged = token[:-2] + ("BB" if token.endswith("AA") else "AA")
    assert (await client.get(f"/r/unread/{forged}")).status == 403
    # A member's read link for the same notice is no list link.
    secret = deps.settings.link_secret.get_secret_value().encode()
    read_token = make_token(secret, str(summary["id"]), "secA", int(time.time()) + 600)
    assert (await client.get(f"/r/unread/{read_token}")).status == 403


# --- defect 7: a ceiling on escalation sends, a cap on calls --------------------------------------


async def test_a_notices_escalation_stops_at_its_ceiling_on_sends(env: Env, db: asyncpg.Connection) -> None:
    deps, channel = env
    capped = dataclasses.replace(deps, settings=deps.settings.model_copy(update={"escalation_max_sends": 5}))
    await make_members(db, 8)
    policy = {
        "steps": [{"after": 60, "remind": ["scripted"]}, {"after": 120, "remind": ["scripted"]}],
        "repeat": 3,
    }
    nid = await make_notice(capped, db, ["inapp"], escalation=policy)
    await advance_clock(db, 61)
    await tick_once(capped)
    await deliver_notice_channel(capped, nid, "scripted")
    assert sorted(o.member_id for o in channel.sent) == [f"m{i:05d}" for i in range(5)]
    events = await db.fetch("SELECT kind, detail FROM notice_events WHERE notice_id = $1 ORDER BY id", nid)
    ceiling = [json.loads(e["detail"]) for e in events if e["kind"] == "escalation_ceiling_reached"]
    assert ceiling == [{"limit": 5, "sends": 5, "round": 0, "step": 0}]
    assert await db.fetchval("SELECT state FROM escalations WHERE notice_id = $1", nid) == "stopped"
    for _ in range(4):  # later steps send nothing more
        await advance_clock(db, 120)
        await tick_once(capped)
    await deliver_notice_channel(capped, nid, "scripted")
    assert len(channel.sent) == 5
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE notice_id = $1 AND step > 0", nid) == 5


@pytest.fixture
async def phone_deps(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> AsyncIterator[WorkerDeps]:
    settings = make_settings(
        server_urls,
        **twilio_fake.settings_overrides(),
        delivery_idle_wait_seconds=0.0,
        voice_per_phone_limit=2,
        voice_per_phone_window_seconds=600.0,
    )
    async with worker_deps(settings) as d:
        yield d


async def test_calls_to_one_number_are_capped_like_sms(
    phone_deps: WorkerDeps, db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> None:
    limit, window = 2, 600.0  # the fixture's settings
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'U')")
    await db.execute("INSERT INTO members (id, name) VALUES ('officer', 'O')")
    await db.execute("INSERT INTO member_units VALUES ('officer', 'u')")
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) VALUES ('officer', 'voice', '\"+14155550100\"')"
    )
    notices = []
    for _ in range(limit + 2):  # one DING after another, each ringing the same phone
        nid = str(
            await db.fetchval(
                "INSERT INTO notices (kind, title, body, audience, channels) "
                "VALUES ('ding', 't', 'b', '{\"units\": [\"u\"]}', '{voice}') RETURNING id"
            )
        )
        await fanout_notice(phone_deps, nid)
        await deliver_notice_channel(phone_deps, nid, "voice")
        notices.append(nid)
    assert len(twilio_fake.calls) == limit
    held = await db.fetch(
        "SELECT state, wait_reason FROM deliveries WHERE notice_id = ANY($1::uuid[])", notices
    )
    assert sorted((r["state"], r["wait_reason"]) for r in held).count(("queued", "capped")) == 2
    await advance_clock(db, window + 1)  # the window passes: the held calls go
    for nid in notices:
        await deliver_notice_channel(phone_deps, nid, "voice")
    assert len(twilio_fake.calls) == limit + 2


# --- defect 11: a step counts without locking, one event per step, paged events --------------------


async def test_a_step_never_waits_for_a_read_in_progress(env: Env, db: asyncpg.Connection) -> None:
    """The step counts and places the unread without locking them: only the recipients it
    inserts a reminder for are locked (by the status triggers of schemas/0006), so a read in
    progress on anyone else never holds the step up."""
    deps, channel = env
    await make_members(db, 4)
    nid = await make_notice(
        deps, db, ["inapp"], escalation={"steps": [{"after": 60, "remind": ["scripted"]}]}
    )
    # m00000 cannot be reminded on this channel: the step has no row of theirs to write.
    await db.execute("DELETE FROM contacts WHERE member_id = 'm00000' AND channel = 'scripted'")
    await advance_clock(db, 61)
    reader = await asyncpg.connect(deps.settings.database_url)
    try:
        tx = reader.transaction()
        await tx.start()  # a read in progress holds its recipient row
        await reader.execute(
            "UPDATE recipients SET read_at = notifier_now(), read_via = 'api' "
            "WHERE notice_id = $1 AND member_id = 'm00000'",
            nid,
        )
        done = await asyncio.wait_for(tick_once(deps), timeout=15)  # a bound, not a measurement
        assert done["escalations"] == 1
        await tx.commit()
    finally:
        await reader.close()
    fired = await db.fetchval(
        "SELECT detail FROM notice_events WHERE notice_id = $1 AND kind = 'step_fired'", nid
    )
    assert json.loads(fired)["unread"] == 4  # the read had not committed when the step counted
    await deliver_notice_channel(deps, nid, "scripted")
    assert sorted(o.member_id for o in channel.sent) == ["m00001", "m00002", "m00003"]


async def test_members_a_step_could_not_reach_are_one_event_per_step(
    env: Env, db: asyncpg.Connection, client: Client
) -> None:
    deps, _ = env
    await make_members(db, 6)
    await db.execute("DELETE FROM contacts WHERE member_id IN ('m00001', 'm00003', 'm00004')")
    policy = {"steps": [{"after": 60, "remind": ["scripted"]}, {"after": 120, "remind": ["scripted"]}]}
    nid = await make_notice(deps, db, ["inapp"], escalation=policy)
    for _ in range(2):
        await advance_clock(db, 61)
        await tick_once(deps)
    rows = await db.fetch(
        "SELECT member_id, detail FROM notice_events "
        "WHERE notice_id = $1 AND kind = 'not_reached' ORDER BY id",
        nid,
    )
    assert [
        (r["member_id"], json.loads(r["detail"])["step"], json.loads(r["detail"])["members"]) for r in rows
    ] == [
        (None, 1, 3),
        (None, 2, 3),
    ]
    events = (await (await client.get(f"/v1/notices/{nid}/events", headers=auth())).json())["items"]
    assert [e["members"] for e in events if e["kind"] == "not_reached"] == [3, 3]

    async def timeline_kinds(member_id: str) -> list[str | None]:
        resp = await client.get(f"/v1/notices/{nid}/recipients/{member_id}", headers=auth())
        assert resp.status == 200, await resp.text()
        return [e.get("kind") for e in (await resp.json())["entries"] if e["type"] == "event"]

    assert (await timeline_kinds("m00003")).count("not_reached") == 2
    unreached_elsewhere = await timeline_kinds("m00002")
    assert "not_reached" not in unreached_elsewhere and unreached_elsewhere.count("step_fired") == 2


async def test_events_page_with_a_cursor_completely_and_stably(
    env: Env, db: asyncpg.Connection, client: Client
) -> None:
    deps, _ = env
    await make_members(db, 1)
    nid = await make_notice(deps, db, ["inapp"])
    # 6,001 events, three to each instant (ties broken by id), more than the old cap of 5,000.
    await db.execute(
        "INSERT INTO notice_events (notice_id, kind, detail, at) "
        "SELECT $1, 'step_fired', jsonb_build_object('i', i), "
        "       timestamptz '2026-01-01 00:00:00+00' + (i / 3) * interval '1 millisecond' "
        "FROM generate_series(0, 6000) AS i",
        nid,
    )
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "2500", **({"cursor": cursor} if cursor else {})}
        resp = await client.get(f"/v1/notices/{nid}/events", params=query, headers=auth())
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen += [e["detail"]["i"] for e in page["items"]]
        pages += 1
        if pages == 1:  # an event recorded while paging shows up at the end, nothing repeats
            await db.execute(
                "INSERT INTO notice_events (notice_id, kind, detail, at) "
                "VALUES ($1, 'recalled', '{\"i\": 6001}', timestamptz '2026-01-02 00:00:00+00')",
                nid,
            )
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(range(6002))
    bad = await client.get(f"/v1/notices/{nid}/events", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=auth())
    assert bad.status == 422


async def test_the_step_count_reads_the_counters_and_the_unread_listing_the_unread_index(
    env: Env, db: asyncpg.Connection
) -> None:
    deps, _ = env
    await make_members(db, 50)
    nid = await make_notice(deps, db, ["inapp"])
    await db.execute("UPDATE recipients SET read_at = notifier_now() WHERE member_id < 'm00040'")
    await db.execute("ANALYZE recipients")
    async with db.transaction():
        # Plans that a cached prepared statement would use, whatever the table's size today.
        await db.execute("SET LOCAL enable_seqscan = off")
        await db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await db.execute(f"PREPARE unread_count(uuid) AS {escalations.COUNTS}")
        count_plan = await db.fetch(f"EXPLAIN EXECUTE unread_count('{nid}')")
        listing = recipients.PAGES["unread", True]  # ?status=unread&unit=...&cursor=...
        await db.execute(f"PREPARE unread_page(uuid, int, text[], text) AS {listing}")
        page_plan = await db.fetch(f"EXPLAIN EXECUTE unread_page('{nid}', 101, '{{u}}', 'm00010')")
        await db.execute(f"PREPARE member_events(uuid, text, int) AS {timeline.FOR_RECIPIENT}")
        events_plan = await db.fetch(f"EXPLAIN EXECUTE member_events('{nid}', 'm00001', 1000)")
        await db.execute("DEALLOCATE ALL")
    count_text = "\n".join(r[0] for r in count_plan)
    # a few counter shards, not a walk of every unread recipient (40-50 ms at 100,000)
    assert "notice_counts" in count_text and "recipients" not in count_text.replace("sum(recipients)", ""), (
        count_text
    )
    page_text = "\n".join(r[0] for r in page_plan)
    assert "Index Scan using recipients_unread_idx" in page_text, page_text
    assert "(member_id > $4)" in page_text, page_text  # the cursor bounds the index scan
    # A recipient's timeline: its own events and the notice's, each from its own index (an OR of
    # both would read every event of the notice).
    events_text = "\n".join(r[0] for r in events_plan)
    assert "notice_events_member_idx" in events_text and "notice_events_notice_wide_idx" in events_text, (
        events_text
    )
    rows = await recipients.page(db, nid, after="m00043", status="unread", limit=100, unit_id="u")
    assert [r["member_id"] for r in rows] == [f"m{i:05d}" for i in range(44, 50)]
