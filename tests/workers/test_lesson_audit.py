"""The daily lesson on the record: each run the scheduler makes writes one audit entry (actor
``scheduler``) in the statement that creates it -- two schedulers racing write one per run -- and
the lesson API's changes are audited like every other change."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from notifier.workers.lessons import send_due_lessons
from tests.conftest import auth
from tests.helpers import get, put
from tests.workers.test_lessons import (  # noqa: F401 - env is a fixture
    SHANGHAI,
    Env,
    close_deps,
    env,
    go_to,
    lesson,
    lesson_notices,
    make_deps,
    next_local,
    unit,
)


async def test_each_lesson_run_leaves_one_scheduler_entry(env: Env, client: TestClient[Any, Any]) -> None:  # noqa: F811
    units = ["ua", "ub", "uc"]
    at_0800 = await next_local(env.db, SHANGHAI, 8, 0)
    for u in units:
        await unit(env, u)
        await lesson(env, u, at_0800.date())
    await go_to(env.db, at_0800)
    other = await make_deps(env.deps.settings)
    try:
        results = await asyncio.gather(send_due_lessons(env.deps), send_due_lessons(other))
        assert sum(results) == 3
        assert await send_due_lessons(other) == 0
    finally:
        await close_deps(other)
    notices = {r["scope_unit_id"]: str(r["id"]) for r in await lesson_notices(env.db)}
    rows = await env.db.fetch(
        "SELECT actor_key_id, actor_role, action, target_type, target_id, unit_ids, address, details "
        "FROM audit_log ORDER BY target_id"
    )
    assert sorted((r["target_id"], r["unit_ids"][0]) for r in rows) == sorted(
        (nid, u) for u, nid in notices.items()
    )
    for r in rows:
        assert (r["actor_key_id"], r["actor_role"], r["action"], r["target_type"], r["address"]) == (
            None,
            "scheduler",
            "lesson.send",
            "notice",
            None,
        )
        assert json.loads(r["details"]) == {"day": at_0800.date().isoformat(), "unit_id": r["unit_ids"][0]}
    # Read through the API: the scheduler is an actor of its own, not the admin token.
    page = await get(client, "/v1/audit?actor=scheduler")
    assert {e["target_id"] for e in page["items"]} == set(notices.values())
    assert (await get(client, "/v1/audit?actor=admin"))["items"] == []


async def test_lesson_changes_through_the_api_are_audited(client: TestClient[Any, Any]) -> None:
    await put(client, "/v1/units/u", {"name": "Unit", "parent_id": None})
    lesson_body = {"title": "Lesson", "body": "Confidential study text"}
    await put(client, "/v1/units/u/lessons/2031-01-02", lesson_body)
    await put(client, "/v1/units/u/lessons/2031-01-02", {**lesson_body, "title": "Lesson, revised"})
    resp = await client.delete("/v1/units/u/lessons/2031-01-02", headers=auth())
    assert resp.status == 204
    items = (await get(client, "/v1/audit?unit=u"))["items"]
    lessons = [e for e in reversed(items) if e["target_type"] == "lesson"]
    assert [e["action"] for e in lessons] == ["lesson.create", "lesson.update", "lesson.delete"]
    assert {e["target_id"] for e in lessons} == {"u/2031-01-02"}
    assert all(e["unit_ids"] == ["u"] and e["actor_role"] == "admin" for e in lessons)
    assert "Confidential" not in str(items)
