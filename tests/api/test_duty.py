"""The duty roster: PUT replaces a unit's shifts, GET lists them, on-duty answers who is on duty
at a moment, falling back up the tree. Shifts cover [starts_at, ends_at).

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier import app as app_module
from notifier.api import duty as duty_api
from notifier.settings import Settings
from tests.api.conftest import Org, problem, snapshot
from tests.conftest import advance_clock, auth
from tests.helpers import get, put

HOUR = timedelta(hours=1)
CST = timezone(timedelta(hours=8))


@pytest.fixture
async def client(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[TestClient[Any, Any]]:
    """The app with the duty routes, also before app.py registers them."""
    app = app_module.create_app(settings)
    if duty_api not in app_module.RESOURCE_MODULES:
        duty_api.routes.install(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def _now(db: asyncpg.Connection) -> datetime:
    now = await db.fetchval("SELECT notifier_now()")
    assert isinstance(now, datetime)
    return now


def _shift(member: str, start: datetime, end: datetime) -> dict[str, str]:
    return {"member_id": member, "starts_at": start.isoformat(), "ends_at": end.isoformat()}


def _spans(roster: dict[str, Any]) -> list[tuple[str, datetime, datetime]]:
    return [
        (s["member_id"], datetime.fromisoformat(s["starts_at"]), datetime.fromisoformat(s["ends_at"]))
        for s in roster["shifts"]
    ]


async def _on_duty(
    client: TestClient[Any, Any], unit: str, at: datetime | None = None, token: str | None = None
) -> dict[str, Any]:
    params = {} if at is None else {"at": at.isoformat()}
    resp = await client.get(
        f"/v1/units/{unit}/on-duty", params=params, headers=auth(token) if token else auth()
    )
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def _who(answer: dict[str, Any]) -> tuple[str | None, list[str], bool]:
    return answer["unit_id"], [m["member_id"] for m in answer["members"]], answer["fallback"]


T0 = datetime(2030, 3, 1, 8, 0, tzinfo=CST)


# --- the roster -----------------------------------------------------------------------------------


async def test_put_replaces_the_units_roster(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/units/g1a/duty", {"shifts": [_shift("m1a", T0, T0 + HOUR)]})
    first = await put(
        client,
        "/v1/units/b1/duty",
        {"shifts": [_shift("m1b", T0 + 4 * HOUR, T0 + 8 * HOUR), _shift("m1a", T0, T0 + 4 * HOUR)]},
    )
    assert first["unit_id"] == "b1"
    assert _spans(first) == [("m1a", T0, T0 + 4 * HOUR), ("m1b", T0 + 4 * HOUR, T0 + 8 * HOUR)]
    assert [s["name"] for s in first["shifts"]] == ["Officer g1a", "Officer g1b"]
    second = await put(
        client, "/v1/units/b1/duty", {"shifts": [_shift("m1b", T0 + 8 * HOUR, T0 + 12 * HOUR)]}
    )
    assert _spans(second) == [("m1b", T0 + 8 * HOUR, T0 + 12 * HOUR)]
    assert _spans(await get(client, "/v1/units/b1/duty")) == _spans(second)
    assert await db.fetchval("SELECT count(*) FROM duty_shifts WHERE unit_id = 'b1'") == 1
    # Another unit's roster is untouched.
    assert _spans(await get(client, "/v1/units/g1a/duty")) == [("m1a", T0, T0 + HOUR)]
    cleared = await put(client, "/v1/units/b1/duty", {"shifts": []})
    assert cleared == {"unit_id": "b1", "shifts": []}
    assert await db.fetchval("SELECT count(*) FROM duty_shifts WHERE unit_id = 'b1'") == 0
    assert await db.fetchval("SELECT count(*) FROM duty_shifts WHERE unit_id = 'g1a'") == 1


async def test_overlapping_shifts_of_one_member_are_rejected(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/units/b1/duty", {"shifts": [_shift("m1a", T0, T0 + HOUR)]})
    before = await snapshot(db)
    resp = await client.put(
        "/v1/units/b1/duty",
        json={"shifts": [_shift("m1a", T0, T0 + 4 * HOUR), _shift("m1a", T0 + 3 * HOUR, T0 + 5 * HOUR)]},
        headers=auth(),
    )
    await problem(resp, 422, [{"field": "shifts[1]", "message": "overlaps shifts[0] of the same member"}])
    # Out of order, inside another shift, an exact repeat; the same span for another member is fine.
    shifts = [
        _shift("m1a", T0 + 2 * HOUR, T0 + 3 * HOUR),
        _shift("m1b", T0, T0 + 10 * HOUR),
        _shift("m1a", T0, T0 + 10 * HOUR),
        _shift("m1b", T0 + 10 * HOUR, T0 + 11 * HOUR),
        _shift("m1b", T0 + 10 * HOUR, T0 + 11 * HOUR),
    ]
    resp = await client.put("/v1/units/b1/duty", json={"shifts": shifts}, headers=auth())
    await problem(
        resp,
        422,
        [
            {"field": "shifts[2]", "message": "overlaps shifts[0] of the same member"},
            {"field": "shifts[4]", "message": "overlaps shifts[3] of the same member"},
        ],
    )
    # Checked before anything is written, so overlaps and bad members are reported together.
    resp = await client.put(
        "/v1/units/b1/duty",
        json={
            "shifts": [
                _shift("m1a", T0, T0 + 2 * HOUR),
                _shift("m2a", T0, T0 + HOUR),
                _shift("m1a", T0 + HOUR, T0 + 3 * HOUR),
            ]
        },
        headers=auth(),
    )
    await problem(
        resp,
        422,
        [
            {"field": "shifts[1].member_id", "message": "must be a member of this unit or a unit below it"},
            {"field": "shifts[2]", "message": "overlaps shifts[0] of the same member"},
        ],
    )
    # The same instant written in two offsets is the same instant.
    resp = await client.put(
        "/v1/units/b1/duty",
        json={
            "shifts": [
                _shift("m1a", T0, T0 + 2 * HOUR),
                _shift("m1a", (T0 + HOUR).astimezone(UTC), T0 + 3 * HOUR),
            ]
        },
        headers=auth(),
    )
    await problem(resp, 422, [{"field": "shifts[1]", "message": "overlaps shifts[0] of the same member"}])
    assert await snapshot(db) == before
    # Back to back is not an overlap (a shift ends when the next begins); other units are separate.
    saved = await put(
        client,
        "/v1/units/b1/duty",
        {"shifts": [_shift("m1a", T0, T0 + HOUR), _shift("m1a", T0 + HOUR, T0 + 2 * HOUR)]},
    )
    assert len(saved["shifts"]) == 2
    await put(client, "/v1/units/g1a/duty", {"shifts": [_shift("m1a", T0, T0 + 2 * HOUR)]})


async def test_constraint_refusal_reads_like_the_check(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the Python check ever miss an overlap, the exclusion constraint refuses it and the
    caller gets the same 422, with nothing stored."""
    monkeypatch.setattr(duty_api, "_overlaps", lambda shifts: {})
    await put(client, "/v1/units/b1/duty", {"shifts": [_shift("m1a", T0, T0 + HOUR)]})
    before = await snapshot(db)
    shifts = [
        _shift("m1b", T0, T0 + 2 * HOUR),
        _shift("m1a", T0, T0 + 2 * HOUR),
        _shift("m1b", T0 + HOUR, T0 + 3 * HOUR),
    ]
    resp = await client.put("/v1/units/b1/duty", json={"shifts": shifts}, headers=auth())
    await problem(resp, 422, [{"field": "shifts[2]", "message": "overlaps shifts[0] of the same member"}])
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("shift", "errors"),
    [
        (
            {"member_id": "m1a", "starts_at": "2030-03-01T08:00:00", "ends_at": "2030-03-01T09:00:00+08:00"},
            [{"field": "shifts[0].starts_at", "message": "Input should have timezone info"}],
        ),
        (
            {"member_id": "m1a", "starts_at": "2030-03-01T08:00:00Z", "ends_at": "2030-03-01 09:00"},
            [{"field": "shifts[0].ends_at", "message": "Input should have timezone info"}],
        ),
        (
            {"member_id": "m1a", "starts_at": 1900000000, "ends_at": "2030-03-01T09:00:00Z"},
            [
                {
                    "field": "shifts[0].starts_at",
                    "message": "Value error, must be an ISO 8601 timestamp with a UTC offset, "
                    "e.g. 2025-01-01T08:00:00+08:00",
                }
            ],
        ),
        (
            {"member_id": "m1a", "starts_at": "2030-03-01T09:00:00Z", "ends_at": "2030-03-01T17:00:00+08:00"},
            [{"field": "shifts[0].ends_at", "message": "Value error, must be after starts_at"}],
        ),
        (
            {"member_id": "m1a", "starts_at": "2030-03-01T09:00:00Z", "ends_at": "2030-03-01T08:00:00Z"},
            [{"field": "shifts[0].ends_at", "message": "Value error, must be after starts_at"}],
        ),
        (
            {"member_id": "m1a", "starts_at": "tomorrow", "ends_at": "2030-03-01T08:00:00Z"},
            [
                {
                    "field": "shifts[0].starts_at",
                    "message": "Input should be a valid datetime or date, input is too short",
                }
            ],
        ),
        (
            {"member_id": "m1a", "starts_at": "2030-03-01T08:00:00Z"},
            [{"field": "shifts[0].ends_at", "message": "Field required"}],
        ),
        (
            {"member_id": "m1a", "starts_at": "2030-03-01T08:00:00Z", "ends_at": "2030-03-01T09:00Z", "x": 1},
            [{"field": "shifts[0].x", "message": "unknown field"}],
        ),
    ],
)
async def test_bad_shifts_name_the_field_and_store_nothing(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    org: Org,
    shift: dict[str, Any],
    errors: list[dict[str, str]],
) -> None:
    await put(client, "/v1/units/b1/duty", {"shifts": [_shift("m1b", T0, T0 + HOUR)]})
    before = await snapshot(db)
    resp = await client.put("/v1/units/b1/duty", json={"shifts": [shift]}, headers=auth())
    await problem(resp, 422, errors)
    assert await snapshot(db) == before


