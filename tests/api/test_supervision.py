"""Supervision across a quarter: meetings held vs required per unit type, overdue periods as the
engine clock passes them, attendance rates, the roll-up a committee reads; scoped like every unit
endpoint.

    c (committee) ── b1 (branch) ── g1a, g1b (groups)
                  └─ b2 (branch) ── g2a, g2b (groups)
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.domain.supervision import Quarter
from tests.api.conftest import Org, problem
from tests.api.recordsenv import check_in, make_meeting, near
from tests.conftest import advance_clock, auth, frozen_clock
from tests.helpers import get, put

SHANGHAI = ZoneInfo("Asia/Shanghai")
REQUIREMENTS = [
    {"unit_type": "branch", "meeting_type": "branch_committee", "every": "month", "times": 1},
    {"unit_type": "branch", "meeting_type": "party_lecture", "every": "quarter", "times": 1},
    {"unit_type": "group", "meeting_type": "group_meeting", "every": "month", "times": 1},
]


def by_unit(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["unit_id"]: u for u in report["units"]}


def overdue(unit: dict[str, Any]) -> dict[str, list[str]]:
    return {
        t["meeting_type"]: [p["period"] for p in t["periods"] if p["overdue"]]
        for t in unit["meetings"]
        if t["every"] is not None
    }


async def move_to(db: asyncpg.Connection, moment: datetime) -> None:
    now: datetime = await db.fetchval("SELECT notifier_now()")
    await advance_clock(db, (moment - now).total_seconds())


async def test_a_committee_sees_which_units_held_their_meetings_and_which_are_behind(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, org: Org
) -> None:
    await put(client, "/v1/meeting-requirements", {"requirements": REQUIREMENTS})
    for unit, kind in [("c", "committee"), ("b1", "branch"), ("b2", "branch")] + [
        (g, "group") for g in ("g1a", "g1b", "g2a", "g2b")
    ]:
        assert (await put(client, f"/v1/units/{unit}/type", {"unit_type": kind}))["unit_type"] == kind
    async with frozen_clock(db):
        now: datetime = await db.fetchval("SELECT notifier_now()")
        this = Quarter.of(now.astimezone(SHANGHAI).date())
        q = Quarter.parse(f"{this.year + 1}Q{this.q}")  # a quarter that lies wholly ahead
        months = [datetime.combine(p.start, time(14), SHANGHAI) for p in q.months()]
        at = [m + timedelta(days=9) for m in months]  # the 10th of each month, 14:00
        # g1a held month 1 (a check-in); its month-2 meeting left no trace: not held.
        g1a_1 = await make_meeting(client, db, unit="g1a", at=at[0])
        await check_in(db, g1a_1, "m1a")
        await make_meeting(client, db, unit="g1a", at=at[1])
        # g2a held every month.
        for moment in at:
            await check_in(db, await make_meeting(client, db, unit="g2a", at=moment), "m2a")
        # b1's branch committee: month 1 with minutes written at the venue that day, month 2 a check-in.
        b1_1 = await make_meeting(client, db, unit="b1", kind="branch_committee", at=at[0])
        await check_in(
            db, await make_meeting(client, db, unit="b1", kind="branch_committee", at=at[1]), "m1b"
        )
        await move_to(db, at[0] + timedelta(minutes=30))
        resp = await client.put(
            f"/v1/meetings/{b1_1}/minutes",
            json={"minutes": "研究了发展党员", **near(20)},
            headers=auth(org.b1_secretary),
        )
        assert resp.status == 201, await resp.text()

        # The 20th of month 3: months 1 and 2 have ended, month 3 and the quarter have not.
        await move_to(db, months[2] + timedelta(days=19))
        report = await get(client, f"/v1/units/c/meetings/report?quarter={q}")
        assert report["quarter"] == str(q) and report["timezone"] == "Asia/Shanghai"
        units = by_unit(report)
        assert [u["unit_id"] for u in report["units"]][:3] == ["c", "b1", "b2"]
        assert overdue(units["g1a"]) == {"group_meeting": [f"{q.year}-{q.months()[1].label[5:]}"]}
        assert overdue(units["g1b"]) == {"group_meeting": [p.label for p in q.months()[:2]]}
        assert overdue(units["g2a"]) == {"group_meeting": []}
        assert units["g2a"]["held"] == 3 and units["g2a"]["required"] == 3
        assert overdue(units["b1"]) == {"branch_committee": [], "party_lecture": []}
        assert units["b1"]["held"] == 2 and units["b1"]["required"] == 4
        assert overdue(units["b2"]) == {
            "branch_committee": [p.label for p in q.months()[:2]],
            "party_lecture": [],
        }
        assert units["c"]["meetings"] == [] and not units["c"]["behind"]
        assert [u for u in units if units[u]["behind"]] == ["b2", "g1a", "g1b", "g2b"]
        assert (units["c"]["units_behind_below"], units["b1"]["units_behind_below"]) == (4, 2)
        assert units["b2"]["units_behind_below"] == 1
        assert units["g2a"]["attendance"] == {"expected": 1 * 3, "present": 3, "excused": 0, "rate": 1.0}
        assert units["g1a"]["attendance"]["rate"] == 1.0  # over the meetings held only

        # The quarter over: month 3 joins the overdue ones, and so does b1's missing 党课.
        await move_to(db, datetime.combine(q.end, time(0, 1), SHANGHAI))
        units = by_unit(await get(client, f"/v1/units/c/meetings/report?quarter={q}"))
        assert overdue(units["b1"]) == {"branch_committee": [q.months()[2].label], "party_lecture": [str(q)]}
        assert overdue(units["g2a"]) == {"group_meeting": []}
        assert len(overdue(units["g1a"])["group_meeting"]) == 2


async def test_the_report_and_the_settings_are_scoped(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    b1 = await get(client, "/v1/units/b1/meetings/report", org.b1_secretary)
    assert {u["unit_id"] for u in b1["units"]} == {"b1", "g1a", "g1b"}
    for resp in (
        await client.get("/v1/units/c/meetings/report", headers=auth(org.b1_secretary)),
        await client.get("/v1/units/b1/meetings/report", headers=auth(org.b2_service)),
        await client.put("/v1/units/b1/type", json={"unit_type": "branch"}, headers=auth(org.b2_service)),
    ):
        await problem(resp, 404)
    for resp in (
        await client.get("/v1/units/b1/meetings/report", headers=auth(org.m1a_member)),
        await client.put("/v1/units/b1/type", json={"unit_type": "branch"}, headers=auth(org.b1_secretary)),
        await client.put("/v1/meeting-requirements", json={"requirements": []}, headers=auth(org.b1_service)),
    ):
        await problem(resp, 403)
    assert await db.fetchval("SELECT unit_type FROM units WHERE id = 'b1'") is None
    # A type survives the whole-unit PUT, which knows nothing of it.
    await put(client, "/v1/units/b1/type", {"unit_type": "branch"})
    await put(client, "/v1/units/b1", {"name": "Branch b1", "parent_id": "c"})
    assert by_unit(await get(client, "/v1/units/b1/meetings/report"))["b1"]["unit_type"] == "branch"
    bad = await client.get("/v1/units/c/meetings/report?quarter=2026Q5", headers=auth())
    await problem(bad, 422)
    resp = await client.put(
        "/v1/meeting-requirements",
        json={
            "requirements": [REQUIREMENTS[0], REQUIREMENTS[0], {**REQUIREMENTS[1], "meeting_type": "picnic"}]
        },
        headers=auth(),
    )
    body = await problem(resp, 422)
    assert [e["field"] for e in body["errors"]] == ["requirements[1]", "requirements[2].meeting_type"]
