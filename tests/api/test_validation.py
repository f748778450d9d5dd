"""Bad input is answered with RFC 9457 problem+json naming each offending field, and nothing is
stored: every test compares a snapshot of every table before and after the rejected request."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.api.routing import MAX_JSON_DEPTH
from tests.api.conftest import count, fields, issue_key, problem, snapshot
from tests.conftest import auth, wait_until
from tests.helpers import get, post, put

# Parametrize ids must be the same in every process that collects them (pytest-xdist): no uuid4().
UNKNOWN_UUID = "5f604abf-07a1-4fde-aedf-5d2be0887f74"

PROBLEMS = "https://notifier.dev/problems/"
NOTICE = {"kind": "notice", "title": "Meeting", "body": "Friday 9:00", "audience": {"units": ["c"]}}


async def _tree(client: TestClient[Any, Any]) -> None:
    """c -> b -> g, member m in g."""
    await put(client, "/v1/units/c", {"name": "Committee"})
    await put(client, "/v1/units/b", {"name": "Branch", "parent_id": "c"})
    await put(client, "/v1/units/g", {"name": "Group", "parent_id": "b"})
    await put(client, "/v1/members/m", {"name": "Officer", "units": ["g"]})


# --- body shape -----------------------------------------------------------------------------------


async def test_missing_fields_are_named(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    before = await snapshot(db)
    resp = await client.put("/v1/units/c", json={}, headers=auth())
    body = await problem(resp, 422, [{"field": "name", "message": "Field required"}])
    assert body["type"] == PROBLEMS + "validation"
    assert body["detail"] == "name: Field required"

    resp = await client.post("/v1/notices", json={"kind": "ding"}, headers=auth())
    body = await problem(resp, 422)
    assert fields(body) == ["title", "body", "audience"]
    assert {e["message"] for e in body["errors"]} == {"Field required"}
    assert await snapshot(db) == before


async def test_unknown_fields_are_rejected(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    before = await snapshot(db)
    resp = await client.put("/v1/units/c", json={"name": "Committee", "colour": "red"}, headers=auth())
    await problem(resp, 422, [{"field": "colour", "message": "unknown field"}])
    nested = {**NOTICE, "audience": {"units": ["c"], "everyone": True}}
    resp = await client.post("/v1/notices", json=nested, headers=auth())
    await problem(resp, 422, [{"field": "audience.everyone", "message": "unknown field"}])
    batch = {"members": [{"id": "m", "name": "M", "units": ["c"], "rank": 3}]}
    resp = await client.post("/v1/members:batch", json=batch, headers=auth())
    await problem(resp, 422, [{"field": "members[0].rank", "message": "unknown field"}])
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b'{"name": "Committee"', "request body is not valid JSON"),
        (b"{'name': 'Committee'}", "request body is not valid JSON"),
        (b"\xff\xfe", "request body is not valid JSON"),
        (b'["name", "Committee"]', "request body must be a JSON object"),
        (b'"Committee"', "request body must be a JSON object"),
        (b"null", "request body must be a JSON object"),
        (b"", "request body must be a JSON object"),
    ],
)
async def test_malformed_or_non_object_body_is_400(
    client: TestClient[Any, Any], db: asyncpg.Connection, raw: bytes, detail: str
) -> None:
    before = await snapshot(db)
    headers = {**auth(), "Content-Type": "application/json"}
    resp = await client.put("/v1/units/c", data=raw, headers=headers)
    body = await problem(resp, 400)
    assert body["type"] == PROBLEMS + "malformed"
    assert body["detail"] == detail
    assert await snapshot(db) == before


async def test_deeply_nested_json_is_400_not_500(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    before = await snapshot(db)
    headers = {**auth(), "Content-Type": "application/json"}
    resp = await client.put("/v1/units/c", data=b'{"name": ' + b"[" * 100_000, headers=headers)
    body = await problem(resp, 400)
    assert body["detail"] == "request body is not valid JSON"
    assert await snapshot(db) == before


NUL = "must not contain NUL characters"


async def test_nul_characters_are_422_naming_the_field(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """PostgreSQL text cannot hold U+0000: it must be refused up front, not fail as a 500."""
    await _tree(client)
    before = await snapshot(db)
    cases: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("PUT", "/v1/units/c", {"name": "Com\u0000mittee"}, "name"),
        ("PUT", "/v1/units/x", {"name": "X", "parent_id": "c\u0000"}, "parent_id"),
        ("PUT", "/v1/members/m", {"name": "M", "units": ["g", "g\u0000"]}, "units[1]"),
        ("POST", "/v1/notices", {**NOTICE, "audience": {"members": ["m\u0000"]}}, "audience.members[0]"),
        ("POST", "/v1/notices", {**NOTICE, "body": "\u0000"}, "body"),
        (
            "POST",
            "/v1/members/m/contacts",
            {"channel": "webhook", "target": {"url\u0000": "x"}},
            "target.url\u0000",
        ),
        (
            "POST",
            "/v1/members/m/contacts",
            {"channel": "webhook", "target": {"url": "https://example.org/\u0000"}},
            "target.url",
        ),
        ("GET", "/v1/units/g%00", None, "unit_id"),
        ("GET", "/v1/members/m%00/inbox", None, "member_id"),
        ("GET", "/v1/units?cursor=g%00", None, "query.cursor"),
    ]
    for method, path, payload, field in cases:
        resp = await client.request(method, path, json=payload, headers=auth())
        await problem(resp, 422, [{"field": field, "message": NUL}])
    assert await snapshot(db) == before


async def test_a_nul_in_a_utf16_body_is_named_too(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """The NUL walk is skipped only when the raw body cannot hold one (routing.may_hold_nul): a
    UTF-16 body, which the parser accepts, writes its escape with NUL bytes in between."""
    await _tree(client)
    before = await snapshot(db)
    body = json.dumps({"name": "Com\u0000mittee"}).encode("utf-16-le")
    assert b"\\u0000" not in body
    resp = await client.put("/v1/units/c", data=body, headers={**auth(), "Content-Type": "application/json"})
    await problem(resp, 422, [{"field": "name", "message": NUL}])
    assert await snapshot(db) == before


async def test_a_body_nesting_deeper_than_the_limit_is_400_and_at_it_is_validated(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """MAX_JSON_DEPTH levels (the body one, each member one more) are parsed and validated; one
    more is refused before validation (routing._too_deep, walked level by level)."""
    before = await snapshot(db)

    def nested(levels: int, leaf: Any) -> dict[str, Any]:
        value: Any = leaf
        for _ in range(levels - 1):
            value = [value]
        return {"name": "Committee", "extra": value}

    leaves: list[Any] = [1, [], {}]  # at MAX_JSON_DEPTH: validated, the unknown field named
    for leaf in leaves:
        resp = await client.put("/v1/units/c", json=nested(MAX_JSON_DEPTH - 1, leaf), headers=auth())
        body = await problem(resp, 422)
        assert [e["field"] for e in body["errors"]][0].startswith("extra"), body
    leaves = [1, [1], {"a": 1}]  # one level more
    for leaf in leaves:
        resp = await client.put("/v1/units/c", json=nested(MAX_JSON_DEPTH, leaf), headers=auth())
        body = await problem(resp, 400)
        assert body["detail"] == f"request body nests deeper than {MAX_JSON_DEPTH} levels", body
    assert await snapshot(db) == before


# --- organisation ---------------------------------------------------------------------------------


async def test_unknown_unit_in_member_units(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.put(
        "/v1/members/m", json={"name": "Renamed", "units": ["g", "nope", "b", "gone"]}, headers=auth()
    )
    await problem(
        resp,
        422,
        [
            {"field": "units[1]", "message": "unknown unit"},
            {"field": "units[3]", "message": "unknown unit"},
        ],
    )
    resp = await client.put("/v1/members/new", json={"name": "New", "units": ["nope"]}, headers=auth())
    await problem(resp, 422, [{"field": "units[0]", "message": "unknown unit"}])
    resp = await client.put("/v1/members/new", json={"name": "New", "units": []}, headers=auth())
    body = await problem(resp, 422)
    assert fields(body) == ["units"]
    # The existing member kept its name and its one membership.
    assert await snapshot(db) == before
    assert await db.fetchval("SELECT name FROM members WHERE id = 'm'") == "Officer"


async def test_cyclic_parent_is_refused_and_tree_unchanged(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await put(client, "/v1/units/a", {"name": "A"})
    await put(client, "/v1/units/b", {"name": "B", "parent_id": "a"})
    await put(client, "/v1/units/c", {"name": "C", "parent_id": "b"})
    before = await snapshot(db)
    message = "would create a cycle: the parent lies below this unit"
    resp = await client.put("/v1/units/a", json={"name": "A", "parent_id": "c"}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": message}])
    resp = await client.put("/v1/units/a", json={"name": "A", "parent_id": "b"}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": message}])
    resp = await client.put("/v1/units/b", json={"name": "B", "parent_id": "c"}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": message}])
    assert await snapshot(db) == before
    tree = await db.fetch("SELECT id, parent_id FROM units ORDER BY id")
    assert [(r["id"], r["parent_id"]) for r in tree] == [("a", None), ("b", "a"), ("c", "b")]


async def test_self_parent_and_unknown_parent(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await put(client, "/v1/units/a", {"name": "A"})
    before = await snapshot(db)
    resp = await client.put("/v1/units/a", json={"name": "A", "parent_id": "a"}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": "a unit cannot be its own parent"}])
    # A new unit naming itself as parent is refused the same way, not as "unknown unit".
    resp = await client.put("/v1/units/z", json={"name": "Z", "parent_id": "z"}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": "a unit cannot be its own parent"}])
    resp = await client.put("/v1/units/z", json={"name": "Z", "parent_id": "nope"}, headers=auth())
    await problem(resp, 422, [{"field": "parent_id", "message": "unknown unit"}])
    assert await snapshot(db) == before


@pytest.mark.parametrize("unit_id", ["has space", "x" * 129])
async def test_bad_unit_id_in_path(
    client: TestClient[Any, Any], db: asyncpg.Connection, unit_id: str
) -> None:
    before = await snapshot(db)
    resp = await client.put(f"/v1/units/{unit_id}", json={"name": "X"}, headers=auth())
    await problem(
        resp, 422, [{"field": "unit_id", "message": "must be 1..128 characters without whitespace or '/'"}]
    )
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"phone": "13800138000"}, "phone", "Value error, must be an E.164 number such as +8613800138000"),
        ({"phone": "+0123456789"}, "phone", "Value error, must be an E.164 number such as +8613800138000"),
        (
            {"phone": "+86 138 0013 8000"},
            "phone",
            "Value error, must be an E.164 number such as +8613800138000",
        ),
        ({"email": "officer.example.org"}, "email", "Value error, must be an email address"),
        ({"email": "a@b"}, "email", "Value error, must be an email address"),
        ({"email": "a" * 250 + "@x.org"}, "email", "Value error, must be an email address"),
        (
            {"timezone": "Mars/Olympus"},
            "timezone",
            "Value error, must be an IANA time zone such as Asia/Shanghai",
        ),
        (
            {"timezone": "../../etc/passwd"},
            "timezone",
            "Value error, must be an IANA time zone such as Asia/Shanghai",
        ),
        ({"timezone": ""}, "timezone", "Value error, must be an IANA time zone such as Asia/Shanghai"),
    ],
)
async def test_bad_phone_email_timezone(
    client: TestClient[Any, Any], db: asyncpg.Connection, extra: dict[str, str], field: str, message: str
) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.put("/v1/members/m", json={"name": "M", "units": ["g"], **extra}, headers=auth())
    await problem(resp, 422, [{"field": field, "message": message}])
    batch = {
        "members": [
            {"id": "n1", "name": "N", "units": ["g"]},
            {"id": "n2", "name": "N", "units": ["g"], **extra},
        ]
    }
    resp = await client.post("/v1/members:batch", json=batch, headers=auth())
    await problem(resp, 422, [{"field": f"members[1].{field}", "message": message}])
    assert await snapshot(db) == before


async def test_good_phone_email_timezone_are_accepted(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """The validators above refuse only bad values."""
    await _tree(client)
    good = {"phone": "+8613800138000", "email": "officer@example.org", "timezone": "Asia/Shanghai"}
    member = await put(client, "/v1/members/m", {"name": "M", "units": ["g"], **good})
    assert {k: member[k] for k in good} == good


async def test_oversized_batch_stores_nothing(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await put(client, "/v1/units/g", {"name": "Group"})
    before = await snapshot(db)
    batch = {"members": [{"id": f"m{i:05d}", "name": "N", "units": ["g"]} for i in range(10_001)]}
    resp = await client.post("/v1/members:batch", json=batch, headers=auth())
    body = await problem(resp, 422)
    assert body["errors"] == [
        {"field": "members", "message": "List should have at most 10000 items after validation, not 10001"}
    ]
    assert await snapshot(db) == before
    assert await count(db, "members") == 0


async def test_batch_errors_name_every_bad_row_and_store_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    before = await snapshot(db)
    batch = {
        "members": [
            {"id": "n1", "name": "One", "units": ["g"]},
            {"id": "n2", "name": "Two", "units": ["g"]},
            {"id": "n1", "name": "One again", "units": ["b"]},
            {"id": "n3", "name": "Three", "units": ["g", "nope"]},
        ]
    }
    resp = await client.post("/v1/members:batch", json=batch, headers=auth())
    await problem(
        resp,
        422,
        [
            {"field": "members[2].id", "message": "duplicate member id in this batch"},
            {"field": "members[3].units[1]", "message": "unknown unit"},
        ],
    )
    resp = await client.post("/v1/members:batch", json={"members": []}, headers=auth())
    body = await problem(resp, 422)
    assert fields(body) == ["members"]
    assert await snapshot(db) == before


# --- notices --------------------------------------------------------------------------------------


async def test_unknown_audience_units_and_members(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    before = await snapshot(db)
    audience = {"units": ["g", "nope", "c"], "members": ["ghost", "m", "g"]}
    resp = await client.post("/v1/notices", json={**NOTICE, "audience": audience}, headers=auth())
    await problem(
        resp,
        422,
        [
            {"field": "audience.units[1]", "message": "unknown unit"},
            {"field": "audience.members[0]", "message": "unknown member"},
            {"field": "audience.members[2]", "message": "unknown member"},
        ],
    )
    assert await snapshot(db) == before


@pytest.mark.parametrize("audience", [{}, {"units": [], "members": []}])
async def test_empty_audience(
    client: TestClient[Any, Any], db: asyncpg.Connection, audience: dict[str, Any]
) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.post("/v1/notices", json={**NOTICE, "audience": audience}, headers=auth())
    await problem(resp, 422, [{"field": "audience", "message": "name at least one member or unit"}])
    assert await snapshot(db) == before


async def test_unknown_and_repeated_channels(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.post("/v1/notices", json={**NOTICE, "channels": ["inapp", "sms"]}, headers=auth())
    await problem(resp, 422, [{"field": "channels[1]", "message": "unknown channel; one of inapp, webhook"}])
    resp = await client.post(
        "/v1/notices", json={**NOTICE, "channels": ["webhook", "inapp", "webhook"]}, headers=auth()
    )
    await problem(resp, 422, [{"field": "channels", "message": "Value error, channels must not repeat"}])
    resp = await client.post("/v1/notices", json={**NOTICE, "channels": []}, headers=auth())
    body = await problem(resp, 422)
    assert fields(body) == ["channels"]
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "memo"}, "kind"),
        ({"title": ""}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"body": ""}, "body"),
        ({"audience": ["c"]}, "audience"),
        ({"audience": {"units": "c"}}, "audience.units"),
        ({"audience": {"units": [""]}}, "audience.units[0]"),
    ],
)
async def test_bad_notice_fields(
    client: TestClient[Any, Any], db: asyncpg.Connection, change: dict[str, Any], field: str
) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.post("/v1/notices", json={**NOTICE, **change}, headers=auth())
    body = await problem(resp, 422)
    assert fields(body) == [field]
    assert await snapshot(db) == before


# --- contacts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "field", "message"),
    [
        ("not a url", "target.url", "url must be an absolute http(s) URL"),
        ("/relative/path", "target.url", "url must be an absolute http(s) URL"),
        ("ftp://example.org/hook", "target.url", "url must be an absolute http(s) URL"),
        ("https://user:pw@example.org/hook", "target.url", "url must not carry credentials"),
        (
            "https://example.org/" + "x" * 2048,
            "target.url",
            "url must be a string of at most 2048 bytes",
        ),
        ({"url": 5}, "target.url", "url must be a string of at most 2048 bytes"),
        ({"href": "https://example.org/"}, "target.href", "unknown field 'href'"),
        (
            {"url": "https://example.org/", "secret": "nope!"},
            "target.secret",
            "secret must be 'whsec_' followed by base64",
        ),
        (
            {"url": "https://example.org/", "secret": "whsec_c2hvcnQ="},
            "target.secret",
            "secret must decode to 16..64 bytes",
        ),
    ],
)
async def test_bad_webhook_target(
    client: TestClient[Any, Any], db: asyncpg.Connection, target: Any, field: str, message: str
) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.post(
        "/v1/members/m/contacts", json={"channel": "webhook", "target": target}, headers=auth()
    )
    await problem(resp, 422, [{"field": field, "message": message}])
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://127.0.0.1:8080/hook",
        "http://192.168.1.20/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
    ],
)
async def test_private_webhook_target_refused_when_not_allowed(
    strict_client: TestClient[Any, Any], db: asyncpg.Connection, url: str
) -> None:
    await _tree(strict_client)
    before = await snapshot(db)
    resp = await strict_client.post(
        "/v1/members/m/contacts", json={"channel": "webhook", "target": url}, headers=auth()
    )
    body = await problem(resp, 422)
    assert fields(body) == ["target.url"]
    assert body["errors"][0]["message"].endswith("is not a public address")
    assert await snapshot(db) == before
    # A public address is accepted by the same app: the refusal is about the address.
    created = await post(
        strict_client,
        "/v1/members/m/contacts",
        {"channel": "webhook", "target": "https://93.184.215.14/hook"},
    )
    assert created["target"] == {"url": "https://93.184.215.14/hook"}


async def test_private_webhook_target_allowed_when_configured(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    created = await post(
        client, "/v1/members/m/contacts", {"channel": "webhook", "target": "http://10.0.0.1/hook"}
    )
    assert created["target"] == {"url": "http://10.0.0.1/hook"}


async def test_inapp_and_unknown_channel_contacts(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.post(
        "/v1/members/m/contacts", json={"channel": "inapp", "target": "m"}, headers=auth()
    )
    await problem(
        resp,
        422,
        [
            {
                "field": "target",
                "message": "the inapp channel reaches every member's inbox and takes no contact",
            }
        ],
    )
    resp = await client.post(
        "/v1/members/m/contacts", json={"channel": "pager", "target": "12345"}, headers=auth()
    )
    await problem(resp, 422, [{"field": "channel", "message": "unknown channel; one of inapp, webhook"}])
    resp = await client.post("/v1/members/m/contacts", json={"channel": "webhook"}, headers=auth())
    await problem(resp, 422, [{"field": "target", "message": "Field required"}])
    assert await snapshot(db) == before


# --- who may ask ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": "test-admin-token"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer test-admin-token-but-longer"},
    ],
)
async def test_missing_or_invalid_token_is_401(
    client: TestClient[Any, Any], db: asyncpg.Connection, headers: dict[str, str]
) -> None:
    before = await snapshot(db)
    resp = await client.put("/v1/units/c", json={"name": "Committee"}, headers=headers)
    body = await problem(resp, 401)
    assert body["type"] == PROBLEMS + "unauthorized"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="notifier"'
    resp = await client.get("/v1/units", headers=headers)
    await problem(resp, 401)
    assert await snapshot(db) == before


async def test_revoked_key_is_401(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await put(client, "/v1/units/c", {"name": "Committee"})
    created = await post(client, "/v1/api-keys", {"name": "app", "role": "service", "unit_id": "c"})
    assert (await client.get("/v1/units/c", headers=auth(created["token"]))).status == 200
    resp = await client.delete(f"/v1/api-keys/{created['id']}", headers=auth())
    assert resp.status == 204
    resp = await client.get("/v1/units/c", headers=auth(created["token"]))
    body = await problem(resp, 401)
    assert body["detail"] == "unknown or revoked token"


async def test_wrong_role_is_403_and_stores_nothing(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    secretary = await issue_key(client, {"name": "desk", "role": "secretary", "unit_id": "c"})
    service = await issue_key(client, {"name": "app", "role": "service", "unit_id": "c"})
    member = await issue_key(client, {"name": "phone", "role": "member", "member_id": "m"})
    before = await snapshot(db)
    resp = await client.put("/v1/units/g2", json={"name": "G2", "parent_id": "b"}, headers=auth(secretary))
    body = await problem(resp, 403)
    assert body["type"] == PROBLEMS + "forbidden"
    assert body["detail"] == "a secretary key may not do this"
    resp = await client.post("/v1/notices", json=NOTICE, headers=auth(member))
    body = await problem(resp, 403)
    assert body["detail"] == "a member key may not do this"
    resp = await client.post("/v1/api-keys", json={"name": "root", "role": "admin"}, headers=auth(service))
    body = await problem(resp, 403)
    assert body["detail"] == "only an admin may issue admin keys"
    assert await snapshot(db) == before


# --- notices that are not there -------------------------------------------------------------------


@pytest.mark.parametrize("notice_id", [UNKNOWN_UUID, "not-a-uuid", "12345", "%20"])
async def test_unknown_notice_is_404(
    client: TestClient[Any, Any], db: asyncpg.Connection, notice_id: str
) -> None:
    await _tree(client)
    for path in (f"/v1/notices/{notice_id}", f"/v1/notices/{notice_id}/recipients"):
        resp = await client.get(path, headers=auth())
        body = await problem(resp, 404)
        assert body["type"] == PROBLEMS + "not-found"
        assert body["detail"] == "notice not found"
    before = await snapshot(db)
    resp = await client.post(
        f"/v1/notices/{notice_id}/receipts", json={"type": "read", "member_id": "m"}, headers=auth()
    )
    body = await problem(resp, 404)
    assert body["detail"] == "notice not found"
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "query.limit"),
        ("limit=-1", "query.limit"),
        ("limit=1001", "query.limit"),
        ("limit=ten", "query.limit"),
        ("limit=1&limit=2", "query.limit"),
        ("status=bogus", "query.status"),
        ("unit=", "query.unit"),
        ("colour=red", "query.colour"),
        ("cursor=" + "A" * 401, "query.cursor"),
    ],
)
async def test_bad_recipient_query_params(
    client: TestClient[Any, Any], db: asyncpg.Connection, query: str, field: str
) -> None:
    await _tree(client)
    notice = await post(client, "/v1/notices", NOTICE, status=202)
    resp = await client.get(f"/v1/notices/{notice['id']}/recipients?{query}", headers=auth())
    body = await problem(resp, 422)
    assert fields(body) == [field]


@pytest.mark.parametrize("cursor", ["!!!", "a", "zzzz", "AA", "@@@@", "bm9w ZQ"])
async def test_garbage_recipient_cursor(
    client: TestClient[Any, Any], db: asyncpg.Connection, cursor: str
) -> None:
    await _tree(client)
    notice = await post(client, "/v1/notices", NOTICE, status=202)
    resp = await client.get(f"/v1/notices/{notice['id']}/recipients?cursor={cursor}", headers=auth())
    await problem(resp, 422, [{"field": "query.cursor", "message": "not a cursor this API returned"}])


async def test_recipients_query_accepts_good_values(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """The refusals above are about the values, not the parameters."""
    await _tree(client)
    notice = await post(client, "/v1/notices", NOTICE, status=202)
    page = await get(client, f"/v1/notices/{notice['id']}/recipients?limit=1000&status=unread&unit=g")
    assert page == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "12345", UNKNOWN_UUID])
async def test_unknown_contact_and_api_key_ids_are_404(
    client: TestClient[Any, Any], db: asyncpg.Connection, bad_id: str
) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.delete(f"/v1/members/m/contacts/{bad_id}", headers=auth())
    body = await problem(resp, 404)
    assert body["detail"] == "contact not found"
    resp = await client.delete(f"/v1/api-keys/{bad_id}", headers=auth())
    body = await problem(resp, 404)
    assert body["detail"] == "api key not found"
    assert await snapshot(db) == before


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "AA",
        _b64("nope"),
        _b64("2026-01-01T00:00:00+00:00|nope"),
        _b64(f"yesterday|{UNKNOWN_UUID}"),
    ],
)
async def test_garbage_inbox_cursor(
    client: TestClient[Any, Any], db: asyncpg.Connection, cursor: str
) -> None:
    await _tree(client)
    resp = await client.get(f"/v1/members/m/inbox?cursor={cursor}", headers=auth())
    await problem(resp, 422, [{"field": "query.cursor", "message": "not a cursor this API returned"}])
    # A well-formed cursor is accepted (and nothing lies before it).
    good = _b64(f"2026-01-01T00:00:00+00:00|{uuid.uuid4()}")
    assert await get(client, f"/v1/members/m/inbox?cursor={good}") == {"items": [], "next_cursor": None}


async def test_cursors_the_api_returns_are_accepted(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    """The cursor checks above refuse garbage only: every page of a real listing is reachable."""
    await _tree(client)
    for m in ("m2", "m3"):
        await put(client, f"/v1/members/{m}", {"name": m, "units": ["g"]})
    ids = [(await post(client, "/v1/notices", {**NOTICE, "title": t}, status=202))["id"] for t in "AB"]

    async def fanned_out() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM notices WHERE state = 'active'") == 2)

    await wait_until(fanned_out, within=20)
    seen: list[str] = []
    path = f"/v1/notices/{ids[0]}/recipients?limit=1"
    while True:
        page = await get(client, path)
        seen += [r["member_id"] for r in page["items"]]
        if page["next_cursor"] is None:
            break
        path = f"/v1/notices/{ids[0]}/recipients?limit=1&cursor={page['next_cursor']}"
    assert seen == ["m", "m2", "m3"]
    inbox: list[str] = []
    path = "/v1/members/m2/inbox?limit=1"
    while True:
        page = await get(client, path)
        inbox += [i["notice_id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        path = f"/v1/members/m2/inbox?limit=1&cursor={page['next_cursor']}"
    assert sorted(inbox) == sorted(ids)
    assert len(inbox) == 2


# --- hardening found in review ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"kind": "notice", "title": NaN}',
        b'{"kind": "notice", "title": "t", "x": Infinity}',
        b'{"kind": "notice", "title": "t", "x": 1e999}',
        b'{"quiz": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}",
    ],
)
async def test_non_finite_numbers_and_deep_nesting_are_400(
    client: TestClient[Any, Any], db: asyncpg.Connection, raw: bytes
) -> None:
    await _tree(client)
    before = await snapshot(db)
    resp = await client.post("/v1/notices", data=raw, headers={**auth(), "Content-Type": "application/json"})
    body = await problem(resp, 400)
    assert body["errors"][0]["field"] == "body"
    assert await snapshot(db) == before


async def test_out_of_range_times_are_422_not_500(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    before = await snapshot(db)
    for when in ("9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+05:00"):
        resp = await client.post("/v1/notices", json={**NOTICE, "send_at": when}, headers=auth())
        await problem(resp, 422)
    assert await snapshot(db) == before


async def test_odd_tokens_and_keys_are_refused_cleanly(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    resp = await client.get("/v1/units", headers={"Authorization": "Bearer t\u00e9st\u2028x"})
    await problem(resp, 401)
    resp = await client.post(
        "/v1/notices", json=NOTICE, headers={**auth(), "Idempotency-Key": "caf\u00e9-\u00e9t\u00e9"}
    )
    await problem(resp, 422)


async def test_secretaries_read_policies_but_do_not_change_them(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await _tree(client)
    secretary = await issue_key(client, {"name": "desk", "role": "secretary", "unit_id": "c"})
    policy = {"name": "p", "steps": [{"after": "PT5M", "remind": ["inapp"]}]}
    resp = await client.post("/v1/escalation-policies", json=policy, headers=auth(secretary))
    await problem(resp, 403)
    service = await issue_key(client, {"name": "svc", "role": "service", "unit_id": "c"})
    created = await post(client, "/v1/escalation-policies", policy, token=service)
    assert (await get(client, f"/v1/escalation-policies/{created['id']}", token=secretary))["name"] == "p"
    resp = await client.delete(f"/v1/escalation-policies/{created['id']}", headers=auth(secretary))
    await problem(resp, 403)
