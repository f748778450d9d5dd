"""Optional channels (schemas/0038) with and without fallback.
Every member keeps a recipient row; only a required channel records "no working contact"; a
fallback hand-over from an optional channel that failed for good reaches the required one; the
counters match the recipients."""

from __future__ import annotations

import asyncpg

from benchmarks.fanout.org import create_org
from notifier.db import deliveries, notices
from notifier.db import fanout as fanout_db
from notifier.db.deliveries import Written
from notifier.db.pool import WORKER_SESSION, Connection, create_pool
from notifier.settings import Settings

N = 40


async def _send(conn: Connection, root: str, fallback: bool) -> str:
    row = await notices.insert(
        conn,
        kind="notice",
        title="t",
        body="b",
        audience={"units": [root]},
        channels=["sms", "webhook"],
        optional_channels=["sms"],
        fallback=fallback,
        scope_unit_id=None,
        created_by=None,
    )
    async with conn.transaction():
        got = await fanout_db.fanout_chunk(
            conn,
            str(row["id"]),
            [root],
            [],
            None,
            1000,
            ["sms", "webhook"],
            [True, True],
            [False, False],
            fallback,
            optional=[True, False],
        )
    assert got["n"] == N
    return str(row["id"])


async def _plan(conn: Connection, notice_id: str) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for r in await conn.fetch(
        "SELECT member_id, channel, state FROM deliveries WHERE notice_id = $1 "
        "ORDER BY member_id, channel, step",
        notice_id,
    ):
        out.setdefault(r["member_id"], []).append((r["channel"], r["state"]))
    return out


async def test_optional_channels_with_and_without_fallback(
    db: asyncpg.Connection, settings: Settings
) -> None:
    pool = await create_pool(settings, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        root = await create_org(pool, "of", N, "http://127.0.0.1:9/hook")
        async with pool.acquire() as conn:
            ids = [f"of-m{i:07d}" for i in range(N)]
            await conn.execute("DELETE FROM contacts WHERE member_id = ANY($1)", ids[0::4])
            await conn.execute(
                "INSERT INTO contacts (member_id, channel, target) "
                "SELECT m, 'sms', to_jsonb('+1555' || right(m, 7)) FROM unnest($1::text[]) m",
                ids[1::4],
            )
            plain = await _send(conn, root, fallback=False)
            ordered = await _send(conn, root, fallback=True)
            p, f = await _plan(conn, plain), await _plan(conn, ordered)
            assert sorted(p) == sorted(f) == ids  # every member has deliveries
            for i, m in enumerate(ids):
                if i % 4 == 0:
                    assert p[m] == f[m] == [("webhook", "failed")]
                elif i % 4 == 1:
                    assert p[m] == [("sms", "queued"), ("webhook", "queued")]
                    assert f[m] == [("sms", "queued")]
                else:
                    assert p[m] == f[m] == [("webhook", "queued")]
            # The optional SMS fails for good: the fallback hands over to the required webhook.
            rows = await conn.fetch(deliveries.CLAIM, ordered, "sms", 100, 60.0, 0)
            assert len(rows) == N // 4
            changed = await deliveries.record(
                conn, [Written(r["id"], r["attempts"], "failed", "x", 0.0, None) for r in rows]
            )
            await deliveries.fallback_next(
                conn, [int(r["id"]) for r in changed if r["state"] == "failed"], [], []
            )
            f = await _plan(conn, ordered)
            for m in ids[1::4]:
                assert f[m] == [("sms", "failed"), ("webhook", "queued")]
            for notice_id in (plain, ordered):
                statuses: dict[str, int] = dict(
                    (r[0], r[1])
                    for r in await conn.fetch(
                        "SELECT dstatus, count(*) FROM recipients WHERE notice_id = $1 GROUP BY 1", notice_id
                    )
                )
                counts = await conn.fetchrow(
                    "SELECT sum(recipients) AS n, sum(queued) AS q, sum(failed) AS f FROM notice_counts "
                    "WHERE notice_id = $1",
                    notice_id,
                )
                assert counts is not None
                assert statuses == {"queued": N - N // 4, "failed": N // 4}
                assert (counts["n"], counts["q"], counts["f"]) == (N, N - N // 4, N // 4)
    finally:
        await pool.close()
