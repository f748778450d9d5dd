"""The FCM HTTP v1 channel against a fake Google token endpoint and FCM endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from notifier.channels.base import (
    AmbiguousError,
    InvalidTarget,
    NoticeContent,
    Outcome,
    Outgoing,
    PermanentError,
    TransientError,
)
from notifier.channels.fcm import (
    SCOPE,
    FcmChannel,
    build_assertion,
    build_message,
    build_request,
    fcm_error,
    load_service_account,
    token_error,
)
from notifier.channels.http import retry_after as parse_retry_after
from notifier.channels.jwt import b64url_decode, rs256
from notifier.clock import FrozenClock
from notifier.settings import Settings
from tests.conftest import make_settings
from tests.fakes.fcm import FakeFcm, rsa_key

START = 1_800_000_000.0
DING = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "集合", "Report to HQ now")
LESSON = NoticeContent("6f1c1b7e-0000-4000-8000-000000000002", "notice", "Lesson 3", "Read chapter 3")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
async def fake(clock: FrozenClock) -> AsyncIterator[FakeFcm]:
    f = await FakeFcm(clock=clock).start()
    yield f
    await f.stop()


def fcm_settings(fake: FakeFcm, **overrides: Any) -> Settings:
    return make_settings(("", ""), **{**fake.settings_overrides(), **overrides})


@pytest.fixture
async def channel(fake: FakeFcm, clock: FrozenClock) -> AsyncIterator[FcmChannel]:
    ch = FcmChannel(fcm_settings(fake), clock=clock)
    yield ch
    await ch.close()


def items(targets: list[str], notice: NoticeContent = DING) -> list[Outgoing]:
    return [Outgoing(i, f"m{i}", t, notice, 1) for i, t in enumerate(targets, start=1)]


# --- targets and pure building -----------------------------------------------------------


def test_accepts_a_registration_token(fake: FakeFcm, channel: FcmChannel) -> None:
    token = fake.good_target()
    assert channel.validate_target(token) == token
    assert channel.validate_target("x" * 4096) == "x" * 4096


@pytest.mark.parametrize(
    "target", [None, 42, {"token": "abc"}, ["abc"], "", "x" * 4097, "abc def", "abc\n", "\tabc", "ab\x00c"]
)
def test_rejects_malformed_tokens(channel: FcmChannel, target: Any) -> None:
    with pytest.raises(InvalidTarget) as info:
        channel.validate_target(target)
    assert info.value.field == "target"


def test_message_for_a_ding_is_high_priority_with_ttl_and_collapse_key() -> None:
    assert build_message("tok", DING, 600) == {
        "message": {
            "token": "tok",
            "notification": {"title": "集合", "body": "Report to HQ now"},
            "data": {"notice_id": DING.notice_id, "kind": "ding"},
            "android": {
                "priority": "HIGH",
                "ttl": "600s",
                "collapse_key": f"notice-{DING.notice_id}",
                "notification": {"tag": f"notice-{DING.notice_id}"},
            },
        }
    }


def test_message_for_a_notice_is_normal_priority_without_ttl() -> None:
    android = build_message("tok", LESSON, 600)["message"]["android"]
    assert android == {
        "priority": "NORMAL",
        "collapse_key": f"notice-{LESSON.notice_id}",
        "notification": {"tag": f"notice-{LESSON.notice_id}"},
    }


def test_request_url_headers_and_body() -> None:
    message = build_message("tok", DING, 600)
    url, headers, body = build_request("https://fcm.googleapis.com/", "proj-1", "ya29.abc", message)
    assert url == "https://fcm.googleapis.com/v1/projects/proj-1/messages:send"
    assert headers == {"authorization": "Bearer ya29.abc", "content-type": "application/json; charset=UTF-8"}
    assert json.loads(body) == message


def test_assertion_is_an_rs256_jwt_with_googles_claims(fake: FakeFcm) -> None:
    account = load_service_account(json.dumps(fake.service_account()))
    assertion = build_assertion(account, "https://oauth2.googleapis.com/token", 1_700_000_000)
    header_b64, claims_b64, signature_b64 = assertion.split(".")
    assert json.loads(b64url_decode(header_b64)) == {"typ": "JWT", "alg": "RS256", "kid": fake.private_key_id}
    assert json.loads(b64url_decode(claims_b64)) == {
        "iss": fake.client_email,
        "scope": SCOPE,
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }
    fake.key.public_key().verify(  # raises if the signature is wrong
        b64url_decode(signature_b64),
        f"{header_b64}.{claims_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_service_account_from_a_file(fake: FakeFcm, tmp_path: Path) -> None:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(fake.service_account()))
    account = load_service_account(str(path))
    assert (account.project_id, account.client_email) == (fake.project_id, fake.client_email)


def test_capabilities(channel: FcmChannel) -> None:
    caps = channel.capabilities
    assert (caps.max_batch, caps.needs_contact, caps.resend_when_ambiguous, caps.circuit_breaker) == (
        500,
        True,
        True,
        True,
    )
    assert caps.max_attempts == Settings().push_max_attempts
    assert not caps.supports_delivery_reports and not caps.supports_read_confirmation


def test_channel_needs_a_service_account() -> None:
    with pytest.raises(ValueError, match="service_account_json"):
        FcmChannel(Settings())
    with pytest.raises(ValueError, match="lacks private_key"):
        load_service_account('{"project_id": "p", "client_email": "e"}')


# --- sending, auth and the token cache ---------------------------------------------------


async def test_sends_one_message_per_item(fake: FakeFcm, channel: FcmChannel) -> None:
    targets = [fake.good_target() for _ in range(5)]
    results = await channel.send(items(targets))
    assert sorted(r.delivery_id for r in results) == [1, 2, 3, 4, 5]
    assert all(r.outcome is Outcome.SENT for r in results), results
    assert {r.provider_ref for r in results} == {m.name for m in fake.messages}
    assert all(
        r.provider_ref and r.provider_ref.startswith("projects/notifier-test/messages/") for r in results
    )
    assert fake.per_token() == {t: 1 for t in targets}
    assert fake.messages[0].message == build_message(fake.messages[0].token, DING, 600)["message"]
    assert fake.rejected == 0


async def test_access_token_is_cached_then_refreshed_after_expiry(
    fake: FakeFcm, channel: FcmChannel, clock: FrozenClock
) -> None:
    for _ in range(3):
        await channel.send(items([fake.good_target()]))
    await channel.send(items([fake.good_target() for _ in range(10)]))
    assert fake.token_requests == 1 and len(fake.messages) == 13

    clock.advance(fake.expires_in - 400)  # still comfortably valid
    await channel.send(items([fake.good_target()]))
    assert fake.token_requests == 1

    clock.advance(200)  # inside the refresh margin: renewed before FCM would refuse it
    [result] = await channel.send(items([fake.good_target()]))
    assert result.outcome is Outcome.SENT and fake.token_requests == 2

    clock.advance(2 * 3600)  # long expired
    [result] = await channel.send(items([fake.good_target()]))
    assert result.outcome is Outcome.SENT and fake.token_requests == 3
    assert fake.rejected == 0


async def test_concurrent_sends_share_one_token_request(fake: FakeFcm, channel: FcmChannel) -> None:
    batches = [items([fake.good_target() for _ in range(5)]) for _ in range(4)]
    results = await asyncio.gather(*(channel.send(b) for b in batches))
    assert all(r.outcome is Outcome.SENT for rs in results for r in rs)
    assert fake.token_requests == 1 and len(fake.messages) == 20


async def test_a_401_refreshes_the_token_exactly_once(fake: FakeFcm, channel: FcmChannel) -> None:
    await channel.send(items([fake.good_target()]))
    fake.revoke_tokens()  # the cached token is now refused with 401
    results = await channel.send(items([fake.good_target() for _ in range(5)]))
    assert all(r.outcome is Outcome.SENT for r in results), results
    assert fake.token_requests == 2  # one refresh, shared by the five concurrent 401s
    assert fake.rejected == 5 and len(fake.messages) == 6


async def test_a_401_with_a_fresh_token_fails_without_looping(fake: FakeFcm, channel: FcmChannel) -> None:
    fake.accept_tokens = False
    [result] = await channel.send(items([fake.good_target()]))
    assert result.outcome is Outcome.FAILED and not result.disable_contact
    assert "401 UNAUTHENTICATED" in (result.error or "")
    assert fake.token_requests == 2 and fake.rejected == 2 and fake.messages == []


async def test_a_forged_service_account_key_is_rejected(fake: FakeFcm, clock: FrozenClock) -> None:
    forged = FcmChannel(make_settings(("", ""), **fake.settings_overrides(key=rsa_key(1))), clock=clock)
    try:
        results = await forged.send(items([fake.good_target() for _ in range(3)]))
    finally:
        await forged.close()
    assert all(r.outcome is Outcome.FAILED and not r.disable_contact for r in results), results
    assert "invalid_grant (Invalid JWT Signature.)" in (results[0].error or "")
    assert fake.token_requests == 1 and fake.rejected == 1  # the failed refresh is shared, not repeated
    assert fake.messages == []


async def _post_assertion(fake: FakeFcm, assertion: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    async with aiohttp.ClientSession() as session, session.post(fake.token_url, data=form) as resp:
        return resp.status, await resp.json()


def _claims(fake: FakeFcm, **changes: Any) -> dict[str, Any]:
    now = int(START)
    return {
        "iss": fake.client_email,
        "scope": SCOPE,
        "aud": fake.token_url,
        "iat": now,
        "exp": now + 3600,
    } | changes


@pytest.mark.parametrize(
    ("change", "description"),
    [
        ({"key": 1}, "Invalid JWT Signature."),
        ({"iss": "someone@evil.iam.gserviceaccount.com"}, "Invalid issuer"),
        ({"aud": "https://oauth2.googleapis.com/token"}, "Failed audience check"),
        ({"scope": "https://www.googleapis.com/auth/cloud-platform"}, "Invalid OAuth scope"),
        ({"iat": int(START) - 7200, "exp": int(START) - 3600}, "short-lived token"),  # expired
        ({"exp": int(START) + 7200}, "short-lived token"),  # more than an hour
    ],
)
async def test_fake_token_endpoint_checks_what_google_checks(
    fake: FakeFcm, change: dict[str, Any], description: str
) -> None:
    key = rsa_key(change.pop("key", 0))
    status, body = await _post_assertion(fake, rs256(key, _claims(fake, **change)))
    assert status == 400 and body["error"] == "invalid_grant" and description in body["error_description"]
    status, body = await _post_assertion(fake, rs256(rsa_key(), _claims(fake)))
    assert (
        status == 200 and body["expires_in"] == fake.expires_in and body["access_token"].startswith("ya29.")
    )
    assert fake.rejected == 1 and fake.token_requests == 2


# --- error mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "retry_after", "outcome", "disable", "wait"),
    [
        ("UNREGISTERED", None, Outcome.FAILED, True, None),
        ("INVALID_ARGUMENT", None, Outcome.FAILED, True, None),
        ("SENDER_ID_MISMATCH", None, Outcome.FAILED, True, None),
        ("QUOTA_EXCEEDED", "120", Outcome.RETRY, False, 120.0),
        ("QUOTA_EXCEEDED", "5", Outcome.RETRY, False, 60.0),  # FCM: back off at least a minute
        ("QUOTA_EXCEEDED", None, Outcome.RETRY, False, 60.0),
        ("UNAVAILABLE", "30", Outcome.RETRY, False, 30.0),
        ("INTERNAL", None, Outcome.RETRY, False, None),
        ("THIRD_PARTY_AUTH_ERROR", None, Outcome.FAILED, False, None),
        ("drop", None, Outcome.UNKNOWN, False, None),
    ],
)
async def test_error_mapping(
    fake: FakeFcm,
    channel: FcmChannel,
    script: str,
    retry_after: str | None,
    outcome: Outcome,
    disable: bool,
    wait: float | None,
) -> None:
    bad, good = fake.good_target(), fake.good_target()
    fake.responses[bad] = [script]
    if retry_after is not None:
        fake.retry_after[script] = retry_after
    results = {r.delivery_id: r for r in await channel.send(items([bad, good]))}
    assert (results[1].outcome, results[1].disable_contact, results[1].retry_after) == (
        outcome,
        disable,
        wait,
    )
    assert results[2].outcome is Outcome.SENT  # one item's failure does not touch the others
    assert fake.token_requests == 1  # only a plain 401 earns a token refresh
    # Only the dropped connection may have delivered: the fake recorded it, we could not know.
    assert fake.per_token() == ({bad: 1, good: 1} if script == "drop" else {good: 1})


async def test_retried_ding_after_an_outage_is_delivered_once(fake: FakeFcm, channel: FcmChannel) -> None:
    token = fake.good_target()
    fake.responses[token] = ["UNAVAILABLE", "INTERNAL"]
    outcomes = [(await channel.send(items([token])))[0].outcome for _ in range(3)]
    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.SENT]
    assert fake.per_token() == {token: 1}


async def test_a_malformed_stored_target_fails_alone(fake: FakeFcm, channel: FcmChannel) -> None:
    results = {r.delivery_id: r for r in await channel.send(items(["has space", fake.good_target()]))}
    assert results[1].outcome is Outcome.FAILED and results[1].disable_contact
    assert results[2].outcome is Outcome.SENT and len(fake.messages) == 1


async def test_unreachable_token_endpoint_is_transient(fake: FakeFcm, clock: FrozenClock) -> None:
    overrides = fake.settings_overrides()
    overrides["fcm"] = overrides["fcm"].model_copy(update={"token_url": "http://127.0.0.1:9/token"})
    ch = FcmChannel(make_settings(("", ""), **overrides), clock=clock)
    try:
        results = await ch.send(items([fake.good_target(), fake.good_target()]))
    finally:
        await ch.close()
    assert all(r.outcome is Outcome.RETRY for r in results), results
    assert fake.messages == []


async def test_sends_are_bounded_by_delivery_concurrency(fake: FakeFcm, clock: FrozenClock) -> None:
    fake.delay = 0.02
    ch = FcmChannel(fcm_settings(fake, delivery_concurrency=3), clock=clock)
    try:
        results = await ch.send(items([fake.good_target() for _ in range(12)]))
    finally:
        await ch.close()
    assert all(r.outcome is Outcome.SENT for r in results)
    assert fake.max_in_flight == 3


def test_fcm_error_trusts_only_fcms_own_error_bodies() -> None:
    # A 404 page from a misconfigured proxy must not disable every contact.
    assert type(fcm_error(404, None, None)) is PermanentError
    # A 400 about something other than the token is our bug, not the member's contact.
    other = {
        "error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid value at 'message.data'"}
    }
    assert type(fcm_error(400, other, None)) is PermanentError
    assert isinstance(fcm_error(404, {"error": {"status": "NOT_FOUND"}}, None), InvalidTarget)
    assert isinstance(fcm_error(502, None, 3.0), TransientError)
    assert not isinstance(fcm_error(502, None, 3.0), AmbiguousError)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("17", START) == 17.0
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:30 GMT", 1_800_000_000.0) == 30.0
    assert parse_retry_after("soon", START) is None and parse_retry_after(None, START) is None


def test_token_endpoint_errors() -> None:
    rejected = token_error(
        400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, None
    )
    assert type(rejected) is PermanentError and "invalid_grant (Invalid JWT Signature.)" in str(rejected)
    busy = token_error(503, None, 12.0)
    assert isinstance(busy, TransientError) and busy.retry_after == 12.0
