"""points.award: once per (member, code, source), capped per local day in the member's time zone,
dwell measured on the server's clock -- with the engine clock moved, never slept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from notifier.db import points
from notifier.settings import Settings
from tests.conftest import advance_clock, frozen_clock, wait_until


@pytest.fixture
async def org(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await db.execute(
        "INSERT INTO units (id, name, parent_id) VALUES"
        " ('org', 'Org', NULL), ('b', 'B', 'org'), ('g', 'G', 'b')"
    )
    await db.execute("INSERT INTO members (id, name) VALUES ('m', 'M'), ('n', 'N')")
    await db.execute("INSERT INTO member_units VALUES ('m', 'g'), ('n', 'b')")
    async with frozen_clock(db):
        yield db


async def rule(db: asyncpg.Connection, code: str, pts: int, cap: int | None = None, dwell: int = 0) -> None:
    await db.execute(
        "INSERT INTO point_rules (root_unit_id, code, points, daily_cap, min_dwell_seconds)"
        " VALUES ('org', $1, $2, $3, $4)",
        code,
        pts,
        cap,
        dwell,
    )


async def to_local(db: asyncpg.Connection, tz: str, clock: str) -> None:
    """Move the engine clock forward to the next local ``clock`` (HH:MM:SS) in ``tz``."""
    secs = await db.fetchval(
        "SELECT extract(epoch FROM (((notifier_now() AT TIME ZONE $1)::date + 1 + $2::text::time)"
        " AT TIME ZONE $1) - notifier_now())::float8",
        tz,
        clock,
    )
    await advance_clock(db, secs)


async def test_a_replayed_source_earns_once_and_no_rule_earns_nothing(org: asyncpg.Connection) -> None:
    assert await points.award(org, "m", "lesson_read", "notice:x") == 0  # no rule yet: no row
    assert await org.fetchval("SELECT count(*) FROM point_awards") == 0
    await rule(org, "lesson_read", 1, cap=6)
    assert await points.award(org, "m", "lesson_read", "notice:x") == 1
    assert await points.award(org, "m", "lesson_read", "notice:x") == 0
    assert await points.award(org, "m", "quiz_full", "notice:x") == 0  # another code: no rule
    assert await org.fetchval("SELECT count(*), sum(points) FROM point_awards") == 1
    row = await org.fetchrow("SELECT member_id, code, source, root_unit_id, points FROM point_awards")
    assert row is not None and dict(row) == {
        "member_id": "m",
        "code": "lesson_read",
        "source": "notice:x",
        "root_unit_id": "org",
        "points": 1,
    }


async def test_a_member_outside_any_organisation_with_the_rule_earns_nothing(org: asyncpg.Connection) -> None:
    await org.execute("INSERT INTO units (id, name) VALUES ('other', 'Other')")
    await org.execute("INSERT INTO members (id, name) VALUES ('o', 'O')")
    await org.execute("INSERT INTO member_units VALUES ('o', 'other')")
    await rule(org, "lesson_read", 1)
    assert await points.award(org, "o", "lesson_read", "notice:x") == 0
    assert await points.award(org, "unknown", "lesson_read", "notice:x") == 0


# (member tz, tz of the member's branch, the zone whose midnight resets the cap)
ZONES = [
    (None, None, "Asia/Shanghai"),
    ("Europe/London", None, "Europe/London"),
    (None, "America/New_York", "America/New_York"),
    ("Asia/Tokyo", "America/New_York", "Asia/Tokyo"),
]


@pytest.mark.parametrize(("member_tz", "unit_tz", "zone"), ZONES)
async def test_the_cap_is_per_local_day_of_the_members_time_zone(
    org: asyncpg.Connection, member_tz: str | None, unit_tz: str | None, zone: str
) -> None:
    await org.execute("UPDATE members SET timezone = $1 WHERE id = 'm'", member_tz)
    await org.execute("UPDATE units SET timezone = $1 WHERE id = 'b'", unit_tz)
    await rule(org, "lesson_read", 1, cap=3)
    await to_local(org, zone, "23:58:00")
    earned = [await points.award(org, "m", "lesson_read", f"notice:{i}") for i in range(5)]
    assert earned == [1, 1, 1, 0, 0]
    await advance_clock(org, 180)  # 00:01 the next local day: a fresh cap
    earned = [await points.award(org, "m", "lesson_read", f"notice:{i}") for i in range(5, 9)]
    assert earned == [1, 1, 1, 0]
    # The capped actions are done: replayed on the new day they earn nothing.
    assert await points.award(org, "m", "lesson_read", "notice:3") == 0
    days = await org.fetch("SELECT day, sum(points) AS p FROM point_awards GROUP BY day ORDER BY day")
    assert [r["p"] for r in days] == [3, 3] and (days[1]["day"] - days[0]["day"]).days == 1


@pytest.mark.parametrize(
    ("pts", "cap", "expected"),
    [(1, None, [1, 1, 1, 1]), (2, 3, [2, 1, 0, 0]), (2, 4, [2, 2, 0, 0]), (5, 1, [1, 0, 0, 0])],
)
async def test_an_award_past_the_cap_earns_what_is_left(
    org: asyncpg.Connection, pts: int, cap: int | None, expected: list[int]
) -> None:
    await rule(org, "quiz_full", pts, cap=cap)
    assert [await points.award(org, "m", "quiz_full", f"quiz:{i}") for i in range(4)] == expected
    # A batch counts its own items in order against the same cap.
    await advance_clock(org, 86400)
    got = await points.award_many(org, ["m"] * 4, "quiz_full", [f"quiz:b{i}" for i in range(4)])
    assert [got[("m", f"quiz:b{i}")] for i in range(4)] == expected


async def _view(db: asyncpg.Connection, notice: str, member: str, visible: float | None = None) -> str:
    return str(
        await db.fetchval(
            "INSERT INTO notice_views (notice_id, member_id, opened_at, visible_seconds)"
            " VALUES ($1, $2, notifier_now(), $3) RETURNING id",
            notice,
            member,
            visible,
        )
    )


async def _notice(db: asyncpg.Connection, kind: str = "lesson") -> str:
    return str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels)"
            " VALUES ($1, 't', 'b', '{}', '{}') RETURNING id",
            kind,
        )
    )


# (seconds open before the award, closed at (seconds) or None, visible_seconds the page sent, earns)
DWELLS = [
    (10, None, None, 0),  # read 10 s after opening
    (60, None, None, 1),  # still open, 60 s by the server's clock
    (100, 30, None, 0),  # closed after 30 s, awarded later: the view lasted 30 s
    (100, 70, None, 1),
    (100, 100, 20, 0),  # the page says it was visible 20 s of the 100: the shorter counts
    (100, 100, 500, 1),  # a client total longer than the server's span does not help ...
    (30, 30, 500, 0),  # ... nor make up for a short one
]


@pytest.mark.parametrize(("open_s", "closed_s", "visible", "earns"), DWELLS)
async def test_dwell_by_the_servers_clock(
    org: asyncpg.Connection, open_s: int, closed_s: int | None, visible: float | None, earns: int
) -> None:
    await rule(org, "lesson_read", 1, cap=6, dwell=60)
    nid = await _notice(org)
    view = await _view(org, nid, "m", visible)
    if closed_s is not None:
        await advance_clock(org, closed_s)
        await org.execute("UPDATE notice_views SET closed_at = notifier_now() WHERE id = $1", view)
        await advance_clock(org, open_s - closed_s)
    else:
        await advance_clock(org, open_s)
    assert await points.award(org, "m", "lesson_read", f"notice:{nid}") == earns
    # Too short: nothing is written, so a later long enough view still earns.
    assert await org.fetchval("SELECT count(*) FROM point_awards") == earns


async def test_too_short_then_long_enough_earns_once(org: asyncpg.Connection) -> None:
    await rule(org, "lesson_read", 1, cap=6, dwell=60)
    nid = await _notice(org)
    await _view(org, nid, "m")
    await _view(org, nid, "n")
    await advance_clock(org, 5)
    assert await points.award(org, "m", "lesson_read", f"notice:{nid}") == 0
    await advance_clock(org, 55)
    assert await points.award(org, "m", "lesson_read", f"notice:{nid}") == 1
    assert await points.award(org, "m", "lesson_read", f"notice:{nid}") == 0
    # Another member's view is theirs; a source that is no notice has no view and no dwell.
    assert await points.award(org, "o", "lesson_read", f"notice:{nid}") == 0
    assert await points.award(org, "n", "lesson_read", "notice:not-a-uuid") == 0


async def test_lesson_reads_earn_only_for_lessons(org: asyncpg.Connection) -> None:
    await rule(org, "lesson_read", 1)
    lesson = await _notice(org)
    other = await _notice(org, "notice")
    assert await points.award_lesson_reads(org, [lesson, other, lesson], ["m", "m", "n"]) == 2
    rows = await org.fetch("SELECT member_id, source FROM point_awards ORDER BY member_id")
    assert [(r["member_id"], r["source"]) for r in rows] == [
        ("m", f"notice:{lesson}"),
        ("n", f"notice:{lesson}"),
    ]


async def test_concurrent_awards_do_not_pass_the_cap(org: asyncpg.Connection, settings: Settings) -> None:
    await rule(org, "lesson_read", 1, cap=1)
    conns = [await asyncpg.connect(settings.database_url) for _ in range(2)]
    try:
        txs = [c.transaction() for c in conns]
        for tx in txs:
            await tx.start()
        first = await points.award(conns[0], "m", "lesson_read", "notice:a")
        # The second waits on the first's lock, then sees its committed row.
        second = asyncio.ensure_future(points.award(conns[1], "m", "lesson_read", "notice:b"))
        pid = conns[1].get_server_pid()

        async def waiting() -> bool:
            kind = await org.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid)
            return bool(kind == "advisory")

        await wait_until(waiting, within=10)
        await txs[0].commit()
        assert (first, await second) == (1, 0)
        await txs[1].commit()
    finally:
        for c in conns:
            await c.close()
    assert await org.fetchval("SELECT sum(points) FROM point_awards") == 1
