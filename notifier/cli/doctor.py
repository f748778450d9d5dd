"""``notifier doctor``: is this deployment's configuration sound, and can it reach what it needs?

Prints one line per check -- ``PASS``, ``WARN`` (works, but an operator should look) or ``FAIL``
(``serve``/``worker`` would refuse, or would run broken) -- and exits 1 when anything failed.
Nothing secret is printed: a check names the setting, never its value.

Checks: the secrets (set, not the public development values, strong enough, webhook secret in
Standard Webhooks form), the public URL, CORS origins, the metrics token, every configured
channel's credentials (keys parse, ids have their shape), PostgreSQL (reachable, migrations
current, its clock against ours, the engine clock not shifted) and Redis (reachable, no eviction).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import asyncpg
from cryptography.exceptions import UnsupportedAlgorithm
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from notifier.db import doctor as db
from notifier.db.migrations import migration_files
from notifier.settings import DEV_LINK_SECRET, DEV_WEBHOOK_SECRET, Settings

Status = Literal["PASS", "WARN", "FAIL"]
TIMEOUT_SECONDS = 5.0
MIN_SECRET_BYTES = 24  # webhook signing secret, decoded (Standard Webhooks: 24..64)
MIN_LINK_SECRET = 32  # characters; the link secret signs every read link
MIN_ADMIN_TOKEN = 24
SKEW_WARN_SECONDS = 1.0  # our clock against PostgreSQL's: escalation steps and leases use the latter
SKEW_FAIL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    name: str
    detail: str


def _ok(name: str, detail: str = "ok") -> Check:
    return Check("PASS", name, detail)


def _warn(name: str, detail: str) -> Check:
    return Check("WARN", name, detail)


def _fail(name: str, detail: str) -> Check:
    return Check("FAIL", name, detail)


def check_secrets(s: Settings) -> list[Check]:
    out = []
    hook = s.webhook_secret.get_secret_value()
    name = "NOTIFIER_WEBHOOK_SECRET"
    if hook == DEV_WEBHOOK_SECRET:
        out.append(_fail(name, "is the public development value"))
    else:
        try:
            raw = base64.b64decode(hook.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            out.append(_fail(name, "must be 'whsec_' + base64 (Standard Webhooks)"))
        else:
            short = len(raw) < MIN_SECRET_BYTES
            out.append(
                _fail(name, f"decodes to {len(raw)} bytes; use >= {MIN_SECRET_BYTES}") if short else _ok(name)
            )
    link = s.link_secret.get_secret_value()
    name = "NOTIFIER_LINK_SECRET"
    if link == DEV_LINK_SECRET:
        out.append(_fail(name, "is the public development value"))
    elif len(link) < 16:
        out.append(_fail(name, f"{len(link)} characters; use >= {MIN_LINK_SECRET} random ones"))
    elif len(link) < MIN_LINK_SECRET or len(set(link)) < 10:
        out.append(_warn(name, f"weak: use >= {MIN_LINK_SECRET} random characters"))
    else:
        out.append(_ok(name))
    name = "NOTIFIER_ADMIN_TOKEN"
    if s.admin_token is None:
        out.append(_warn(name, "not set: issue API keys with another admin key, or set it for bootstrap"))
    elif len(s.admin_token.get_secret_value()) < MIN_ADMIN_TOKEN:
        out.append(_fail(name, f"shorter than {MIN_ADMIN_TOKEN} characters"))
    else:
        out.append(_ok(name))
    name = "NOTIFIER_METRICS_TOKEN"
    if s.metrics_token is None:
        out.append(_warn(name, "not set: scraping /metrics needs the admin token"))
    elif len(s.metrics_token.get_secret_value()) < 16:
        out.append(_fail(name, "shorter than 16 characters"))
    else:
        out.append(_ok(name))
    return out


def check_urls(s: Settings) -> list[Check]:
    out = []
    name = "NOTIFIER_PUBLIC_URL"
    url = urlsplit(s.public_url)
    if not s.public_url:
        out.append(_fail(name, "not set (read links and provider callbacks need it)"))
    elif url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        out.append(_fail(name, "must be an absolute http(s) URL without query or fragment"))
    elif url.scheme != "https":
        out.append(_warn(name, "is not https: read links and callbacks travel in clear"))
    elif url.hostname in ("localhost", "127.0.0.1", "::1"):
        out.append(_warn(name, "points at this machine: phones and providers cannot reach it"))
    else:
        out.append(_ok(name))
    bad = [o for o in s.cors_origins if not _is_origin(o)]
    name = "NOTIFIER_CORS_ORIGINS"
    if bad:
        out.append(_fail(name, f"{len(bad)} entries are not exact origins (scheme://host[:port], no '*')"))
    else:
        out.append(_ok(name, f"{len(s.cors_origins)} origins allowed" if s.cors_origins else "closed"))
    return out


def _is_origin(value: str) -> bool:
    u = urlsplit(value)
    return u.scheme in ("http", "https") and bool(u.hostname) and u.path == "" and "*" not in value


def _loader(check: Callable[[], object]) -> str | None:
    """None when ``check`` runs; else why not (the exception's message, which names no secret)."""
    try:
        check()
    except (ValueError, TypeError, OSError, UnsupportedAlgorithm) as exc:
        return str(exc) or type(exc).__name__
    return None


def check_channels(s: Settings) -> list[Check]:
    from notifier.channels import apns, dingtalk, fcm, webpush

    out = []
    if s.webpush.vapid_private_key is not None:
        pem = s.webpush.vapid_private_key.get_secret_value()
        error = _loader(lambda: webpush._load_vapid_key(pem))
        out.append(_fail("webpush", f"VAPID key: {error}") if error else _ok("webpush", "VAPID key is P-256"))
        if not s.webpush.vapid_subject.startswith(("mailto:", "https://")):
            out.append(_fail("webpush", "vapid_subject must be mailto: or https:"))
    if s.fcm.service_account_json is not None:
        value = s.fcm.service_account_json.get_secret_value()
        error = _loader(lambda: fcm.load_service_account(value))
        out.append(
            _fail("fcm", f"service account: {error}") if error else _ok("fcm", "service account parses")
        )
    if s.apns.key_p8 is not None or s.apns.key_id or s.apns.team_id:
        if not apns.configured(s):
            out.append(_fail("apns", "needs key_p8, key_id, team_id and topic"))
        else:
            key = s.apns.key_p8.get_secret_value() if s.apns.key_p8 else ""
            error = _loader(lambda: apns.load_signing_key(key))
            ids = len(s.apns.key_id) == 10 and len(s.apns.team_id) == 10
            if error:
                out.append(_fail("apns", f"auth key: {error}"))
            elif not ids:
                out.append(_fail("apns", "key_id and team_id are 10 characters each"))
            else:
                out.append(_ok("apns", "auth key is P-256"))
    if s.jpush.app_key or s.jpush.master_secret is not None:
        ok = bool(s.jpush.app_key) and s.jpush.master_secret is not None
        out.append(_ok("jpush") if ok else _fail("jpush", "needs app_key and master_secret"))
    if s.dingtalk.app_key or s.dingtalk.app_secret is not None:
        ok = dingtalk.configured(s)
        out.append(_ok("dingtalk") if ok else _fail("dingtalk", "needs app_key, app_secret and agent_id"))
    for kind, provider in (("sms", s.sms_provider), ("voice", s.voice_provider)):
        if provider:
            out.append(_provider(s, kind, provider))
    if not out:
        out.append(_warn("channels", "only inapp and webhook: no phone channel is configured"))
    return out


def _provider(s: Settings, kind: str, provider: str) -> Check:
    if provider == "twilio":
        t = s.twilio
        sender = t.sms_from if kind == "sms" else t.voice_from
        if not (t.account_sid.startswith("AC") and len(t.account_sid) == 34):
            return _fail(kind, "twilio.account_sid must be 'AC' + 32 hex characters")
        if t.auth_token is None or len(t.auth_token.get_secret_value()) < 32:
            return _fail(kind, "twilio.auth_token is missing or too short")
        if not sender:
            return _fail(kind, f"twilio.{kind}_from is not set")
        return _ok(kind, "twilio")
    if provider == "aliyun":
        a = s.aliyun
        needed = (
            [a.sms_sign_name, a.sms_template_code]
            if kind == "sms"
            else [a.voice_show_number, a.voice_tts_code]
        )
        if not a.access_key_id or a.access_key_secret is None or not all(needed):
            return _fail(
                kind, f"aliyun needs access_key_id, access_key_secret and the {kind} sender settings"
            )
        return _ok(kind, "aliyun")
    return _fail(kind, f"NOTIFIER_{kind.upper()}_PROVIDER must be 'aliyun' or 'twilio'")


async def check_postgres(s: Settings) -> list[Check]:
    if not s.database_url:
        return [_fail("postgres", "NOTIFIER_DATABASE_URL is not set")]
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            conn = await asyncpg.connect(s.database_url)
            try:
                sent = time.time()
                clocks = await db.clocks(conn)
                received = time.time()
                applied = await db.applied_migrations(conn)
            finally:
                await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return [_fail("postgres", f"unreachable ({type(exc).__name__})")]
    out = [_ok("postgres", f"reachable (server {clocks['version']})")]
    expected = [p.stem for p in migration_files()]
    pending = expected if applied is None else [v for v in expected if v not in applied]
    unknown = sorted(applied - set(expected)) if applied else []
    if pending:
        out.append(_fail("migrations", f"{len(pending)} pending from {pending[0]}: run 'notifier migrate'"))
    elif unknown:
        out.append(
            _warn("migrations", f"database has {len(unknown)} newer than this release ({unknown[-1]})")
        )
    else:
        out.append(_ok("migrations", f"current ({expected[-1]})"))
    skew = float(clocks["server_epoch"]) - (sent + received) / 2
    detail = f"{skew:+.2f}s against PostgreSQL"
    if abs(skew) >= SKEW_FAIL_SECONDS:
        out.append(_fail("clock", detail))
    elif abs(skew) >= SKEW_WARN_SECONDS:
        out.append(_warn("clock", detail + ": sync both with NTP"))
    else:
        out.append(_ok("clock", detail))
    offset = float(clocks["engine_offset"])
    if abs(offset) > 0.5:
        out.append(_fail("engine clock", f"shifted by {offset:+.0f}s (a test's engine_clock row): delete it"))
    return out


async def check_redis(s: Settings) -> list[Check]:
    if not s.redis_url:
        return [_fail("redis", "NOTIFIER_REDIS_URL is not set")]
    redis = Redis.from_url(
        s.redis_url, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
    )
    try:
        await redis.ping()
        info = await redis.info("server")
        try:
            policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy", "noeviction")
        except ResponseError:  # managed Redis often refuses CONFIG
            policy = "unknown (CONFIG refused)"
    except Exception as exc:  # redis-py raises its own tree and OSError; none of it is fatal here
        return [_fail("redis", f"unreachable ({type(exc).__name__})")]
    finally:
        await redis.aclose()
    out = [_ok("redis", f"reachable (server {info.get('redis_version', '?')})")]
    if policy != "noeviction":
        out.append(_warn("redis", f"maxmemory-policy is {policy}: evicted jobs wait for the reconciler"))
    return out


async def run_checks(settings: Settings) -> list[Check]:
    checks = check_secrets(settings) + check_urls(settings) + check_channels(settings)
    checks += await check_postgres(settings)
    checks += await check_redis(settings)
    return checks


def main(settings: Settings) -> int:
    """Print every check; 0 when none failed."""
    checks = asyncio.run(run_checks(settings))
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status}  {c.name.ljust(width)}  {c.detail}")
    failed = sum(c.status == "FAIL" for c in checks)
    warned = sum(c.status == "WARN" for c in checks)
    print(f"\n{failed} failed, {warned} warnings, {len(checks) - failed - warned} passed")
    return 1 if failed else 0
