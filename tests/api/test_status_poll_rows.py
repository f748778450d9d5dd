"""The status poll (GET /v1/notices/{id}, no ?unit): the direct answer against the
model's bytes on rows of unusual shapes, the status pool during a database outage, its generic
plans once the tables grew after they were made, and scoping."""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from notifier.api.keys import DEPS
from notifier.api.notices import NoticeOut, notice_answer
from notifier.api.routing import json_response
from notifier.app import create_app
from notifier.db import notices
from notifier.db.visibility import visible_notice_with_counts
from notifier.settings import Settings
from tests.api.conftest import Org
from tests.api.test_scoping import _active, _notice_by
from tests.conftest import auth, wait_until
from tests.faultproxy import FaultProxy
from tests.helpers import get

ROWS: dict[str, dict[str, str]] = {
    "floats-ints-nested": {
        "escalation": json.dumps(
            {
                "policy": "p",
                "steps": [{"after": 1e16, "big": 2**70, "n": [1, 2.5, {"d": -0.0, "e": 1e-4}], "b": True}],
                "repeat": 1.0,
                "z": None,
                "é": "中",
            }
        )
    },
    "huge-numeric": {"escalation": '{"a": 1e400, "b": 123456789012345678901234567890.5}'},
    "text": {"title": '\x01\x1f\x7f \u2028\u2029 é 中 😀 "q" \\ / \n\t'},
    "audience-empty": {"audience": "{}"},
    "audience-units-only": {"audience": '{"units": ["c"]}'},
    "times-edges": {
        "created_at": "'0001-01-01 00:00:00+00'",
        "send_at": "'9999-12-31 23:59:59.999999+00'",
        "expires_at": "'2026-01-01 00:00:00.1+08'",
        "recalled_at": "'2026-06-01 12:00:00.000001+00'",
    },
    "times-infinite": {"expires_at": "'infinity'", "send_at": "'-infinity'"},
    # A row NoticeOut refuses (no API path writes one) is not written by the direct path either.
    "escalation-not-object": {"escalation": "[1, 2]"},
}


@pytest.mark.parametrize("case", list(ROWS))
async def test_the_direct_answer_is_the_models_bytes(
    client: TestClient[Any, Any], db: asyncpg.Connection, case: str
) -> None:
    cols = {"audience": '{"members": ["m"], "units": []}', **ROWS[case]}
    title = cols.pop("title", "t")
    sets = {k: (f"'{v}'::jsonb" if k in ("audience", "escalation") else v) for k, v in cols.items()}
    names = ", ".join(sets)
    values = ", ".join(sets.values())
    nid = await db.fetchval(
        f"INSERT INTO notices (kind, title, body, channels, {names}) "
        f"VALUES ('notice', $1, 'b', ARRAY['inapp'], {values}) RETURNING id::text",
        title,
    )
    async with client.app[DEPS].status_pool.acquire() as conn:
        found = await visible_notice_with_counts(conn, nid, None)
    assert found is not None
    view, counts = found
    try:
        model = json_response(
            NoticeOut.model_validate(notices.as_dict(view.row, counts)).model_dump(mode="json")
        )
    except ValidationError:
        with pytest.raises(ValidationError):  # refused alike: the direct path writes nothing else
            notice_answer(view.row, counts)
        return
    assert notice_answer(view.row, counts).body == model.body


