"""The organisation imported from DingTalk's contacts API (the fake, on 127.0.0.1) and from CSV,
on real PostgreSQL: set-based, idempotent (a second run changes nothing), a moved user moved, a
departed one detached with their DingTalk contact disabled -- never deleted with their history."""

from __future__ import annotations

import io
from pathlib import Path

import asyncpg
import pytest

from notifier.__main__ import main
from notifier.cli.imports import import_csv, import_dingtalk
from notifier.db.imports import DEPARTED_REASON
from notifier.domain.org_import import ImportError_, from_csv, phone_e164
from notifier.settings import Settings
from tests.conftest import make_settings
from tests.fakes.dingtalk import FakeDingTalk

ZERO = {
    "units_created": 0,
    "units_updated": 0,
    "members_created": 0,
    "members_updated": 0,
    "memberships_added": 0,
    "memberships_removed": 0,
    "members_detached": 0,
    "contacts_added": 0,
    "contacts_enabled": 0,
    "contacts_disabled": 0,
}


@pytest.fixture
def fake(dingtalk_fake: FakeDingTalk) -> FakeDingTalk:
    f = dingtalk_fake
    # 支部 A (10) with group 12, 支部 B (11); 250 users, so a department takes three pages.
    f.departments = {10: ("一支部", 1), 11: ("二支部", 1), 12: ("一支部第一小组", 10)}
    for i in range(250):
        dept = 10 if i < 150 else 11
        f.org_users[f"u{i:03d}"] = {"name": f"党员{i}", "mobile": f"138{i:08d}", "depts": [dept]}
    f.org_users["u000"]["depts"] = [10, 12]  # in two departments
    return f


@pytest.fixture
def dt_settings(server_urls: tuple[str, str], fake: FakeDingTalk) -> Settings:
    return make_settings(server_urls, **fake.settings_overrides())


async def run(settings: Settings, dry_run: bool = False) -> dict[str, int]:
    return await import_dingtalk(settings, "org", dry_run, err=io.StringIO())


async def test_import_then_reimport_changes_nothing(
    dt_settings: Settings, db: asyncpg.Connection, fake: FakeDingTalk
) -> None:
    first = await run(dt_settings)
    assert first == {
        **ZERO,
        "units_created": 4,
        "members_created": 250,
        "memberships_added": 251,
        "contacts_added": 250,
    }
    units = await db.fetch("SELECT id, name, parent_id FROM units ORDER BY id")
    assert [tuple(u) for u in units] == [
        ("dt-10", "一支部", "org"),
        ("dt-11", "二支部", "org"),
        ("dt-12", "一支部第一小组", "dt-10"),
        ("org", "DingTalk", None),
    ]
    row = await db.fetchrow("SELECT name, phone FROM members WHERE id = 'u007'")
    assert row is not None and tuple(row) == ("党员7", "+8613800000007")
    assert await db.fetchval(
        "SELECT array_agg(unit_id ORDER BY unit_id) FROM member_units WHERE member_id = 'u000'"
    ) == [
        "dt-10",
        "dt-12",
    ]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM contacts WHERE channel = 'dingtalk' AND target = to_jsonb(member_id)"
        )
        == 250
    )
    assert fake.calls["user/list"] == 2 + 1 + 1 + 1  # dept 10: 2 pages; 11, 12 and the root: 1

    # A second run: nothing changes, not even updated_at.
    stamps = await db.fetch("SELECT id, updated_at FROM members ORDER BY id")
    assert await run(dt_settings) == ZERO
    assert await db.fetch("SELECT id, updated_at FROM members ORDER BY id") == stamps


