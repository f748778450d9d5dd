"""``GET /v1/notices/{id}`` without ``?unit=``, the status poll: on the API's pool for status polls,
whose sessions plan the poll's statement once (db/visibility.py STATUS_SESSION) and reach every
row by key, for an admin and for a unit-bound caller alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.api.keys import DEPS
from notifier.api.notices import NoticeOut, notice_answer
from notifier.api.routing import json_response
from notifier.db import notices
from notifier.db.visibility import (
    VISIBLE_TO_ADMIN_WITH_COUNTS,
    VISIBLE_WITH_COUNTS,
    visible_notice_with_counts,
)
from tests.api.conftest import Org
from tests.api.test_scoping import _active, _notice_by
from tests.conftest import auth
from tests.helpers import get, post


async def test_the_status_poll_is_planned_once_per_session_and_reaches_rows_by_key(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
    await _active(client, nid)
    for _ in range(3):
        whole = await get(client, f"/v1/notices/{nid}")
        mine = await get(client, f"/v1/notices/{nid}", token=org.b1_service)
    recipients = await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1::uuid", nid)
    assert whole["counts"]["recipients"] == mine["counts"]["recipients"] == recipients > 0
    pool = client.app[DEPS].status_pool
    conns = [await pool.acquire() for _ in range(pool.get_size())]  # every session it opened
    try:
        args = {VISIBLE_TO_ADMIN_WITH_COUNTS: f"'{nid}'", VISIBLE_WITH_COUNTS: f"'{nid}', 'b1'"}
        plans = {statement: [0, 0] for statement in args}
        for conn in conns:
            for row in await conn.fetch(
                "SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement = ANY($1::text[])",
                list(plans),
            ):
                plans[row["statement"]][0] += row["generic_plans"]
                plans[row["statement"]][1] += row["custom_plans"]
                # The plan kept: by key, whatever the tables' size when it was made.
                explained = await conn.fetch(f"EXPLAIN EXECUTE {row['name']}({args[row['statement']]})")
                plan = "\n".join(r[0] for r in explained)
                assert "Seq Scan" not in plan and "Index" in plan, plan
        # Three polls each (and the waits for active, the admin's): planned once, then reused.
        assert plans[VISIBLE_WITH_COUNTS][0] >= 3 and plans[VISIBLE_WITH_COUNTS][1] == 0
        assert plans[VISIBLE_TO_ADMIN_WITH_COUNTS][0] >= 3 and plans[VISIBLE_TO_ADMIN_WITH_COUNTS][1] == 0
    finally:
        for conn in conns:
            await pool.release(conn)


BODY: dict[str, Any] = {"kind": "notice", "title": "t", "body": "b"}


async def test_the_status_answer_is_the_models_json_byte_for_byte(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    """The poll's answer is written without building NoticeOut (api/notices.py notice_answer): for
    notices of every shape -- times set or not, recalled, an escalation snapshot, members or units,
    text that JSON escapes -- the bytes the model would have written."""
    later = datetime.now(UTC) + timedelta(hours=2)
    bodies: list[dict[str, Any]] = [
        {
            "kind": "notice",
            "title": 'Say "hi"\\ \n\t\x01 \u2028 é 中 😀',
            "body": "b",
            "audience": {"units": ["c"]},
        },
        {"kind": "ding", "title": "t", "body": "b", "audience": {"members": ["m1a"], "units": ["b1"]}},
        {
            "kind": "notice",
            "title": "later",
            "body": "b",
            "audience": {"members": ["m2a"]},
            "send_at": later.isoformat(),
            "expires_at": (later + timedelta(microseconds=500_000)).isoformat(),
            "escalation": {"steps": [{"after": "PT90S", "remind": ["inapp"]}], "repeat": 1},
        },
    ]
    ids = [(await post(client, "/v1/notices", body, status=202))["id"] for body in bodies]
    await _active(client, ids[0])
    await _active(client, ids[1])
    resp = await client.post(f"/v1/notices/{ids[1]}/recall", headers=auth())
    assert resp.status < 300, await resp.text()
    pool = client.app[DEPS].status_pool
    answers = 0
    for nid in ids:
        for root in (None, "c", "b1"):
            async with pool.acquire() as conn:
                found = await visible_notice_with_counts(conn, nid, root)
            if found is None:
                continue
            view, counts = found
            model = json_response(
                NoticeOut.model_validate(notices.as_dict(view.row, counts)).model_dump(mode="json")
            )
            fast = notice_answer(view.row, counts)
            assert (fast.body, fast.content_type, fast.charset) == (
                model.body,
                model.content_type,
                model.charset,
            )
            answers += 1
    assert answers >= len(ids) * 2
    recalled = await get(client, f"/v1/notices/{ids[1]}")
    assert recalled["state"] == "recalled" and recalled["recalled_at"] is not None
    scheduled = await get(client, f"/v1/notices/{ids[2]}")
    assert scheduled["state"] == "scheduled" and scheduled["escalation"]["steps"][0]["after"] == 90


async def test_a_notice_the_fast_answer_would_write_otherwise_goes_through_the_model(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    """A row the fast answer would not write as the model does goes through the model: a policy
    snapshot with a float that json.dumps writes in exponent form."""
    nid = (await post(client, "/v1/notices", {**BODY, "audience": {"units": ["c"]}}, status=202))["id"]
    await db.execute(
        "UPDATE notices SET escalation = $2::jsonb WHERE id = $1::uuid",
        nid,
        '{"policy": null, "steps": [{"after": 0.00001}], "repeat": 0}',
    )
    async with client.app[DEPS].status_pool.acquire() as conn:
        found = await visible_notice_with_counts(conn, nid, None)
    assert found is not None
    view, counts = found
    model = json_response(NoticeOut.model_validate(notices.as_dict(view.row, counts)).model_dump(mode="json"))
    assert notice_answer(view.row, counts).body == model.body
    assert b'"after":1e-05' in (await (await client.get(f"/v1/notices/{nid}", headers=auth())).read())
