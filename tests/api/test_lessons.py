"""/v1/units/{unit_id}/lessons: the daily lesson per unit and local date. Admins and service keys
write, secretaries read, everything scoped to the caller's subtree; errors name the field; each
lesson shows when it goes and whether it went.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.api.lessons import MAX_QUIZ_BYTES
from notifier.channels.registry import build_registry
from notifier.db.pool import create_pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.lessons import send_due_lessons
from notifier.workers.queue import create_queue
from tests.api.conftest import Org, fields, problem
from tests.conftest import advance_clock, auth
from tests.helpers import get, put

Client = TestClient[Any, Any]
LESSON = {"title": "第一课", "body": "Study the three points.", "quiz": {"questions": [{"q": "1+1", "a": 2}]}}


@pytest.fixture
async def deps(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[WorkerDeps]:
    d = WorkerDeps(
        settings, await create_pool(settings), await create_queue(settings), build_registry(settings)
    )
    yield d
    await d.channels.close()
    await d.queue.aclose()
    await d.pool.close()


async def lesson_count(db: asyncpg.Connection) -> int:
    n = await db.fetchval("SELECT count(*) FROM lessons")
    assert isinstance(n, int)
    return n


async def test_put_get_list_and_delete(client: Client, db: asyncpg.Connection, org: Org) -> None:
    path = "/v1/units/b1/lessons/2030-03-01"
    resp = await client.put(path, json=LESSON, headers=auth())
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert {k: v for k, v in created.items() if k not in ("created_at", "updated_at")} == {
        "unit_id": "b1",
        "date": "2030-03-01",
        **LESSON,
        "quiz_id": None,
        "send_at": "2030-03-01T00:00:00Z",  # 08:00 Asia/Shanghai, the defaults
        "state": "scheduled",
        "notice_id": None,
        "sent_at": None,
    }
    assert await get(client, path) == created

    # Replacing it: 200, and a quiz left out is cleared.
    resp = await client.put(path, json={"title": "第一课 (rev.)", "body": "Revised."}, headers=auth())
    assert resp.status == 200, await resp.text()
    updated = await resp.json()
    assert (updated["title"], updated["body"], updated["quiz"]) == ("第一课 (rev.)", "Revised.", None)
    assert updated["created_at"] == created["created_at"]
    assert await lesson_count(db) == 1

    # send_at follows the time zone and lesson time inherited from the committee.
    await put(client, "/v1/units/c", {"name": "Committee", "timezone": "Asia/Urumqi", "lesson_time": "07:30"})
    assert (await get(client, path))["send_at"] == "2030-03-01T01:30:00Z"

    for day in ("2030-03-03", "2030-03-02", "2030-02-28"):
        await put(client, f"/v1/units/b1/lessons/{day}", LESSON)
    await put(client, "/v1/units/g1a/lessons/2030-03-02", LESSON)  # another unit's: not listed

    def days(page: dict[str, Any]) -> list[str]:
        return [i["date"] for i in page["items"]]

    listed = await get(client, "/v1/units/b1/lessons")
    assert days(listed) == ["2030-02-28", "2030-03-01", "2030-03-02", "2030-03-03"]
    assert listed["next_cursor"] is None
    ranged = await get(client, "/v1/units/b1/lessons?from=2030-03-01&to=2030-03-02")
    assert days(ranged) == ["2030-03-01", "2030-03-02"]
    page1 = await get(client, "/v1/units/b1/lessons?from=2030-03-01&limit=2")
    assert days(page1) == ["2030-03-01", "2030-03-02"] and page1["next_cursor"] == "2030-03-02"
    page2 = await get(client, f"/v1/units/b1/lessons?from=2030-03-01&limit=2&cursor={page1['next_cursor']}")
    assert days(page2) == ["2030-03-03"] and page2["next_cursor"] is None

    resp = await client.delete(path, headers=auth())
    assert resp.status == 204
    await problem(await client.get(path, headers=auth()), 404)
    await problem(await client.delete(path, headers=auth()), 404)
    assert days(await get(client, "/v1/units/b1/lessons")) == ["2030-02-28", "2030-03-02", "2030-03-03"]


async def test_roles_and_scoping(client: Client, db: asyncpg.Connection, org: Org) -> None:
    await put(client, "/v1/units/b2/lessons/2030-03-01", LESSON)
    # A branch's service key writes its own subtree ...
    resp = await client.put("/v1/units/g1a/lessons/2030-03-01", json=LESSON, headers=auth(org.b1_service))
    assert resp.status == 201, await resp.text()
    assert (await get(client, "/v1/units/g1a/lessons/2030-03-01", token=org.b1_service))["unit_id"] == "g1a"
    # ... and nothing beside or above it, which reads exactly like a unit that does not exist.
    before = await lesson_count(db)
    for unit in ("b2", "g2a", "c", "nope"):
        for method in ("GET", "PUT", "DELETE"):
            resp = await client.request(
                method, f"/v1/units/{unit}/lessons/2030-03-01", json=LESSON, headers=auth(org.b1_service)
            )
            body = await problem(resp, 404)
            assert body["detail"] == "unit not found"
        await problem(await client.get(f"/v1/units/{unit}/lessons", headers=auth(org.b1_service)), 404)
    # Secretaries read; they do not write. Member keys do neither.
    assert (await get(client, "/v1/units/g1a/lessons/2030-03-01", token=org.b1_secretary))[
        "title"
    ] == "第一课"
    assert len((await get(client, "/v1/units/g1a/lessons", token=org.b1_secretary))["items"]) == 1
    for method in ("PUT", "DELETE"):
        resp = await client.request(
            method, "/v1/units/g1a/lessons/2030-03-01", json=LESSON, headers=auth(org.b1_secretary)
        )
        await problem(resp, 403)
    for path in ("/v1/units/g1a/lessons/2030-03-01", "/v1/units/g1a/lessons"):
        await problem(await client.get(path, headers=auth(org.m1a_member)), 403)
    await problem(await client.get("/v1/units/b2/lessons", headers=auth(org.b1_secretary)), 404)
    assert await lesson_count(db) == before
    # No lesson on that date in a visible unit: 404 naming the lesson.
    body = await problem(
        await client.get("/v1/units/g1b/lessons/2030-03-01", headers=auth(org.b1_service)), 404
    )
    assert body["detail"] == "lesson not found"


@pytest.mark.parametrize(
    ("date", "body", "errors"),
    [
        ("2030-02-30", LESSON, [("date", "must be a date YYYY-MM-DD such as 2024-07-01")]),
        ("20300301", LESSON, [("date", "must be a date YYYY-MM-DD such as 2024-07-01")]),
        ("2030-3-1", LESSON, [("date", "must be a date YYYY-MM-DD such as 2024-07-01")]),
        ("2030-03-01", {**LESSON, "points": 5}, [("points", "unknown field")]),
        ("2030-03-01", {"body": "B"}, [("title", "Field required")]),
        ("2030-03-01", {"title": "T", "body": ""}, [("body", "String should have at least 1 character")]),
        (
            "2030-03-01",
            {"title": "T" * 201, "body": "B"},
            [("title", "String should have at most 200 characters")],
        ),
        (
            "2030-03-01",
            {"title": "T", "body": "B", "quiz": [1, 2]},
            [("quiz", "Input should be a valid dictionary")],
        ),
        (
            "2030-03-01",
            {"title": "T", "body": "B", "quiz": {"text": "x" * MAX_QUIZ_BYTES}},
            [("quiz", f"Value error, at most {MAX_QUIZ_BYTES} bytes of JSON")],
        ),
    ],
)
async def test_bad_lessons_are_422_naming_the_field(
    client: Client,
    db: asyncpg.Connection,
    org: Org,
    date: str,
    body: dict[str, Any],
    errors: list[tuple[str, str]],
) -> None:
    resp = await client.put(f"/v1/units/b1/lessons/{date}", json=body, headers=auth())
    await problem(resp, 422, [{"field": f, "message": m} for f, m in errors])
    assert await lesson_count(db) == 0


async def test_a_quiz_just_under_the_cap_is_kept_as_given(
    client: Client, db: asyncpg.Connection, org: Org
) -> None:
    quiz = {"text": "x" * (MAX_QUIZ_BYTES - 20)}
    saved = await put(client, "/v1/units/b1/lessons/2030-03-01", {"title": "T", "body": "B", "quiz": quiz})
    assert saved["quiz"] == quiz


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2030-13-01", "query.from"),
        ("to=tomorrow", "query.to"),
        ("from=2030-03-02&to=2030-03-01", "query.to"),
        ("limit=0", "query.limit"),
        ("cursor=x", "query.cursor"),
        ("since=2030-03-01", "query.since"),
    ],
)
async def test_bad_list_queries_name_the_parameter(client: Client, org: Org, query: str, field: str) -> None:
    body = await problem(await client.get(f"/v1/units/b1/lessons?{query}", headers=auth()), 422)
    assert fields(body) == [field]


async def test_get_shows_whether_and_when_it_was_sent(
    client: Client, db: asyncpg.Connection, org: Org, deps: WorkerDeps
) -> None:
    # Move the engine to 09:00 Shanghai; today's lesson, put after its 08:00, goes at the next tick.
    shanghai = ZoneInfo("Asia/Shanghai")
    now = await db.fetchval("SELECT notifier_now()")
    local = now.astimezone(shanghai)
    nine = local.replace(hour=9, minute=0, second=0, microsecond=0)
    if nine <= local:
        nine = dt.datetime.combine(nine.date() + dt.timedelta(days=1), nine.timetz())
    await advance_clock(db, (nine - now).total_seconds())
    today = nine.date()
    yesterday, tomorrow = today - dt.timedelta(days=1), today + dt.timedelta(days=1)
    for day in (yesterday, today, tomorrow):
        await put(client, f"/v1/units/b1/lessons/{day}", LESSON)
    assert await send_due_lessons(deps) == 1

    sent = await get(client, f"/v1/units/b1/lessons/{today}", token=org.b1_secretary)
    assert sent["state"] == "sent" and sent["notice_id"]
    assert dt.datetime.fromisoformat(sent["sent_at"]) >= nine
    assert dt.datetime.fromisoformat(sent["send_at"]) == dt.datetime.combine(today, dt.time(8), shanghai)
    states = {i["date"]: i["state"] for i in (await get(client, "/v1/units/b1/lessons"))["items"]}
    assert states == {str(yesterday): "missed", str(today): "sent", str(tomorrow): "scheduled"}

    # The notice belongs to b1: its secretary sees it, the other branch does not.
    notice = await get(client, f"/v1/notices/{sent['notice_id']}", token=org.b1_secretary)
    assert (notice["kind"], notice["title"], notice["audience"]) == (
        "lesson",
        LESSON["title"],
        {"units": ["b1"], "members": []},
    )
    await problem(await client.get(f"/v1/notices/{sent['notice_id']}", headers=auth(org.b2_service)), 404)

    # A sent lesson stays: it cannot be deleted; an edit changes the lesson, not what went out.
    body = await problem(await client.delete(f"/v1/units/b1/lessons/{today}", headers=auth()), 409)
    assert body["errors"] == [{"field": "date", "message": "already sent"}]
    edited = await put(client, f"/v1/units/b1/lessons/{today}", {"title": "Corrected", "body": "B"})
    assert (edited["state"], edited["notice_id"], edited["sent_at"]) == (
        "sent",
        sent["notice_id"],
        sent["sent_at"],
    )
    assert (await get(client, f"/v1/notices/{sent['notice_id']}"))["title"] == LESSON["title"]
    assert await send_due_lessons(deps) == 0
    # An unsent one can go.
    assert (await client.delete(f"/v1/units/b1/lessons/{tomorrow}", headers=auth())).status == 204