async def test_the_status_poll_answers_503_while_the_database_is_away(
    settings: Settings, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await FaultProxy.for_url(settings.database_url).start()
    try:
        tuned = settings.model_copy(update={"database_url": proxy.url_for(settings.database_url)})
        nid = await db.fetchval(
            "INSERT INTO notices (kind, title, body, channels, audience) "
            "VALUES ('notice', 't', 'b', ARRAY['inapp'], '{\"members\": [\"m\"]}') RETURNING id::text"
        )
        async with TestClient(TestServer(create_app(tuned), host="127.0.0.1")) as api:
            assert (await api.get(f"/v1/notices/{nid}", headers=auth())).status == 200
            await proxy.cut()
            with caplog.at_level(logging.WARNING):
                for _ in range(3):  # the pooled session lost, then new ones refused
                    resp = await api.get(f"/v1/notices/{nid}", headers=auth())
                    assert resp.status == 503, await resp.text()
                    assert resp.content_type == "application/problem+json"
                    assert int(resp.headers["Retry-After"]) > 0
            assert not any(r.levelno >= logging.ERROR for r in caplog.records)
            await proxy.restore()

            async def back() -> bool:
                return (await api.get(f"/v1/notices/{nid}", headers=auth())).status == 200

            await wait_until(back, within=15)
    finally:
        await proxy.stop()


GROWN = ("notices", "notice_counts", "notice_unit_counts", "notice_reach", "units")


async def test_the_generic_plans_reach_rows_by_key_after_the_tables_grew(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    """Plans made while the tables were nearly empty (no ANALYZE since), executed once they hold
    many rows: the pages each execution touches stay a handful."""
    for t in GROWN:
        await db.execute(f"ALTER TABLE {t} SET (autovacuum_enabled = false)")
    try:
        nid = await _notice_by(client, org.b1_service, {"units": ["b1"]})
        await _active(client, nid)
        for _ in range(6):
            await get(client, f"/v1/notices/{nid}")
            await get(client, f"/v1/notices/{nid}", token=org.b1_service)
        await db.execute(
            "INSERT INTO units (id, name, parent_id) "
            "SELECT 'x' || i, 'x', 'c' FROM generate_series(1, 20000) i"
        )
        await db.execute(
            "INSERT INTO notices "
            "(kind, title, body, channels, audience, scope_unit_id, state, fanned_out_at) "
            "SELECT 'notice', 't', 'b', ARRAY['inapp'], '{\"units\": [\"c\"]}', 'x' || (i % 20000 + 1), "
            "'active', now() "
            "FROM generate_series(1, 20000) i"
        )
        await db.execute(
            "INSERT INTO notice_counts (notice_id, shard) SELECT id, s FROM notices, generate_series(0, 3) s "
            "WHERE id <> $1::uuid",
            nid,
        )
        await db.execute(
            "INSERT INTO notice_unit_counts (notice_id, unit_id, direct, shard) "
            "SELECT id, u, d, 0 FROM notices, unnest(ARRAY['c', 'b1']) u, unnest(ARRAY[true, false]) d "
            "WHERE id <> $1::uuid",
            nid,
        )
        pool = client.app[DEPS].status_pool
        checked = 0
        conns = [await pool.acquire() for _ in range(pool.get_size())]
        try:
            for conn in conns:
                for row in await conn.fetch(
                    "SELECT name, statement, generic_plans FROM pg_prepared_statements "
                    "WHERE generic_plans > 0 AND statement LIKE '%FROM notice%counts WHERE%'"
                ):
                    args = f"'{nid}'" if "$2" not in row["statement"] else f"'{nid}', 'b1'"
                    plan = await conn.fetchval(
                        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {row['name']}({args})"
                    )
                    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
                    pages = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
                    assert pages < 60, (pages, json.dumps(top)[:3000])
                    checked += 1
        finally:
            for conn in conns:
                await pool.release(conn)
        assert checked >= 2
    finally:
        for t in GROWN:
            await db.execute(f"ALTER TABLE {t} RESET (autovacuum_enabled)")


async def test_a_secretarys_poll_sees_its_slice_and_not_others_notices(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    whole = await _notice_by(client, None, {"units": ["c"]})
    other = await _notice_by(client, org.b2_service, {"units": ["b2"]})
    await _active(client, whole)
    await _active(client, other)
    mine = await get(client, f"/v1/notices/{whole}", token=org.b1_secretary)
    all_ = await get(client, f"/v1/notices/{whole}")
    in_b1 = await db.fetchval(
        "SELECT count(*) FROM recipients r JOIN member_units mu ON mu.member_id = r.member_id "
        "WHERE r.notice_id = $1::uuid AND mu.unit_id IN ('g1a', 'g1b')",
        whole,
    )
    assert 0 < mine["counts"]["recipients"] == in_b1 < all_["counts"]["recipients"]
    await get(client, f"/v1/notices/{other}", token=org.b1_secretary, status=404)