async def test_roster_size_and_shape_limits(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    before = await snapshot(db)
    many = [_shift("m1a", T0 + i * HOUR, T0 + (i + 1) * HOUR) for i in range(1001)]
    resp = await client.put("/v1/units/b1/duty", json={"shifts": many}, headers=auth())
    await problem(
        resp,
        422,
        [{"field": "shifts", "message": "List should have at most 1000 items after validation, not 1001"}],
    )
    resp = await client.put("/v1/units/b1/duty", json={}, headers=auth())
    await problem(resp, 422, [{"field": "shifts", "message": "Field required"}])
    assert await snapshot(db) == before
    saved = await put(client, "/v1/units/b1/duty", {"shifts": many[:1000]})
    assert len(saved["shifts"]) == 1000


async def test_shift_members_must_belong_to_the_unit_or_below(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/members/mc", {"name": "Committee officer", "units": ["c"]})
    before = await snapshot(db)
    shifts = [
        _shift("m1a", T0, T0 + HOUR),  # g1a, below b1: fine
        _shift("m2a", T0, T0 + HOUR),  # another branch
        _shift("mc", T0, T0 + HOUR),  # above b1
        _shift("nope", T0, T0 + HOUR),
    ]
    message = "must be a member of this unit or a unit below it"
    resp = await client.put("/v1/units/b1/duty", json={"shifts": shifts}, headers=auth())
    await problem(
        resp,
        422,
        [
            {"field": "shifts[1].member_id", "message": message},
            {"field": "shifts[2].member_id", "message": message},
            {"field": "shifts[3].member_id", "message": "unknown member"},
        ],
    )
    # A branch key: members it cannot see are unknown to it; a sibling group's member is not below g1a.
    resp = await client.put(
        "/v1/units/g1a/duty",
        json={"shifts": [_shift("m2a", T0, T0 + HOUR), _shift("m1b", T0, T0 + HOUR)]},
        headers=auth(org.b1_service),
    )
    await problem(
        resp,
        422,
        [
            {"field": "shifts[0].member_id", "message": "unknown member"},
            {"field": "shifts[1].member_id", "message": message},
        ],
    )
    assert await snapshot(db) == before
    everyone = await put(
        client, "/v1/units/c/duty", {"shifts": [_shift(m, T0, T0 + HOUR) for m in ("mc", "m2a", "m1a")]}
    )
    assert [s["member_id"] for s in everyone["shifts"]] == ["m1a", "m2a", "mc"]


async def test_list_window(client: TestClient[Any, Any], db: asyncpg.Connection, org: Org) -> None:
    shifts = [_shift("m1a", T0 + i * 4 * HOUR, T0 + (i + 1) * 4 * HOUR) for i in range(4)]
    await put(client, "/v1/units/b1/duty", {"shifts": shifts})

    async def window(**params: datetime) -> list[datetime]:
        resp = await client.get(
            "/v1/units/b1/duty", params={k: v.isoformat() for k, v in params.items()}, headers=auth()
        )
        assert resp.status == 200, await resp.text()
        return [start for _, start, _ in _spans(await resp.json())]

    starts = [T0 + i * 4 * HOUR for i in range(4)]
    assert await window() == starts
    # [from, to) against [starts_at, ends_at): touching the edge is not overlapping.
    assert await window(**{"from": T0 + 4 * HOUR, "to": T0 + 12 * HOUR}) == starts[1:3]
    assert await window(**{"from": T0 + 5 * HOUR}) == starts[1:]
    assert await window(to=T0 + 4 * HOUR + timedelta(seconds=1)) == starts[:2]
    assert await window(**{"from": T0 + 20 * HOUR}) == []
    resp = await client.get(
        "/v1/units/b1/duty", params={"from": T0.isoformat(), "to": T0.isoformat()}, headers=auth()
    )
    await problem(resp, 422, [{"field": "query.to", "message": "must be after from"}])
    resp = await client.get("/v1/units/b1/duty", params={"from": "2030-03-01T08:00:00"}, headers=auth())
    await problem(resp, 422, [{"field": "query.from", "message": "Input should have timezone info"}])
    resp = await client.get("/v1/units/b1/duty", params={"since": T0.isoformat()}, headers=auth())
    await problem(resp, 422, [{"field": "query.since", "message": "unknown field"}])


# --- who is on duty -------------------------------------------------------------------------------


async def test_on_duty_falls_back_up_the_tree_as_time_moves(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """g1a's own roster, then its branch's, then the committee's; several at once; then nobody."""
    now = await _now(db)
    await put(client, "/v1/units/g1a/duty", {"shifts": [_shift("m1a", now + HOUR, now + 2 * HOUR)]})
    await put(client, "/v1/units/b1/duty", {"shifts": [_shift("m1b", now - HOUR, now + 3 * HOUR)]})
    await put(
        client,
        "/v1/units/c/duty",
        {
            "shifts": [
                _shift("m2a", now - HOUR, now + 10 * HOUR),
                _shift("m2b", now + 5 * HOUR, now + 10 * HOUR),
            ]
        },
    )
    answer = await _on_duty(client, "g1a")
    assert _who(answer) == ("b1", ["m1b"], True)
    assert answer["requested_unit_id"] == "g1a"
    assert datetime.fromisoformat(answer["at"]) - now < timedelta(minutes=5)
    assert answer["members"] == [
        {
            "member_id": "m1b",
            "name": "Officer g1b",
            "starts_at": (now - HOUR).isoformat().replace("+00:00", "Z"),
            "ends_at": (now + 3 * HOUR).isoformat().replace("+00:00", "Z"),
        }
    ]
    await advance_clock(db, 1.5 * 3600)
    assert _who(await _on_duty(client, "g1a")) == ("g1a", ["m1a"], False)
    assert _who(await _on_duty(client, "g1b")) == ("b1", ["m1b"], True)
    assert _who(await _on_duty(client, "b1")) == ("b1", ["m1b"], False)
    await advance_clock(db, 2.5 * 3600)  # now + 4h: b1's shift is over
    answer = await _on_duty(client, "g1a")
    assert _who(answer) == ("c", ["m2a"], True)
    assert datetime.fromisoformat(answer["at"]) - now >= 4 * HOUR
    await advance_clock(db, 2 * 3600)  # now + 6h: two on duty at the committee
    assert _who(await _on_duty(client, "g1a")) == ("c", ["m2a", "m2b"], True)
    assert _who(await _on_duty(client, "c")) == ("c", ["m2a", "m2b"], False)
    await advance_clock(db, 5 * 3600)  # now + 11h: nobody anywhere
    answer = await _on_duty(client, "g1a")
    assert answer["unit_id"] is None
    assert answer["members"] == []
    assert answer["fallback"] is False
    assert answer["requested_unit_id"] == "g1a"


async def test_on_duty_at_a_given_time(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/units/g1a/duty", {"shifts": [_shift("m1a", T0 + HOUR, T0 + 2 * HOUR)]})
    await put(
        client,
        "/v1/units/b1/duty",
        {"shifts": [_shift("m1b", T0, T0 + 3 * HOUR), _shift("m1a", T0 + 2 * HOUR, T0 + 3 * HOUR)]},
    )
    assert _who(await _on_duty(client, "g1a", T0)) == ("b1", ["m1b"], True)
    # The start is inclusive, the end exclusive; an offset of +08:00 survives the query string.
    answer = await _on_duty(client, "g1a", T0 + HOUR)
    assert _who(answer) == ("g1a", ["m1a"], False)
    assert datetime.fromisoformat(answer["at"]) == T0 + HOUR
    assert _who(await _on_duty(client, "g1a", T0 + 2 * HOUR - timedelta(microseconds=1))) == (
        "g1a",
        ["m1a"],
        False,
    )
    assert _who(await _on_duty(client, "g1a", T0 + 2 * HOUR)) == ("b1", ["m1a", "m1b"], True)
    assert _who(await _on_duty(client, "g1a", T0 + 3 * HOUR)) == (None, [], False)
    assert _who(await _on_duty(client, "g1a", T0 - HOUR)) == (None, [], False)
    resp = await client.get("/v1/units/g1a/on-duty", params={"at": "2030-03-01T08:00:00"}, headers=auth())
    await problem(resp, 422, [{"field": "query.at", "message": "Input should have timezone info"}])


@pytest.mark.parametrize("value", ["0.5", "1700000000", "2030-03-01"])
async def test_a_timestamp_is_date_time_text_not_a_number(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org, value: str
) -> None:
    """The fuzzer found ``?at=0.5`` read as 1970-01-01T00:00:00.5Z: the document says date-time."""
    for path, name in (("/v1/units/g1a/on-duty", "at"), ("/v1/units/g1a/duty", "to")):
        resp = await client.get(path, params={name: value}, headers=auth())
        body = await resp.json()
        assert resp.status == 422, body
        assert [e["field"] for e in body["errors"]] == [f"query.{name}"]
    resp = await client.put(
        "/v1/units/g1a/duty",
        json={"shifts": [_shift("m1a", T0, T0 + HOUR) | {"starts_at": value}]},
        headers=auth(),
    )
    assert resp.status == 422, await resp.text()


# --- roles and scope ------------------------------------------------------------------------------


async def test_roles(client: TestClient[Any, Any], db: asyncpg.Connection, org: Org) -> None:
    body = {"shifts": [_shift("m1a", T0, T0 + HOUR)]}
    before = await snapshot(db)
    for token in (org.b1_secretary, org.m1a_member):
        resp = await client.put("/v1/units/b1/duty", json=body, headers=auth(token))
        await problem(resp, 403)
    assert await snapshot(db) == before
    for path in ("/v1/units/b1/duty", "/v1/units/b1/on-duty"):
        resp = await client.get(path, headers=auth(org.m1a_member))
        await problem(resp, 403)
    await put(client, "/v1/units/b1/duty", body, token=org.b1_service)
    assert len((await get(client, "/v1/units/b1/duty", token=org.b1_secretary))["shifts"]) == 1
    answer = await _on_duty(client, "g1a", T0, token=org.b1_secretary)
    assert _who(answer) == ("b1", ["m1a"], True)
    resp = await client.get("/v1/units/b1/duty")
    await problem(resp, 401)


async def test_other_branches_are_not_found(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/units/b2/duty", {"shifts": [_shift("m2a", T0, T0 + HOUR)]})
    before = await snapshot(db)
    for unit in ("b2", "g2a", "c", "nope"):
        resp = await client.put(f"/v1/units/{unit}/duty", json={"shifts": []}, headers=auth(org.b1_service))
        body = await problem(resp, 404)
        assert body["detail"] == "unit not found"
        for path in (f"/v1/units/{unit}/duty", f"/v1/units/{unit}/on-duty"):
            for token in (org.b1_service, org.b1_secretary):
                resp = await client.get(path, headers=auth(token))
                body = await problem(resp, 404)
                assert body["detail"] == "unit not found"
    assert await snapshot(db) == before


async def test_scoped_walk_stops_at_the_callers_unit(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    """Only the committee has anyone on duty: an admin is told so; a b1 key is told nobody, since
    the committee's roster lies above its reach."""
    await put(client, "/v1/units/c/duty", {"shifts": [_shift("m2a", T0, T0 + 4 * HOUR)]})
    assert _who(await _on_duty(client, "g1a", T0)) == ("c", ["m2a"], True)
    assert _who(await _on_duty(client, "b1", T0)) == ("c", ["m2a"], True)
    for token in (org.b1_service, org.b1_secretary):
        for unit in ("g1a", "b1"):
            answer = await _on_duty(client, unit, T0, token=token)
            assert answer == {
                "unit_id": None,
                "requested_unit_id": unit,
                "at": "2030-03-01T00:00:00Z",
                "members": [],
                "fallback": False,
            }
    # Within its reach, the walk still falls back to the key's own unit.
    await put(client, "/v1/units/b1/duty", {"shifts": [_shift("m1b", T0, T0 + HOUR)]}, token=org.b1_service)
    assert _who(await _on_duty(client, "g1a", T0, token=org.b1_service)) == ("b1", ["m1b"], True)
    assert _who(await _on_duty(client, "b1", T0, token=org.b1_secretary)) == ("b1", ["m1b"], False)
