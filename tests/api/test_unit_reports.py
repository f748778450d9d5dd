"""GET /v1/units/{id}/report on real PostgreSQL + Redis with the worker running: a committee DING
to 3 branches x 3 groups and a lesson, reads at various delays; the committee's report shows the
week's read rates per branch, from the report slots (schemas/0011) and never from recipients."""

from __future__ import annotations

import datetime as dt
import random
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.api.unit_reports import UnitReport
from tests.api.conftest import issue_key, problem
from tests.conftest import advance_clock, auth, wait_until
from tests.helpers import build_org, get, post, put


async def _sent(client: TestClient[Any, Any], kind: str, units: list[str]) -> str:
    body = {"kind": kind, "title": "全体集合", "body": "Muster now", "audience": {"units": units}}
    nid: str = (await post(client, "/v1/notices", body, status=202))["id"]

    async def active() -> bool:
        return bool((await get(client, f"/v1/notices/{nid}"))["state"] == "active")

    await wait_until(active, within=30)
    return nid


async def _read(client: TestClient[Any, Any], nid: str, members: list[str]) -> None:
    for m in members:
        await post(client, f"/v1/notices/{nid}/receipts", {"type": "read", "member_id": m}, status=200)


async def _today(db: asyncpg.Connection, tz: str = "Asia/Shanghai") -> dt.date:
    day: dt.date = await db.fetchval("SELECT (notifier_now() AT TIME ZONE $1)::date", tz)
    return day


async def _tomorrow_at(db: asyncpg.Connection, tz: str, hour: int) -> None:
    """Move the engine clock to tomorrow's ``hour`` o'clock in ``tz``: a test's notices and reads
    then fall on one local date whenever it runs."""
    seconds = await db.fetchval(
        "SELECT extract(epoch FROM (((notifier_now() AT TIME ZONE $1)::date + 1 + make_time($2, 0, 0))"
        " AT TIME ZONE $1) - notifier_now())::float8",
        tz,
        hour,
    )
    await advance_clock(db, seconds)


