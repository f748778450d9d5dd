"""``notifier doctor`` against the real PostgreSQL and Redis of the test session."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE, STDOUT
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from notifier.channels.webpush import generate_vapid_keys
from notifier.cli.doctor import Check, run_checks
from notifier.settings import DEV_LINK_SECRET, DEV_WEBHOOK_SECRET, Settings
from tests.conftest import advance_clock, make_settings

STRONG: dict[str, Any] = {
    "webhook_secret": SecretStr("whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci1kb2N0b3ItMDEy"),
    "link_secret": SecretStr("Zq8v1Lk3Xw9pTnR4yBm6Hc2Jd7Fs0GaE"),
    "admin_token": SecretStr("admin-token-long-enough-0123456789"),
    "metrics_token": SecretStr("metrics-token-0123456789"),
    "public_url": "https://notifier.example.org",
}


def by_name(checks: list[Check]) -> dict[str, list[Check]]:
    out: dict[str, list[Check]] = {}
    for c in checks:
        out.setdefault(c.name, []).append(c)
    return out


def statuses(checks: list[Check], name: str) -> set[str]:
    return {c.status for c in by_name(checks).get(name, [])}


def good(urls: tuple[str, str], **overrides: Any) -> Settings:
    return make_settings(urls, **{**STRONG, **overrides})


async def test_a_sound_deployment_passes(server_urls: tuple[str, str], db: asyncpg.Connection) -> None:
    private_pem, _ = generate_vapid_keys()
    checks = await run_checks(good(server_urls, webpush={"vapid_private_key": private_pem}))
    failed = [c for c in checks if c.status == "FAIL"]
    assert failed == []
    for name in ("NOTIFIER_WEBHOOK_SECRET", "NOTIFIER_LINK_SECRET", "NOTIFIER_PUBLIC_URL", "webpush"):
        assert statuses(checks, name) == {"PASS"}, by_name(checks)[name]
    assert statuses(checks, "postgres") == {"PASS"}
    assert statuses(checks, "redis") <= {"PASS", "WARN"}
    assert statuses(checks, "migrations") == {"PASS"}
    assert statuses(checks, "clock") == {"PASS"}


async def test_development_defaults_and_bad_credentials_fail_without_printing_them(
    server_urls: tuple[str, str], db: asyncpg.Connection
) -> None:
    settings = make_settings(
        server_urls,
        webhook_secret=SecretStr(DEV_WEBHOOK_SECRET),
        link_secret=SecretStr(DEV_LINK_SECRET),
        admin_token=SecretStr("tiny-tok3n"),
        public_url="ftp://x",
        cors_origins=["*", "https://ok.example.org"],
        webpush={"vapid_private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----"},
        sms_provider="twilio",
        twilio={"account_sid": "XX123", "auth_token": "tw-auth-t0ken", "sms_from": "+15550100"},
    )
    checks = await run_checks(settings)
    for name in (
        "NOTIFIER_WEBHOOK_SECRET",
        "NOTIFIER_LINK_SECRET",
        "NOTIFIER_ADMIN_TOKEN",
        "NOTIFIER_PUBLIC_URL",
        "NOTIFIER_CORS_ORIGINS",
        "webpush",
        "sms",
    ):
        assert statuses(checks, name) == {"FAIL"}, (name, by_name(checks).get(name))
    text = "\n".join(c.detail for c in checks)
    for secret in (DEV_WEBHOOK_SECRET, DEV_LINK_SECRET, "tiny-tok3n", "tw-auth-t0ken", "+15550100"):
        assert secret not in text
    short_hook = await run_checks(good(server_urls, webhook_secret=SecretStr("whsec_c2hvcnQ=")))
    assert statuses(short_hook, "NOTIFIER_WEBHOOK_SECRET") == {"FAIL"}


async def test_unreachable_servers_fail(server_urls: tuple[str, str]) -> None:
    settings = good(
        server_urls, database_url="postgresql://u:p@127.0.0.1:9/x", redis_url="redis://127.0.0.1:9/0"
    )
    checks = await run_checks(settings)
    assert statuses(checks, "postgres") == {"FAIL"}
    assert statuses(checks, "redis") == {"FAIL"}
    assert "p@" not in "\n".join(c.detail for c in checks)


async def test_pending_migrations_and_a_shifted_engine_clock_fail(
    server_urls: tuple[str, str], db: asyncpg.Connection
) -> None:
    await db.execute("DROP DATABASE IF EXISTS doctor_fresh")
    await db.execute("CREATE DATABASE doctor_fresh")
    try:
        fresh = server_urls[0].rsplit("/", 1)[0] + "/doctor_fresh"
        checks = await run_checks(good(server_urls, database_url=fresh))
        [migrations] = by_name(checks)["migrations"]
        assert migrations.status == "FAIL" and "0001_init" in migrations.detail
    finally:
        await db.execute("DROP DATABASE doctor_fresh")
    await advance_clock(db, 3600)
    checks = await run_checks(good(server_urls))
    assert statuses(checks, "engine clock") == {"FAIL"}


@pytest.mark.parametrize("sound", [True, False])
async def test_the_command_exits_by_the_result(
    server_urls: tuple[str, str], db: asyncpg.Connection, sound: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env |= {"NOTIFIER_DATABASE_URL": server_urls[0], "NOTIFIER_REDIS_URL": server_urls[1]}
    if sound:
        env |= {
            f"NOTIFIER_{k.upper()}": v.get_secret_value() if isinstance(v, SecretStr) else v
            for k, v in STRONG.items()
        }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier", "doctor", env=env, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    stdout = out.decode()
    assert proc.returncode == (0 if sound else 1), stdout
    assert ("FAIL  NOTIFIER_WEBHOOK_SECRET" in stdout) is not sound
    assert " failed, " in stdout
