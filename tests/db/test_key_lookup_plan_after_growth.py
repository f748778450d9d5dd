"""An API key's lookup (db/api_keys.py AUTHENTICATE, run as authenticate_key(): schemas/0035) is
planned once per session and keeps reaching the key and its rate bucket by index however much
``api_keys`` and ``rate_buckets`` grew since: the API's sessions plan every other statement on every
execution (db/pool.py API_SESSION), which was most of what a key cost per request."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from notifier.db.api_keys import AUTHENTICATE, AUTHENTICATE_CALL, hash_token
from notifier.db.pool import API_SESSION
from notifier.settings import Settings
from tests.db.test_receipt_plan_after_growth import _nested_plans, _relations, _seq_scans

# resolution, roles, rates, bursts: the service rate so slow (a token per 1,000 s) that the time the
# test takes under load refills nothing its tokens_left assertions could see (at 1/s it was flaky)
LIMITS = (60.0, ["service", "member"], [0.001, 10.0], [200.0, 20.0])


async def test_the_key_lookup_is_planned_once_and_by_index_after_the_tables_grew(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO units (id, name) VALUES ('b', 'B')")
    await db.execute(
        "INSERT INTO api_keys (name, role, unit_id, token_hash)"
        " SELECT 'k' || g, 'service', 'b', sha256(('t' || g)::bytea) FROM generate_series(1, 3) g"
    )
    await db.execute("ANALYZE")  # their statistics: (nearly) empty
    api = await asyncpg.connect(settings.database_url, server_settings=API_SESSION)  # as the API's pool
    try:
        for _ in range(6):  # planned (and kept) while the tables are small
            row = await api.fetchrow(AUTHENTICATE_CALL, hash_token("t1"), *LIMITS)
            assert row is not None and row["allowed"]
        await db.execute(
            "INSERT INTO api_keys (name, role, unit_id, token_hash)"
            " SELECT 'x' || g, 'service', 'b', sha256(('x' || g)::bytea) FROM generate_series(1, 20000) g;"
            " INSERT INTO rate_buckets (key, tokens, updated_at)"
            " SELECT 'api-key:' || id, 5, notifier_now() FROM api_keys WHERE name LIKE 'x%'"
        )
        logged: list[str] = []
        api.add_log_listener(lambda _c, m: logged.append(m.message))
        await api.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_format = json;"
            " SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = log;"
            " SET client_min_messages = log"
        )
        # a key whose bucket is new, one whose bucket has rows, an unknown token
        answers: list[Any] = [
            await api.fetchrow(AUTHENTICATE_CALL, hash_token(token), *LIMITS)
            for token in ("t2", "x7", "nope")
        ]
        await api.execute("RESET client_min_messages")
    finally:
        await api.close()
    assert [(a["name"], a["role"], a["allowed"], int(a["tokens_left"])) for a in answers[:2]] == [
        ("k2", "service", True, 199),
        ("x7", "service", True, 4),
    ]
    assert answers[2] is None
    plans = _nested_plans(logged)
    assert len(plans) >= 6, logged  # the function's statement and the calls
    assert {r for p in plans for r in _relations(p)} >= {"api_keys", "rate_buckets"}
    # by index (engine_clock: notifier_now()'s one row)
    assert {t for p in plans for t in _seq_scans(p)} <= {"engine_clock"}
    # generic: the token's hash is not in the plan of the function's statement (a custom plan's constant)
    assert [sorted(_relations(p)) for p in plans if "::bytea" in json.dumps(p)] == []


async def test_authenticate_key_runs_the_statement_of_authenticate(db: asyncpg.Connection) -> None:
    source = await db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'authenticate_key'")
    assert source.count(AUTHENTICATE.strip()) == 1