async def test_moved_renamed_departed_and_returning_users(
    dt_settings: Settings, db: asyncpg.Connection, fake: FakeDingTalk
) -> None:
    await run(dt_settings)
    # Some history: u200 received a notice.
    nid = await db.fetchval(
        "INSERT INTO notices (kind, title, body, audience, channels) "
        "VALUES ('notice', 't', 'b', '{\"members\": [\"u200\"]}', '{dingtalk}') RETURNING id"
    )
    await db.execute(
        "INSERT INTO recipients (notice_id, member_id, dstatus) VALUES ($1, 'u200', 'delivered')", nid
    )

    fake.org_users["u001"]["depts"] = [11]  # moved from 一支部 to 二支部
    fake.departments[11] = ("第二支部", 1)  # renamed
    fake.org_users["u002"]["name"] = "党员二号"  # renamed
    del fake.org_users["u200"]  # left the organisation
    fake.org_users["u300"] = {"name": "新党员", "mobile": "", "depts": [12]}  # joined
    dry = await run(dt_settings, dry_run=True)
    expected = {
        **ZERO,
        "units_updated": 1,
        "members_created": 1,
        "members_updated": 1,
        "memberships_added": 2,
        "memberships_removed": 2,
        "members_detached": 1,
        "contacts_added": 1,
        "contacts_disabled": 1,
    }
    assert dry == expected
    assert await db.fetchval("SELECT count(*) FROM members") == 250  # a dry run writes nothing
    assert await run(dt_settings) == expected
    assert await db.fetchval("SELECT array_agg(unit_id) FROM member_units WHERE member_id = 'u001'") == [
        "dt-11"
    ]
    assert await db.fetchval("SELECT name FROM units WHERE id = 'dt-11'") == "第二支部"
    # The departed member is kept, with their history, detached and unreachable on DingTalk.
    assert await db.fetchval("SELECT name FROM members WHERE id = 'u200'") == "党员200"
    assert await db.fetchval("SELECT count(*) FROM recipients WHERE member_id = 'u200'") == 1
    assert await db.fetchval("SELECT count(*) FROM member_units WHERE member_id = 'u200'") == 0
    contact = await db.fetchrow("SELECT disabled_at, disabled_reason FROM contacts WHERE member_id = 'u200'")
    assert contact is not None and contact["disabled_at"] is not None
    assert contact["disabled_reason"] == DEPARTED_REASON
    assert await db.fetchval("SELECT phone FROM members WHERE id = 'u300'") is None
    assert await run(dt_settings) == ZERO

    # They come back: the same member, re-attached, the contact working again.
    fake.org_users["u200"] = {"name": "党员200", "mobile": "13800000200", "depts": [11]}
    assert await run(dt_settings) == {**ZERO, "memberships_added": 1, "contacts_enabled": 1}
    assert (
        await db.fetchval("SELECT count(*) FROM contacts WHERE member_id = 'u200' AND disabled_at IS NULL")
        == 1
    )


async def test_an_existing_member_with_the_userid_keeps_their_id(
    dt_settings: Settings, db: asyncpg.Connection, fake: FakeDingTalk
) -> None:
    await db.execute("INSERT INTO units (id, name) VALUES ('hq', 'HQ')")
    await db.execute("INSERT INTO members (id, name) VALUES ('zhang.san', '张三')")
    await db.execute("INSERT INTO member_units VALUES ('zhang.san', 'hq')")
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) VALUES ('zhang.san', 'dingtalk', '\"u005\"')"
    )
    await run(dt_settings)
    assert await db.fetchval("SELECT count(*) FROM members WHERE id = 'u005'") == 0
    assert await db.fetchval(
        "SELECT array_agg(unit_id ORDER BY unit_id) FROM member_units WHERE member_id = 'zhang.san'"
    ) == [
        "dt-10",
        "hq",  # outside the import's units: left alone
    ]
    assert await db.fetchval("SELECT name FROM members WHERE id = 'zhang.san'") == "党员5"


CSV = """unit_path,member_id,name,phone,dingtalk_userid
c/b1,m1,王芳,13900000001,wangfang
c/b1/g1,m2,李雷,+8613900000002,
c/b2,m1,王芳,13900000001,wangfang
c,m3,韩梅梅,,
"""


