"""The webpush channel: RFC 8291 encryption, RFC 8292 VAPID, RFC 8030 headers and error mapping,
end to end through a fake push service that verifies VAPID and decrypts like a browser."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import http_ece
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from notifier.api.keys import PRINCIPAL, SETTINGS
from notifier.api.principal import Principal
from notifier.api.problems import problem_middleware
from notifier.api.webpush import routes
from notifier.channels.base import MAX_RETRY_AFTER_SECONDS, InvalidTarget, NoticeContent, Outcome, Outgoing
from notifier.channels.jwt import b64url, b64url_decode, es256
from notifier.channels.webpush import (
    MAX_PLAINTEXT,
    VAPID_LIFETIME_SECONDS,
    VapidSigner,
    WebPushChannel,
    build_payload,
    build_request,
    encrypt,
    generate_vapid_keys,
    origin,
    parse_subscription,
    topic_for,
    vapid_public_key,
)
from notifier.clock import FrozenClock
from notifier.settings import Settings, WebPushSettings
from tests.conftest import make_settings
from tests.fakes.webpush import SUBJECT, FakePushService, pem, point

DING = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "集合", "全体 08:00 到岗")
LESSON = NoticeContent("6f1c1b7e-0000-4000-8000-000000000002", "notice", "Lesson 3", "Read chapter 3")


def settings_for(push: FakePushService, **extra: Any) -> Settings:
    return make_settings(("", ""), **{**push.settings_overrides(), **extra})


@pytest.fixture
async def push() -> AsyncIterator[FakePushService]:
    fake = await FakePushService().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def channel(push: FakePushService) -> AsyncIterator[WebPushChannel]:
    ch = WebPushChannel(settings_for(push))
    yield ch
    await ch.close()


# --- pure parts -------------------------------------------------------------------------------


def test_encryption_reproduces_rfc8291_appendix_a() -> None:
    sender = ec.derive_private_key(
        int.from_bytes(b64url_decode("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"), ec.SECP256R1()
    )
    body = encrypt(
        b"When I grow up, I want to be a watermelon",
        b64url_decode(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
        ),
        b64url_decode("BTBZMqHH6r4Tts7J_aSIgg"),
        salt=b64url_decode("DGv6ra1nlYgDCS1FRnbzlw"),
        sender_key=sender,
    )
    assert b64url(body) == (
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml"
        "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT"
        "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
    )


def test_encryption_round_trips_through_http_ece_with_fresh_salt_and_key() -> None:
    browser = ec.generate_private_key(ec.SECP256R1())
    auth = b"0123456789abcdef"
    first = encrypt(b"hello", point(browser.public_key()), auth)
    second = encrypt(b"hello", point(browser.public_key()), auth)
    assert first[:16] != second[:16] and first[21:86] != second[21:86]  # new salt, new sender key
    assert int.from_bytes(first[16:20], "big") == 4096 and first[20] == 65
    plain = http_ece.decrypt(first, private_key=browser, dh=None, auth_secret=auth, version="aes128gcm")
    assert plain == b"hello"


def test_topic_is_a_stable_short_base64url_key_per_notice() -> None:
    topic = topic_for(DING.notice_id)
    assert topic == topic_for(DING.notice_id) != topic_for(LESSON.notice_id)
    assert len(topic) <= 32 and set(topic) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://fcm.googleapis.com/fcm/send/abc", "https://fcm.googleapis.com"),
        (
            "https://Updates.Push.Services.Mozilla.com:443/wpush/v2/x",
            "https://updates.push.services.mozilla.com",
        ),
        ("https://web.push.apple.com:8443/Q", "https://web.push.apple.com:8443"),
        ("http://127.0.0.1:8080/p?x=1", "http://127.0.0.1:8080"),
        ("http://[::1]:9000/p", "http://[::1]:9000"),
    ],
)
def test_vapid_audience_is_the_endpoint_origin(endpoint: str, expected: str) -> None:
    assert origin(endpoint) == expected


def test_build_request_headers_and_encrypted_payload() -> None:
    browser = ec.generate_private_key(ec.SECP256R1())
    auth = b"A" * 16
    sub = parse_subscription(
        {
            "endpoint": "https://push.example.org/s/1",
            "keys": {"p256dh": b64url(point(browser.public_key())), "auth": b64url(auth)},
        },
        allow_private=False,
    )
    config = WebPushSettings(vapid_private_key=SecretStr("unused"), ttl_seconds=86400, ding_ttl_seconds=600)
    for notice, ttl, urgency in ((DING, "600", "high"), (LESSON, "86400", "normal")):
        item = Outgoing(7, "m1", sub.as_target(), notice, 1, read_link="https://n.example.org/r/tok")
        url, headers, body = build_request(item, sub, config, "vapid t=x.y.z, k=K")
        assert url == "https://push.example.org/s/1"
        assert headers == {
            "TTL": ttl,
            "Urgency": urgency,
            "Topic": topic_for(notice.notice_id),
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "aes128gcm",
            "Authorization": "vapid t=x.y.z, k=K",
        }
        plain = http_ece.decrypt(body, private_key=browser, dh=None, auth_secret=auth, version="aes128gcm")
        assert json.loads(plain) == {
            "notice_id": notice.notice_id,
            "kind": notice.kind,
            "title": notice.title,
            "body": notice.body,
            "url": "https://n.example.org/r/tok",
        }
    assert "url" not in json.loads(build_payload(LESSON))


def test_long_bodies_are_shortened_to_fit_one_record() -> None:
    long = NoticeContent(DING.notice_id, "notice", "T" * 50, "长" * 5000)
    payload = build_payload(long, "https://n.example.org/r/tok")
    assert MAX_PLAINTEXT - 3 <= len(payload) <= MAX_PLAINTEXT
    data = json.loads(payload)
    assert data["title"] == "T" * 50 and data["body"].endswith("…") and data["url"]
    huge_title = build_payload(NoticeContent(DING.notice_id, "notice", "T" * 9000, "b"))
    assert len(huge_title) <= MAX_PLAINTEXT and json.loads(huge_title)["body"] == ""
    browser = ec.generate_private_key(ec.SECP256R1())
    assert len(encrypt(payload, point(browser.public_key()), b"a" * 16)) <= 4096


def _claims(header: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    assert header.startswith("vapid t=")
    token, k = header.removeprefix("vapid t=").split(", k=")
    head, claims, _ = token.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(claims)), k


def test_vapid_token_claims_and_per_audience_cache() -> None:
    private_pem, public = generate_vapid_keys()
    clock = FrozenClock(1_800_000_000)
    signer = VapidSigner(private_pem, "mailto:ops@example.org", clock)
    first = signer.authorization("https://fcm.googleapis.com")
    head, claims, k = _claims(first)
    assert head == {"typ": "JWT", "alg": "ES256"} and k == public
    assert claims == {
        "aud": "https://fcm.googleapis.com",
        "exp": 1_800_000_000 + VAPID_LIFETIME_SECONDS,
        "sub": "mailto:ops@example.org",
    }
    assert VAPID_LIFETIME_SECONDS <= 24 * 3600
    clock.advance(3600)
    assert signer.authorization("https://fcm.googleapis.com") == first  # cached
    other = signer.authorization("https://web.push.apple.com")
    assert _claims(other)[1]["aud"] == "https://web.push.apple.com"
    clock.advance(6 * 3600)
    renewed = signer.authorization("https://fcm.googleapis.com")
    assert (
        renewed != first and _claims(renewed)[1]["exp"] == 1_800_000_000 + 7 * 3600 + VAPID_LIFETIME_SECONDS
    )


def test_generate_vapid_keys_round_trip() -> None:
    private_pem, public = generate_vapid_keys()
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert b64url_decode(public) == point(key.public_key()) and len(b64url_decode(public)) == 65
    settings = Settings(webpush=WebPushSettings(vapid_private_key=SecretStr(private_pem)))
    assert vapid_public_key(settings) == public
    assert generate_vapid_keys()[1] != public


def test_channel_needs_a_vapid_key() -> None:
    with pytest.raises(ValueError, match="vapid_private_key"):
        WebPushChannel(Settings())
    with pytest.raises(ValueError, match="not configured"):
        vapid_public_key(Settings())
    rsa_or_junk = WebPushSettings(vapid_private_key=SecretStr("not a pem"))
    with pytest.raises(ValueError):
        WebPushChannel(Settings(webpush=rsa_or_junk))
    bad_subject = WebPushSettings(vapid_private_key=SecretStr(generate_vapid_keys()[0]), vapid_subject="ops")
    with pytest.raises(ValueError, match="vapid_subject"):
        WebPushChannel(Settings(webpush=bad_subject))


# --- target validation ------------------------------------------------------------------------

_KEY = b64url(point(ec.generate_private_key(ec.SECP256R1()).public_key()))
_AUTH = b64url(b"0123456789abcdef")


def _sub(endpoint: str = "https://push.example.org/s/1", **keys: Any) -> dict[str, Any]:
    return {"endpoint": endpoint, "keys": {"p256dh": _KEY, "auth": _AUTH, **keys}}


def test_a_browser_subscription_is_accepted_and_normalised() -> None:
    channel = WebPushChannel(
        Settings(webpush=WebPushSettings(vapid_private_key=SecretStr(generate_vapid_keys()[0])))
    )
    target = {**_sub(), "expirationTime": None}
    target["keys"]["auth"] = _AUTH + "=="  # some libraries pad
    assert channel.validate_target(target) == _sub()


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("https://push.example.org/s/1", "target"),
        ({"keys": {"p256dh": _KEY, "auth": _AUTH}}, "target.endpoint"),
        (_sub("ftp://push.example.org/s/1"), "target.endpoint"),
        (_sub("http://push.example.org/s/1"), "target.endpoint"),  # https only
        (_sub("https://user:pw@push.example.org/s/1"), "target.endpoint"),
        (_sub("https://10.0.0.1/s/1"), "target.endpoint"),
        (_sub("https://127.0.0.1/s/1"), "target.endpoint"),
        (_sub("https://[::1]/s/1"), "target.endpoint"),
        (_sub("https://169.254.169.254/latest"), "target.endpoint"),
        (_sub("https://push.example.org:99999/s"), "target.endpoint"),
        (_sub("https://push.example.org/" + "x" * 2048), "target.endpoint"),
        ({**_sub(), "extra": 1}, "target.extra"),
        ({**_sub(), "expirationTime": "soon"}, "target.expirationTime"),
        ({"endpoint": "https://push.example.org/s/1"}, "target.keys"),
        (_sub(extra="x"), "target.keys.extra"),
        (_sub(p256dh=None), "target.keys.p256dh"),
        (_sub(p256dh=_KEY[:-4]), "target.keys.p256dh"),
        (_sub(p256dh=b64url(b"\x04" + b"\x01" * 64)), "target.keys.p256dh"),  # not on the curve
        (_sub(p256dh=_KEY.replace("_", "/").replace("-", "+") + "+/"), "target.keys.p256dh"),
        (_sub(auth=b64url(b"short")), "target.keys.auth"),
        (_sub(auth="!!!!"), "target.keys.auth"),
        (_sub(auth=16), "target.keys.auth"),
    ],
)
def test_bad_targets_are_refused(target: Any, field: str) -> None:
    channel = WebPushChannel(
        Settings(webpush=WebPushSettings(vapid_private_key=SecretStr(generate_vapid_keys()[0])))
    )
    with pytest.raises(InvalidTarget) as info:
        channel.validate_target(target)
    assert info.value.field == field


def test_http_endpoints_only_when_private_targets_are_allowed(push: FakePushService) -> None:
    target = push.good_target()
    assert WebPushChannel(settings_for(push)).validate_target(target)["endpoint"].startswith("http://")
    with pytest.raises(InvalidTarget):
        WebPushChannel(settings_for(push, allow_private_targets=False)).validate_target(target)


# --- end to end through the fake push service -------------------------------------------------


async def test_delivers_encrypted_payloads_with_headers(
    push: FakePushService, channel: WebPushChannel
) -> None:
    ding_target, _, _ = push.subscribe("ding")
    lesson_target, _, _ = push.subscribe("lesson")
    results = await channel.send(
        [
            Outgoing(1, "m1", channel.validate_target(ding_target), DING, 1),
            Outgoing(
                2, "m2", channel.validate_target(lesson_target), LESSON, 1, read_link="https://n.example/r/x"
            ),
        ]
    )
    by_id = {r.delivery_id: r for r in results}
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert len(push.messages) == 2 and push.rejected == 0
    ding, lesson = sorted(push.messages, key=lambda m: m.path)
    assert ding.payload == {
        "notice_id": DING.notice_id,
        "kind": "ding",
        "title": "集合",
        "body": "全体 08:00 到岗",
    }
    assert lesson.payload == {
        "notice_id": LESSON.notice_id,
        "kind": "notice",
        "title": "Lesson 3",
        "body": "Read chapter 3",
        "url": "https://n.example/r/x",
    }
    assert (ding.headers["Urgency"], ding.headers["TTL"]) == ("high", "600")
    assert (lesson.headers["Urgency"], lesson.headers["TTL"]) == ("normal", str(24 * 3600))
    assert ding.topic == topic_for(DING.notice_id) and lesson.topic == topic_for(LESSON.notice_id)
    assert ding.headers["Content-Encoding"] == "aes128gcm"
    assert ding.claims["aud"] == push.origin and ding.claims["sub"] == SUBJECT
    assert by_id[1].provider_ref == f"{push.origin}/m/{ding.message_id}"
    assert ding.headers["Authorization"] == lesson.headers["Authorization"]  # one token per audience


async def test_the_fake_decrypts_with_the_browser_keys(
    push: FakePushService, channel: WebPushChannel
) -> None:
    target, private_key, auth = push.subscribe("mine")
    sub = parse_subscription(target, allow_private=True)
    item = Outgoing(1, "m1", target, LESSON, 1)
    url, headers, body = build_request(
        item,
        sub,
        settings_for(push).webpush,
        f"vapid t={_token(push.vapid_key, push.origin)}, k={_k(push.vapid_key)}",
    )
    plain = http_ece.decrypt(body, private_key=private_key, dh=None, auth_secret=auth, version="aes128gcm")
    assert plain == build_payload(LESSON)
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 201
    assert push.messages[0].payload == json.loads(plain)


async def test_a_wrong_vapid_key_is_rejected(push: FakePushService) -> None:
    other_pem, _ = generate_vapid_keys()
    channel = WebPushChannel(
        settings_for(
            push, webpush=WebPushSettings(vapid_private_key=SecretStr(other_pem), vapid_subject=SUBJECT)
        )
    )
    try:
        [result] = await channel.send([Outgoing(1, "m1", push.good_target(), DING, 1)])
    finally:
        await channel.close()
    assert result.outcome is Outcome.FAILED and not result.disable_contact
    assert "VAPID" in (result.error or "") and "403" in (result.error or "")
    assert push.messages == [] and push.rejected == 1 and push.rejections[0][0] == 403


def _k(key: ec.EllipticCurvePrivateKey) -> str:
    return b64url(point(key.public_key()))


def _token(key: ec.EllipticCurvePrivateKey, aud: str, exp_in: int = 3600, sub: str | None = SUBJECT) -> str:
    claims: dict[str, Any] = {"aud": aud, "exp": int(time.time()) + exp_in}
    if sub is not None:
        claims["sub"] = sub
    return es256(key, claims)


@pytest.mark.parametrize(
    ("make_header", "status"),
    [
        (
            lambda p: (
                f"vapid t={_token(ec.generate_private_key(ec.SECP256R1()), p.origin)}, k={_k(p.vapid_key)}"
            ),
            401,
        ),
        (lambda p: f"vapid t={_token(p.vapid_key, 'https://elsewhere.example')}, k={_k(p.vapid_key)}", 401),
        (lambda p: f"vapid t={_token(p.vapid_key, p.origin, exp_in=-10)}, k={_k(p.vapid_key)}", 401),
        (lambda p: f"vapid t={_token(p.vapid_key, p.origin, exp_in=25 * 3600)}, k={_k(p.vapid_key)}", 401),
        (lambda p: f"vapid t={_token(p.vapid_key, p.origin, sub=None)}, k={_k(p.vapid_key)}", 401),
        (lambda p: f"Bearer {_token(p.vapid_key, p.origin)}", 401),
        (lambda p: "", 401),
        (lambda p: f"vapid t={_token(p.vapid_key, p.origin)}, k={_k(p.vapid_key)}", 201),  # control
    ],
    ids=["forged-signature", "wrong-aud", "expired", "exp-over-24h", "no-sub", "not-vapid", "none", "valid"],
)
async def test_the_fake_checks_vapid_like_a_push_service(
    push: FakePushService, make_header: Callable[[FakePushService], str], status: int
) -> None:
    target = push.good_target()
    sub = parse_subscription(target, allow_private=True)
    url, headers, body = build_request(
        Outgoing(1, "m", target, DING, 1), sub, WebPushSettings(), make_header(push)
    )
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        assert resp.status == status
        if status != 201:
            assert (await resp.json())["errno"] == 109
    assert len(push.messages) == (1 if status == 201 else 0)


async def test_the_fake_requires_ttl(push: FakePushService) -> None:
    target = push.good_target()
    sub = parse_subscription(target, allow_private=True)
    auth = f"vapid t={_token(push.vapid_key, push.origin)}, k={_k(push.vapid_key)}"
    url, headers, body = build_request(Outgoing(1, "m", target, DING, 1), sub, WebPushSettings(), auth)
    del headers["TTL"]
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 400 and (await resp.json())["errno"] == 111
    assert push.messages == []


@pytest.mark.parametrize(
    ("status", "outcome", "disable"),
    [
        (404, Outcome.FAILED, True),
        (410, Outcome.FAILED, True),
        (413, Outcome.FAILED, False),
        (400, Outcome.FAILED, False),
        (429, Outcome.RETRY, False),
        (500, Outcome.RETRY, False),
        (503, Outcome.RETRY, False),
    ],
)
async def test_status_mapping(
    push: FakePushService, channel: WebPushChannel, status: int, outcome: Outcome, disable: bool
) -> None:
    target, _, _ = push.subscribe("scripted")
    push.responses["/wpush/v2/scripted"] = [status]
    push.headers_for[429] = {"Retry-After": "7"}
    [result] = await channel.send([Outgoing(1, "m1", target, DING, 1)])
    assert (result.outcome, result.disable_contact) == (outcome, disable), result
    assert str(status) in (result.error or "")
    if status == 429:
        assert result.retry_after == 7.0
    assert push.messages == []


async def test_hostile_answers_become_storable_results(
    push: FakePushService, channel: WebPushChannel
) -> None:
    """A NUL in an error body, an 8 KB Location, Retry-After: 1e300 (issue 7, defect 2)."""
    target, _, _ = push.subscribe("hostile")
    push.responses["/wpush/v2/hostile"] = [400, 202, 503]
    push.error_messages[400] = "bad \x00 request"
    push.headers_for[202] = {"Location": "https://push.example.org/m/" + "x" * 8000}
    push.headers_for[503] = {"Retry-After": "1e300"}
    bad, big, slow = [(await channel.send([Outgoing(i, "m1", target, DING, 1)]))[0] for i in (1, 2, 3)]
    assert bad.outcome is Outcome.FAILED and bad.error == "HTTP 400: bad  request"
    assert big.outcome is Outcome.SENT and big.provider_ref is None  # no id rather than a cut one
    assert slow.outcome is Outcome.RETRY and slow.retry_after == MAX_RETRY_AFTER_SECONDS


async def test_retry_after_as_an_http_date(push: FakePushService) -> None:
    clock = FrozenClock(time.time())
    channel = WebPushChannel(settings_for(push), clock=clock)
    target, _, _ = push.subscribe("busy")
    push.responses["/wpush/v2/busy"] = [503]
    push.headers_for[503] = {
        "Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(clock.time() + 120))
    }
    try:
        [result] = await channel.send([Outgoing(1, "m1", target, DING, 1)])
    finally:
        await channel.close()
    assert result.outcome is Outcome.RETRY and result.retry_after is not None
    assert 118 <= result.retry_after <= 121


async def test_a_dropped_connection_is_ambiguous_and_a_resend_replaces_the_message(
    push: FakePushService, channel: WebPushChannel
) -> None:
    assert channel.capabilities.resend_when_ambiguous
    target, _, _ = push.subscribe("flaky")
    push.responses["/wpush/v2/flaky"] = ["drop-after-accept"]
    [first] = await channel.send([Outgoing(1, "m1", target, DING, 1)])
    assert first.outcome is Outcome.UNKNOWN and first.retry_after is None
    [second] = await channel.send([Outgoing(1, "m1", target, DING, 2)])
    assert second.outcome is Outcome.SENT
    assert len(push.messages) == 2  # the push service saw both ...
    assert len(push.inbox("/wpush/v2/flaky")) == 1  # ... and the browser shows one (same Topic)


async def test_a_drop_before_accepting_is_ambiguous_too(
    push: FakePushService, channel: WebPushChannel
) -> None:
    target, _, _ = push.subscribe("lost")
    push.responses["/wpush/v2/lost"] = ["drop"]
    [result] = await channel.send([Outgoing(1, "m1", target, DING, 1)])
    assert result.outcome is Outcome.UNKNOWN and push.messages == []


async def test_an_unreachable_push_service_is_transient(
    push: FakePushService, channel: WebPushChannel
) -> None:
    target = {**push.good_target(), "endpoint": "http://127.0.0.1:9/wpush/v2/x"}
    [result] = await channel.send([Outgoing(1, "m1", target, DING, 1)])
    assert result.outcome is Outcome.RETRY


async def test_private_addresses_are_refused_at_send_time(push: FakePushService) -> None:
    channel = WebPushChannel(settings_for(push, allow_private_targets=False))
    target = push.good_target()
    # "localhost" passes validation as a name but resolves to loopback: refused, never sent.
    behind_a_name = {
        **target,
        "endpoint": target["endpoint"].replace("http://127.0.0.1", "https://localhost"),
    }
    try:
        results = await channel.send(
            [
                Outgoing(1, "m1", target, DING, 1),
                Outgoing(2, "m2", channel.validate_target(behind_a_name), DING, 1),
            ]
        )
    finally:
        await channel.close()
    by_id = {r.delivery_id: r for r in results}
    assert by_id[1].outcome is Outcome.FAILED and not by_id[1].disable_contact  # policy, not the contact
    assert by_id[2].outcome is Outcome.FAILED and "non-public" in (by_id[2].error or "")
    assert push.messages == [] and push.rejected == 0


async def test_a_malformed_stored_target_fails_and_disables_the_contact(channel: WebPushChannel) -> None:
    [result] = await channel.send([Outgoing(1, "m1", {"endpoint": "https://push.example.org/x"}, DING, 1)])
    assert result.outcome is Outcome.FAILED and result.disable_contact


# --- GET /v1/webpush/vapid-public-key ---------------------------------------------------------


def _principal_middleware(role: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[PRINCIPAL] = Principal("k1", role, "u1", "m1" if role == "member" else None)
        return await handler(request)

    return middleware


async def _get_key(settings: Settings, role: str) -> tuple[int, dict[str, Any]]:
    app = web.Application(middlewares=[problem_middleware, _principal_middleware(role)])
    app[SETTINGS] = settings
    routes.install(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/v1/webpush/vapid-public-key")
        return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize("role", ["admin", "service", "secretary", "member"])
async def test_the_api_serves_the_vapid_public_key(push: FakePushService, role: str) -> None:
    status, body = await _get_key(settings_for(push), role)
    assert (status, body) == (200, {"public_key": _k(push.vapid_key)})


async def test_the_api_says_404_when_web_push_is_not_configured() -> None:
    status, body = await _get_key(Settings(), "admin")
    assert status == 404 and body["type"].endswith("/not-found") and "not configured" in body["detail"]


def test_the_fake_keys_are_usable_by_the_channel(push: FakePushService) -> None:
    assert vapid_public_key(settings_for(push)) == _k(push.vapid_key)
    assert pem(push.vapid_key).startswith("-----BEGIN PRIVATE KEY-----")