async def test_the_committee_sees_the_weeks_read_rates_per_branch(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await _tomorrow_at(db, "Asia/Shanghai", 9)
    org = await build_org(client, groups=9, members=27)  # 3 per group, 9 per branch
    by_branch = {
        b: [m for m, g in zip(org["members"], org["group_of"], strict=True) if int(g[1:]) % 3 == int(b[1:])]
        for b in ("b0", "b1", "b2")
    }
    ding = await _sent(client, "ding", ["c"])
    # b0: everyone within a minute; b1: six after ten minutes; b2: three after 45 minutes.
    await _read(client, ding, by_branch["b0"])
    await advance_clock(db, 600)
    await _read(client, ding, by_branch["b1"][:6])
    await advance_clock(db, 35 * 60)
    await _read(client, ding, by_branch["b2"][:3])
    lesson = await _sent(client, "lesson", ["c"])
    await _read(client, lesson, by_branch["b0"][:3] + by_branch["b1"][:3])

    today = await _today(db)
    monday = today - dt.timedelta(days=today.weekday())
    week = f"from={monday}&to={monday + dt.timedelta(days=7)}&bucket=week"
    committee = await issue_key(client, {"name": "c desk", "role": "secretary", "unit_id": "c"})
    report = await get(client, f"/v1/units/c/report?{week}", token=committee)
    assert report["timezone"] == "Asia/Shanghai" and report["bucket"] == "week"
    # Exactly the documented shape (the answer is built without the model)
    assert UnitReport.model_validate(report).model_dump(mode="json", by_alias=True) == report
    rows = {u["unit_id"]: u for u in report["units"]}
    assert [u["unit_id"] for u in report["units"]] == ["c", "b0", "b1", "b2"]
    assert rows["c"]["own"] and not rows["b0"]["own"]

    def picked(u: dict[str, Any]) -> tuple[Any, ...]:
        keys = (
            "notices",
            "recipients",
            "read",
            "read_rate",
            "read_within_5m",
            "read_within_30m",
            "read_within_60m",
            "median_read",
            "lessons_read_rate",
        )
        return tuple(u[k] for k in keys)

    # Two notices (the DING and the lesson), 9 members each per branch.
    assert picked(rows["b0"]) == (2, 18, 12, 0.6667, 0.6667, 0.6667, 0.6667, "1m", 0.3333)
    assert picked(rows["b1"]) == (2, 18, 9, 0.5, 0.1667, 0.5, 0.5, "15m", 0.3333)
    assert picked(rows["b2"]) == (2, 18, 3, 0.1667, 0.0, 0.0, 0.1667, None, 0.0)
    assert picked(rows["c"]) == (2, 54, 24, 0.4444, 0.2778, 0.3889, 0.4444, None, 0.2222)
    # The week is one bucket of the series, equal to the totals.
    for u in report["units"]:
        assert [p["start"] for p in u["series"]] == [str(monday)]
        assert picked(u["series"][0]) == picked(u)

    # Only the DINGs: the lessons' read rate still of the lessons.
    dings = await get(client, f"/v1/units/c/report?{week}&kind=ding", token=committee)
    b1 = next(u for u in dings["units"] if u["unit_id"] == "b1")
    assert (b1["notices"], b1["recipients"], b1["read"], b1["lessons_read_rate"]) == (1, 9, 6, 0.3333)

    # Days: this week's seven, today's holding everything.
    daily = await get(
        client,
        f"/v1/units/b1/report?from={monday}&to={monday + dt.timedelta(days=7)}&bucket=day",
        token=committee,
    )
    assert [u["unit_id"] for u in daily["units"]] == ["b1", "g1", "g4", "g7"]
    series = daily["units"][0]["series"]
    assert len(series) == 7
    assert [p["recipients"] for p in series] == [18 if p["start"] == str(today) else 0 for p in series]
    # Last week's report holds nothing.
    empty = await get(
        client, f"/v1/units/c/report?from={monday - dt.timedelta(days=7)}&to={monday}", token=committee
    )
    assert all(u["notices"] == 0 and u["read_rate"] is None for u in empty["units"])

    # Served from the slots: they alone answer (the recipients emptied, the report unchanged).
    await db.execute("DELETE FROM recipients")
    again = await get(client, f"/v1/units/c/report?{week}", token=committee)
    assert again == report


async def test_report_days_are_those_of_the_units_time_zone(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await build_org(client, groups=3, members=6)
    # Somewhere 13 to 14 hours behind Shanghai: the local date differs for most of the day.
    await put(client, "/v1/units/c", {"name": "Committee", "parent_id": None, "timezone": "America/New_York"})
    await _tomorrow_at(db, "America/New_York", 20)  # 09:00 the day after, in Shanghai
    await _sent(client, "ding", ["c"])
    today = await _today(db, "America/New_York")
    report = await get(
        client, f"/v1/units/b0/report?from={today}&to={today + dt.timedelta(days=1)}&bucket=day"
    )
    assert report["timezone"] == "America/New_York"  # inherited from the committee
    assert report["units"][0]["recipients"] == 2
    yesterday = await get(
        client, f"/v1/units/b0/report?from={today - dt.timedelta(days=1)}&to={today}&bucket=day"
    )
    assert yesterday["units"][0]["recipients"] == 0


async def test_a_report_is_of_units_in_reach_only(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    await build_org(client, groups=3, members=6)
    b1 = await issue_key(client, {"name": "b1 desk", "role": "secretary", "unit_id": "b1"})
    member = await issue_key(client, {"name": "m", "role": "member", "member_id": "m00001"})
    today = await _today(db)
    q = f"from={today}&to={today + dt.timedelta(days=1)}"
    assert [u["unit_id"] for u in (await get(client, f"/v1/units/b1/report?{q}", token=b1))["units"]] == [
        "b1",
        "g1",
    ]
    for unit in ("c", "b2", "g0", "nowhere"):  # parent, sibling, a sibling's group, unknown
        body = await problem(await client.get(f"/v1/units/{unit}/report?{q}", headers=auth(b1)), 404)
        assert body["detail"] == "unit not found"
    resp = await client.get(f"/v1/units/b1/report?{q}", headers=auth(member))
    assert resp.status == 403
    revoke = await client.delete(f"/v1/api-keys/{await _key_id(db, 'b1 desk')}", headers=auth())
    assert revoke.status == 204
    assert (await client.get(f"/v1/units/b1/report?{q}", headers=auth(b1))).status == 401


async def _key_id(db: asyncpg.Connection, name: str) -> str:
    return str(await db.fetchval("SELECT id FROM api_keys WHERE name = $1", name))


async def test_report_inputs_are_checked_naming_the_field(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await build_org(client, groups=3, members=3)
    cases = {
        "from=2026-01-02&to=2026-01-01": "query.to",
        "from=2026-01-01&to=2026-01-01": "query.to",
        "from=2024-01-01&to=2026-01-10&bucket=day": "query.to",
        "from=2026-01-01&to=2026-02-30": "query.to",
        "from=2026-01-01": "query.to",
        "to=2026-01-01": "query.from",
        "from=yesterday&to=2026-01-01": "query.from",
        "from=2026-01-01&to=2026-02-01&bucket=year": "query.bucket",
        "from=2026-01-01&to=2026-02-01&kind=party": "query.kind",
        "from=2026-01-01&to=2026-02-01&extra=1": "query.extra",
    }
    for query, field in cases.items():
        body = await problem(await client.get(f"/v1/units/c/report?{query}", headers=auth()), 422)
        assert [e["field"] for e in body["errors"]] == [field], query
    ok = await get(client, "/v1/units/c/report?from=2024-01-01&to=2026-01-10&bucket=week")
    assert len(ok["units"][0]["series"]) == 106


async def test_a_report_reaches_the_last_dates_there_are(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await build_org(client, groups=3, members=3)
    for bucket, start in (("month", "9999-01-01"), ("week", "9999-12-01"), ("day", "9999-12-01")):
        report = await get(client, f"/v1/units/c/report?from={start}&to=9999-12-31&bucket={bucket}")
        assert report["units"][0]["series"][-1]["read_rate"] is None, bucket
    first = await get(client, "/v1/units/c/report?from=0001-01-01&to=0001-03-01&bucket=month")
    assert [p["start"] for p in first["units"][0]["series"]] == ["0001-01-01", "0001-02-01"]


def _half_up(part: int, whole: int) -> float | None:
    """The documented rounding: four places, half up, of the exact ratio."""
    if whole == 0:
        return None
    return float((Fraction(part, whole) * 10_000 + Fraction(1, 2)).__floor__()) / 10_000


def _expected(sums: dict[str, int]) -> dict[str, Any]:
    """An answer's figures from its sums, computed apart from the statement that answers."""
    recipients, times = sums["recipients"], [sums[c] for c in _TIMES]
    median = None
    if recipients:
        seen = 0
        for name, n in zip(("1m", "5m", "15m", "30m", "60m", "later"), times, strict=True):
            seen += n
            if 2 * seen >= recipients:
                median = name
                break
    return {
        "notices": sums["notices"],
        "recipients": recipients,
        "read": sums["read"],
        "read_rate": _half_up(sums["read"], recipients),
        "median_read": median,
        "read_within_5m": _half_up(sum(times[:2]), recipients),
        "read_within_30m": _half_up(sum(times[:4]), recipients),
        "read_within_60m": _half_up(sum(times[:5]), recipients),
        "lessons_read_rate": _half_up(sums["lesson_read"], sums["lesson_recipients"]),
    }


_TIMES = ("read_1m", "read_5m", "read_15m", "read_30m", "read_60m", "read_later")
_SLOT_COLUMNS = "unit_id, slot, kind, shard, notices, recipients, read, " + ", ".join(_TIMES)


def _sums(slots: list[asyncpg.Record], kind: str | None) -> dict[str, int]:
    picked = [s for s in slots if kind is None or s["kind"] == kind]
    out = {c: sum(s[c] for s in picked) for c in ("notices", "recipients", "read", *_TIMES)}
    lessons = [s for s in slots if s["kind"] == "lesson"]
    out["lesson_recipients"] = sum(s["recipients"] for s in lessons)
    out["lesson_read"] = sum(s["read"] for s in lessons)
    return out


async def test_report_figures_are_the_slots_summed_per_local_bucket(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """Random slots (several shards, kinds, units, a daylight-saving zone): every figure of every
    bucket equals the sums computed here from the same slots, rounded half up."""
    await build_org(client, groups=3, members=3)
    await put(client, "/v1/units/c", {"name": '委员会 "c"', "parent_id": None, "timezone": "Europe/Berlin"})
    zone = ZoneInfo("Europe/Berlin")
    rng = random.Random(8)
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    slots = []
    for unit in ("c", "b0", "b1", "g0"):
        for _ in range(60):
            at = start + dt.timedelta(minutes=15 * rng.randrange(0, 4 * 24 * 75))
            times = [rng.randrange(0, 9) for _ in _TIMES]
            recipients = sum(times) + rng.randrange(0, 9)
            kind = rng.choice(["ding", "lesson", "notice"])
            slots.append(
                (unit, at, kind, rng.randrange(0, 16), rng.randrange(0, 2), recipients, sum(times), *times)
            )
    # A tie at the fifth place: 1 of 32 is 0.03125, shown 0.0313 (half up, not to even).
    tie_at = dt.datetime(2026, 4, 10, 12, tzinfo=dt.UTC)
    slots.append(("b2", tie_at, "ding", 0, 1, 32, 1, 1, 0, 0, 0, 0, 0))
    await db.executemany(
        f"INSERT INTO unit_report_slots ({_SLOT_COLUMNS}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, 14))}) ON CONFLICT DO NOTHING",
        slots,
    )
    stored = await db.fetch("SELECT * FROM unit_report_slots")

    def first_of(day: dt.date, bucket: str) -> dt.date:
        if bucket == "week":
            return day - dt.timedelta(days=day.weekday())
        return day.replace(day=1) if bucket == "month" else day

    lo, hi = dt.date(2026, 3, 10), dt.date(2026, 5, 3)
    for bucket in ("day", "week", "month"):
        for only in (None, "ding"):
            query = f"from={lo}&to={hi}&bucket={bucket}" + (f"&kind={only}" if only else "")
            report = await get(client, f"/v1/units/c/report?{query}")
            assert UnitReport.model_validate(report).model_dump(mode="json", by_alias=True) == report
            assert report["timezone"] == "Europe/Berlin"
            assert [u["unit_id"] for u in report["units"]] == ["c", "b0", "b1", "b2"]
            assert report["units"][0]["name"] == '委员会 "c"'
            for u in report["units"]:
                mine = [
                    s
                    for s in stored
                    if s["unit_id"] == u["unit_id"] and lo <= s["slot"].astimezone(zone).date() < hi
                ]

                total = {k: v for k, v in u.items() if k not in ("unit_id", "name", "own", "series")}
                assert total == _expected(_sums(mine, only)), (bucket, only, u["unit_id"])
                starts = sorted({first_of(lo + dt.timedelta(days=d), bucket) for d in range((hi - lo).days)})
                assert [p["start"] for p in u["series"]] == [str(s) for s in starts]
                for p in u["series"]:
                    inside = [
                        s
                        for s in mine
                        if first_of(s["slot"].astimezone(zone).date(), bucket)
                        == dt.date.fromisoformat(p["start"])
                    ]
                    assert {k: v for k, v in p.items() if k != "start"} == _expected(_sums(inside, only)), p[
                        "start"
                    ]
            b2 = next(u for u in report["units"] if u["unit_id"] == "b2")
            assert b2["read_rate"] == 0.0313 and b2["read_within_5m"] == 0.0313