async def test_csv_import_and_reimport(settings: Settings, db: asyncpg.Connection) -> None:
    counts = await import_csv(settings, CSV, dry_run=False)
    assert counts == {
        **ZERO,
        "units_created": 4,
        "members_created": 3,
        "memberships_added": 4,
        "contacts_added": 1,
    }
    assert await db.fetchval("SELECT parent_id FROM units WHERE id = 'g1'") == "b1"
    assert await db.fetchval(
        "SELECT array_agg(unit_id ORDER BY unit_id) FROM member_units WHERE member_id = 'm1'"
    ) == [
        "b1",
        "b2",
    ]
    assert await import_csv(settings, CSV, dry_run=False) == ZERO
    # m3 is gone from the table: detached from its units (c is still the table's), kept.
    fewer = "\n".join(line for line in CSV.splitlines() if ",m3," not in line) + "\n"
    assert (await import_csv(settings, fewer, dry_run=False))["members_detached"] == 1
    assert await db.fetchval("SELECT count(*) FROM members WHERE id = 'm3'") == 1
    assert await db.fetchval("SELECT count(*) FROM member_units WHERE member_id = 'm3'") == 0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("unit,member\nc,m1\n", "header"),
        ("unit_path,member_id,name,phone,dingtalk_userid\nc/b b,m1,n,,\n", "row 2 unit_path"),
        ("unit_path,member_id,name,phone,dingtalk_userid\nc,m 1,n,,\n", "row 2 member_id"),
        ("unit_path,member_id,name,phone,dingtalk_userid\nc,m1,n,12ab,\n", "row 2 phone"),
        ("unit_path,member_id,name,phone,dingtalk_userid\nc,m1,n,,bad id\n", "row 2 dingtalk_userid"),
        ("unit_path,member_id,name,phone,dingtalk_userid\na/x,m1,n,,\nb/x,m2,n,,\n", "row 3 unit_path"),
    ],
)
def test_bad_csv_names_the_row_and_field(text: str, where: str) -> None:
    with pytest.raises(ImportError_) as info:
        from_csv(text)
    assert info.value.where == where


def test_phones_become_e164() -> None:
    assert phone_e164("138 0013 8000") == "+8613800138000"
    assert phone_e164("+86-13800138000") == "+8613800138000"
    assert phone_e164("+14155550100") == "+14155550100"
    assert phone_e164("12345") is None and phone_e164("") is None and phone_e164(None) is None


async def test_the_cli_dry_run_writes_nothing(
    settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("NOTIFIER_REDIS_URL", settings.redis_url)
    table = tmp_path / "org.csv"
    table.write_text(CSV, encoding="utf-8")
    await asyncio_to_thread(main, ["import", "csv", str(table), "--dry-run"])
    out = capsys.readouterr().out
    assert "would change (dry run, nothing written)" in out and "members_created=3" in out
    assert await db.fetchval("SELECT count(*) FROM members") == 0
    await asyncio_to_thread(main, ["import", "csv", str(table)])
    assert "changed: units_created=4" in capsys.readouterr().out
    assert await db.fetchval("SELECT count(*) FROM members") == 3


async def asyncio_to_thread(fn: object, argv: list[str]) -> None:
    import asyncio

    await asyncio.to_thread(fn, argv)  # type: ignore[arg-type]


async def test_the_import_endpoint_is_admin_only_and_audited(
    dt_settings: Settings, db: asyncpg.Connection, fake: FakeDingTalk
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from notifier.app import create_app
    from tests.conftest import auth

    async with TestClient(TestServer(create_app(dt_settings), host="127.0.0.1")) as client:
        resp = await client.post(
            "/v1/imports/dingtalk", json={"dry_run": True, "root_unit": "org"}, headers=auth()
        )
        body = await resp.json()
        assert resp.status == 200 and body["dry_run"] is True and body["changes"]["members_created"] == 250
        assert await db.fetchval("SELECT count(*) FROM members") == 0
        resp = await client.post("/v1/imports/dingtalk", json={"root_unit": "org"}, headers=auth())
        assert resp.status == 200 and (await resp.json())["changes"]["members_created"] == 250
        assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'import.dingtalk'") == 1
        resp = await client.post("/v1/imports/dingtalk", json={"root_unit": "org"}, headers=auth())
        assert (await resp.json())["changes"] == ZERO
        # A service key may not import; a bad root unit id is a 422 naming it.
        resp = await client.post(
            "/v1/api-keys", json={"name": "svc", "role": "service", "unit_id": "org"}, headers=auth()
        )
        token = (await resp.json())["token"]
        resp = await client.post("/v1/imports/dingtalk", json={}, headers=auth(token))
        assert resp.status == 403
        resp = await client.post("/v1/imports/dingtalk", json={"root_unit": "a b"}, headers=auth())
        assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "root_unit"
        # DingTalk refusing us is a 502 with the reason, nothing written.
        fake.token_responses.append(40096)
        fake.revoke_tokens()
        resp = await client.post("/v1/imports/dingtalk", json={"root_unit": "org"}, headers=auth())
        assert resp.status == 502 and "40096" in (await resp.json())["detail"]


async def test_both_imports_show_their_progress_on_stderr_without_pii(
    dt_settings: Settings, settings: Settings, db: asyncpg.Connection, fake: FakeDingTalk
) -> None:
    """Issue 10: "Progress is shown for large imports" -- departments and users fetched, rows
    read and rows applied, as counts; never a name, a mobile number or a user id."""
    err = io.StringIO()
    await import_dingtalk(dt_settings, "org", False, err=err)
    lines = err.getvalue().splitlines()
    assert lines == [
        "departments: 2",
        "departments: 3",
        "departments: 3",
        "users: 250 from 4/4 departments",
        "units applied: 4",
        "members applied: 250",
        "memberships applied: 251",
        "contacts applied: 250",
    ]
    err = io.StringIO()
    await import_csv(settings, CSV, dry_run=True, err=err)
    assert err.getvalue().splitlines() == [
        "rows read: 3 members in 4 units",
        "units applied: 4",
        "members applied: 3",
        "memberships applied: 4",
        "contacts applied: 1",
    ]
    shown = err.getvalue() + "\n".join(lines)
    people = [*(u["name"] for u in fake.org_users.values()), *fake.org_users, "王芳", "wangfang", "m1"]
    leaks = [p for p in people if p in shown] + [m for m in ("138", "139") if m in shown]
    assert not leaks, leaks


async def test_the_import_endpoint_answers_a_summary_within_its_bound(
    dt_settings: Settings, db: asyncpg.Connection, fake: FakeDingTalk
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from notifier.app import create_app
    from tests.conftest import auth

    async with TestClient(TestServer(create_app(dt_settings), host="127.0.0.1")) as client:
        resp = await client.post("/v1/imports/dingtalk", json={"root_unit": "org"}, headers=auth())
        body = await resp.json()
        assert resp.status == 200 and body["fetched"] == {"departments": 3, "users": 250}, body
    # Beyond the bound: a 504 naming the CLI, nothing written (the fetch precedes the transaction).
    await db.execute("TRUNCATE members, units CASCADE")
    bounded = dt_settings.model_copy(update={"import_request_timeout_seconds": 0.001})
    async with TestClient(TestServer(create_app(bounded), host="127.0.0.1")) as client:
        resp = await client.post("/v1/imports/dingtalk", json={"root_unit": "org"}, headers=auth())
        problem = await resp.json()
        assert resp.status == 504 and "notifier import dingtalk" in problem["detail"], problem
    assert await db.fetchval("SELECT count(*) FROM members") == 0
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'import.dingtalk'") == 1
