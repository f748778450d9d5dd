"""The APNs channel against a fake APNs speaking HTTP/2 over TLS: provider-token auth and its
hourly refresh, exact headers and payloads, error mapping, ambiguous drops, target validation."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import SecretStr

from notifier.channels.apns import (
    ApnsChannel,
    ProviderToken,
    apns_id,
    build_payload,
    build_request,
    collapse_id,
    configured,
    load_signing_key,
    make_provider_token,
    normalise_device_token,
    tls_context,
)
from notifier.channels.base import InvalidTarget, NoticeContent, Outcome, Outgoing
from notifier.channels.jwt import b64url_decode
from notifier.clock import FrozenClock
from notifier.settings import Settings
from tests.conftest import make_settings
from tests.fakes.apns import (
    BAD_DEVICE_TOKEN,
    DROP,
    EXPIRED_PROVIDER_TOKEN,
    SERVICE_UNAVAILABLE,
    TOO_MANY_REQUESTS,
    UNREGISTERED,
    ApnsFake,
    Reply,
)

START = 1_800_000_000.0
NOTICE_ID = "6f1c1b7e-0000-4000-8000-000000000001"
DING = NoticeContent(NOTICE_ID, "ding", "紧急集合", "15:00 到三楼会议室")
NOTICE = NoticeContent(NOTICE_ID, "notice", "学习通知", "请阅读第三章")
TOKEN = "a1b2c3d4" * 8


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
async def fake(clock: FrozenClock) -> AsyncIterator[ApnsFake]:
    f = await ApnsFake(clock=clock).start()
    yield f
    await f.stop()


def apns_settings(fake: ApnsFake, **changes: Any) -> Settings:
    overrides = fake.settings_overrides()
    overrides["apns"] = overrides["apns"].model_copy(update=changes)
    return make_settings(("", ""), **overrides)


@pytest.fixture
async def channel(fake: ApnsFake, clock: FrozenClock) -> AsyncIterator[ApnsChannel]:
    ch = ApnsChannel(apns_settings(fake), clock=clock)
    yield ch
    await ch.close()


def out(delivery_id: int, content: NoticeContent = DING, target: Any = TOKEN) -> Outgoing:
    return Outgoing(delivery_id, f"m{delivery_id}", target, content, 1)


def _p8(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


# -- target validation -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "normalised"),
    [(TOKEN.upper(), TOKEN), (f"  {TOKEN}\n", TOKEN), ("0f" * 100, "0f" * 100), ("ab" * 50, "ab" * 50)],
)
def test_accepts_hex_device_tokens_lower_cased(target: str, normalised: str) -> None:
    assert normalise_device_token(target) == normalised
    assert normalise_device_token(normalised) == normalised


@pytest.mark.parametrize(
    "bad",
    [None, 123, "", {"token": TOKEN}, [TOKEN], "zz" * 32, "a" * 62, "a" * 65, "a" * 202, f"<{TOKEN}>"],
)
def test_rejects_malformed_device_tokens(bad: Any) -> None:
    with pytest.raises(InvalidTarget) as info:
        normalise_device_token(bad)
    assert info.value.field == "target"


# -- pure request building ---------------------------------------------------------------------
def test_ding_request_is_exact() -> None:
    request = build_request(out(7, DING), TOKEN, "org.example.app", "JWT", 1_800_000_000)
    assert request.path == f"/3/device/{TOKEN}"
    assert request.headers == {
        "authorization": "bearer JWT",
        "apns-topic": "org.example.app",
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": "1800000600",
        "apns-collapse-id": NOTICE_ID,
        "apns-id": apns_id(7),
    }
    assert json.loads(request.body) == {
        "aps": {
            "alert": {"title": "紧急集合", "body": "15:00 到三楼会议室"},
            "sound": "default",
            "interruption-level": "time-sensitive",
            "thread-id": "ding",
        },
        "notice_id": NOTICE_ID,
        "kind": "ding",
    }
    assert "紧急集合".encode() in request.body  # UTF-8, not \\u escapes: more text fits 4 KB


def test_notice_request_is_exact() -> None:
    request = build_request(out(8, NOTICE), TOKEN, "org.example.app", "JWT", 1_800_000_000)
    assert request.headers["apns-priority"] == "5"
    assert request.headers["apns-expiration"] == str(1_800_000_000 + 24 * 3600)
    assert json.loads(request.body)["aps"] == {
        "alert": {"title": "学习通知", "body": "请阅读第三章"},
        "sound": "default",
        "interruption-level": "active",
        "thread-id": "notice",
    }


def test_apns_id_is_a_uuid_fixed_per_delivery_and_collapse_id_fits() -> None:
    assert apns_id(7) == apns_id(7) != apns_id(8)
    assert uuid.UUID(apns_id(7)).version == 5 and apns_id(7) == apns_id(7).lower()
    assert collapse_id(NOTICE_ID) == NOTICE_ID
    long_id = collapse_id("n" * 65)
    assert len(long_id.encode()) == 64 and long_id == collapse_id("n" * 65) != collapse_id("n" * 66)
    assert len(collapse_id("通知" * 20).encode()) == 64


@pytest.mark.parametrize(
    ("title", "body"),
    [
        ("标题", "很长的正文内容" * 1000),
        ("title", 'quotes " and newlines \n need escaping ' * 300),
        ("title", "word " * 2000),
        ("T" * 5000, "B" * 5000),
    ],
)
def test_long_notices_are_shortened_never_the_json(title: str, body: str) -> None:
    payload = build_payload(NoticeContent(NOTICE_ID, "notice", title, body))
    assert len(payload) <= 4096
    alert = json.loads(payload)["aps"]["alert"]
    assert alert["body"].endswith("…") and body.startswith(alert["body"][:-1].rstrip())
    assert len(payload) > 4096 - 64  # it uses the room it has
    if len(title) < 100:
        assert alert["title"] == title
    else:
        assert alert["title"].endswith("…") and len(alert["title"].encode()) <= 256
    if body.startswith("word "):
        assert alert["body"].endswith("word…")  # cut at a space, not inside a word


def test_a_long_title_is_capped_and_a_short_body_kept() -> None:
    payload = build_payload(NoticeContent(NOTICE_ID, "notice", "标题" * 2000, "body"))
    alert = json.loads(payload)["aps"]["alert"]
    assert alert["body"] == "body"
    assert alert["title"].endswith("…") and 200 < len(alert["title"].encode()) <= 256


# -- the provider token ------------------------------------------------------------------------
def _verify(token: str, public_key: ec.EllipticCurvePublicKey) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims, signature = token.split(".")
    raw = b64url_decode(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims))


def test_provider_token_is_an_es256_jwt_with_kid_iss_iat() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    header, claims = _verify(
        make_provider_token(key, "KEY4TESTS1", "TEAM4TESTS", 1_800_000_000), key.public_key()
    )
    assert header == {"typ": "JWT", "alg": "ES256", "kid": "KEY4TESTS1"}
    assert claims == {"iss": "TEAM4TESTS", "iat": 1_800_000_000}


def test_provider_token_is_reused_refreshed_hourly_and_forced_at_most_every_20_minutes() -> None:
    clock = FrozenClock(START)
    tokens = ProviderToken(ec.generate_private_key(ec.SECP256R1()), "K", "T", clock)
    first = tokens.current()
    clock.advance(49 * 60)
    assert tokens.current() == first
    clock.advance(60)
    second = tokens.current()
    assert second != first
    assert tokens.rejected(first)  # already replaced: retry with the current one
    assert tokens.current() == second
    assert tokens.rejected(second)  # forced refresh
    third = tokens.current()
    assert third != second
    clock.advance(60)
    assert not tokens.rejected(third)  # a second forced refresh within 20 minutes: no
    assert tokens.current() == third
    clock.advance(20 * 60)
    assert tokens.rejected(third) and tokens.current() != third


def test_key_from_a_path_and_configuration(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "AuthKey.p8").write_text(_p8(key))
    loaded = load_signing_key(str(tmp_path / "AuthKey.p8"))
    assert loaded.private_numbers() == key.private_numbers()
    assert not configured(Settings())
    with pytest.raises(ValueError, match="APNs needs"):
        ApnsChannel(Settings())


# -- against the fake APNs ---------------------------------------------------------------------
async def test_a_batch_goes_out_as_concurrent_streams_on_one_http2_connection(
    fake: ApnsFake, channel: ApnsChannel
) -> None:
    fake.delay = 0.05
    targets = [f"{i:064x}" for i in range(1, 21)]
    results = await channel.send([out(i, DING, t) for i, t in enumerate(targets, start=1)])
    assert sorted(r.delivery_id for r in results) == list(range(1, 21))
    assert all(r.outcome is Outcome.SENT for r in results), results
    assert {r.delivery_id: r.provider_ref for r in results} == {i: apns_id(i) for i in range(1, 21)}
    assert fake.alpn == ["h2"]  # one TLS connection, HTTP/2 negotiated
    assert sorted(m.device_token for m in fake.messages) == targets
    assert {m.connection for m in fake.messages} == {0}
    assert fake.max_in_flight > 1  # multiplexed, not one request after another
    assert len(fake.accepted_tokens) == 1 and fake.rejected == 0


async def test_headers_and_payload_on_the_wire_for_a_ding_and_a_notice(
    fake: ApnsFake, channel: ApnsChannel
) -> None:
    notice_token = "b" * 64
    results = await channel.send([out(1, DING, TOKEN.upper()), out(2, NOTICE, notice_token)])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    pushes = {m.device_token: m for m in fake.messages}
    ding, notice = pushes[TOKEN], pushes[notice_token]
    jwt = next(iter(fake.accepted_tokens))
    for push, priority, ttl, delivery in ((ding, "10", 600, 1), (notice, "5", 86400, 2)):
        assert push.headers[":method"] == "POST" and push.headers[":scheme"] == "https"
        assert {k: v for k, v in push.headers.items() if k.startswith("apns-") or k == "authorization"} == {
            "authorization": f"bearer {jwt}",
            "apns-topic": fake.topic,
            "apns-push-type": "alert",
            "apns-priority": priority,
            "apns-expiration": str(int(START) + ttl),
            "apns-collapse-id": NOTICE_ID,
            "apns-id": apns_id(delivery),
        }
    assert ding.payload["aps"]["interruption-level"] == "time-sensitive"
    assert notice.payload == {
        "aps": {
            "alert": {"title": "学习通知", "body": "请阅读第三章"},
            "sound": "default",
            "interruption-level": "active",
            "thread-id": "notice",
        },
        "notice_id": NOTICE_ID,
        "kind": "notice",
    }


@pytest.mark.parametrize(
    "change",
    [
        {"key_p8": SecretStr(_p8(ec.generate_private_key(ec.SECP256R1())))},  # not the team's key
        {"key_id": "OTHERKEY99"},
        {"team_id": "OTHERTEAM9"},
    ],
)
async def test_a_wrong_key_kid_or_team_is_rejected_by_the_fake(
    fake: ApnsFake, clock: FrozenClock, change: dict[str, Any]
) -> None:
    ch = ApnsChannel(apns_settings(fake, **change), clock=clock)
    try:
        [result] = await ch.send([out(1)])
    finally:
        await ch.close()
    assert result.outcome is Outcome.FAILED and not result.disable_contact
    assert result.error == "APNs 403 InvalidProviderToken"
    assert fake.rejections == ["InvalidProviderToken"] * 2  # refreshed and retried once
    assert fake.messages == []


async def test_token_reused_within_the_hour_and_refreshed_after_50_minutes(
    fake: ApnsFake, channel: ApnsChannel, clock: FrozenClock
) -> None:
    for minutes in (0, 10, 20, 19):  # 49 minutes in all
        clock.advance(minutes * 60)
        [result] = await channel.send([out(1)])
        assert result.outcome is Outcome.SENT
    assert len(fake.accepted_tokens) == 1
    clock.advance(2 * 60)
    [result] = await channel.send([out(2)])
    assert result.outcome is Outcome.SENT and fake.rejected == 0
    assert list(fake.accepted_tokens.values()) == [START, START + 51 * 60]
    assert len(fake.alpn) == 1  # the same connection carried both tokens


async def test_a_token_over_an_hour_old_is_expired_at_the_fake(fake: ApnsFake) -> None:
    lagging = FrozenClock(START - 2 * 3600)  # the channel's clock is two hours behind APNs'
    ch = ApnsChannel(apns_settings(fake), clock=lagging)
    try:
        [result] = await ch.send([out(1)])
    finally:
        await ch.close()
    assert result.outcome is Outcome.FAILED and result.error == "APNs 403 ExpiredProviderToken"
    assert fake.rejections == ["ExpiredProviderToken"] * 2


async def test_a_token_from_the_future_is_invalid_at_the_fake(fake: ApnsFake) -> None:
    ch = ApnsChannel(apns_settings(fake), clock=FrozenClock(START + 120))
    try:
        [result] = await ch.send([out(1)])
    finally:
        await ch.close()
    assert result.error == "APNs 403 InvalidProviderToken"


async def test_expired_provider_token_refreshes_and_retries_once(
    fake: ApnsFake, channel: ApnsChannel
) -> None:
    fake.script(TOKEN, EXPIRED_PROVIDER_TOKEN)
    [result] = await channel.send([out(1)])
    assert result.outcome is Outcome.SENT
    assert len(fake.messages) == 1 and len(fake.accepted_tokens) == 2
    assert fake.messages[0].provider_token == list(fake.accepted_tokens)[1]


async def test_the_fake_refuses_token_updates_within_20_minutes(fake: ApnsFake) -> None:
    key = load_signing_key(fake.key_p8())
    async with httpx.AsyncClient(http1=False, http2=True, verify=tls_context(fake.ca_file)) as client:
        statuses = []
        for iat in (int(START) - 5, int(START)):
            request = build_request(
                out(1),
                TOKEN,
                fake.topic,
                make_provider_token(key, fake.key_id, fake.team_id, iat),
                int(START),
            )
            response = await client.post(
                fake.base_url + request.path, content=request.body, headers=request.headers
            )
            assert response.http_version == "HTTP/2"
            statuses.append((response.status_code, response.content))
    assert statuses == [(200, b""), (429, b'{"reason": "TooManyProviderTokenUpdates"}')]


@pytest.mark.parametrize(
    ("header", "value", "status", "reason"),
    [
        ("apns-topic", "org.example.other", 400, "TopicDisallowed"),
        ("apns-topic", None, 400, "MissingTopic"),
        ("apns-push-type", "bogus", 400, "InvalidPushType"),
        ("apns-priority", "7", 400, "BadPriority"),
        ("apns-collapse-id", "c" * 65, 400, "BadCollapseId"),
        ("apns-id", "not-a-uuid", 400, "BadMessageId"),
        ("authorization", None, 403, "MissingProviderToken"),
    ],
)
async def test_the_fake_checks_the_apns_headers(
    fake: ApnsFake, header: str, value: str | None, status: int, reason: str
) -> None:
    token = make_provider_token(load_signing_key(fake.key_p8()), fake.key_id, fake.team_id, int(START))
    request = build_request(out(1), TOKEN, fake.topic, token, int(START))
    headers = {k: v for k, v in request.headers.items() if k != header}
    if value is not None:
        headers[header] = value
    async with httpx.AsyncClient(http1=False, http2=True, verify=tls_context(fake.ca_file)) as client:
        response = await client.post(fake.base_url + request.path, content=request.body, headers=headers)
    assert (response.status_code, response.json()) == (status, {"reason": reason})
    assert fake.messages == [] and fake.rejected == 1


@pytest.mark.parametrize(
    ("reply", "outcome", "disable", "retry_after"),
    [
        (UNREGISTERED, Outcome.FAILED, True, None),
        (BAD_DEVICE_TOKEN, Outcome.FAILED, True, None),
        (Reply(400, "DeviceTokenNotForTopic"), Outcome.FAILED, True, None),
        (TOO_MANY_REQUESTS, Outcome.RETRY, False, None),
        (Reply(429, "TooManyRequests", {"retry-after": "30"}), Outcome.RETRY, False, 30.0),
        (Reply(500, "InternalServerError"), Outcome.RETRY, False, None),
        (SERVICE_UNAVAILABLE, Outcome.RETRY, False, None),
        (Reply(400, "BadExpirationDate"), Outcome.FAILED, False, None),
        (Reply(403, "Forbidden"), Outcome.FAILED, False, None),
        (Reply(413, "PayloadTooLarge"), Outcome.FAILED, False, None),
    ],
)
async def test_error_mapping(
    fake: ApnsFake,
    channel: ApnsChannel,
    reply: Reply,
    outcome: Outcome,
    disable: bool,
    retry_after: float | None,
) -> None:
    fake.script(TOKEN, reply)
    [result] = await channel.send([out(1)])
    assert (result.outcome, result.disable_contact, result.retry_after) == (outcome, disable, retry_after)
    assert result.error == f"APNs {reply.status} {reply.reason}"
    assert fake.messages == [] and len(fake.accepted_tokens) == 1  # answered once, not retried


async def test_connection_dropped_after_sending_is_ambiguous_and_a_resend_is_recognisable(
    fake: ApnsFake, channel: ApnsChannel
) -> None:
    fake.script(TOKEN, DROP)
    [first] = await channel.send([out(5)])
    assert first.outcome is Outcome.UNKNOWN and "connection lost" in (first.error or "")
    assert channel.capabilities.resend_when_ambiguous
    [again] = await channel.send([out(5)])  # what the dispatcher does for a push channel
    assert again.outcome is Outcome.SENT
    assert len(fake.messages) == 2 and len(fake.alpn) == 2  # a new connection after the drop
    ids = {(m.headers["apns-id"], m.headers["apns-collapse-id"]) for m in fake.messages}
    assert ids == {(apns_id(5), NOTICE_ID)}  # APNs and the phone see the same push twice


async def test_an_untrusted_certificate_is_refused(fake: ApnsFake, clock: FrozenClock) -> None:
    ch = ApnsChannel(apns_settings(fake, ca_file=None), clock=clock)
    try:
        [result] = await ch.send([out(1)])
    finally:
        await ch.close()
    assert result.outcome is Outcome.RETRY and result.error == "APNs unreachable: ConnectError"
    assert fake.messages == [] and fake.rejected == 0


async def test_an_unreachable_apns_is_transient(fake: ApnsFake, clock: FrozenClock) -> None:
    ch = ApnsChannel(apns_settings(fake, base_url="https://127.0.0.1:9"), clock=clock)
    try:
        [result] = await ch.send([out(1)])
    finally:
        await ch.close()
    assert result.outcome is Outcome.RETRY


async def test_a_bad_target_fails_without_a_request(fake: ApnsFake, channel: ApnsChannel) -> None:
    [bad, good] = await channel.send([out(1, DING, "not-a-token"), out(2)])
    assert bad.outcome is Outcome.FAILED and bad.disable_contact
    assert good.outcome is Outcome.SENT and len(fake.messages) == 1


async def test_an_oversized_notice_is_shortened_and_accepted(fake: ApnsFake, channel: ApnsChannel) -> None:
    [result] = await channel.send([out(1, NoticeContent(NOTICE_ID, "notice", "t", "正文" * 5000))])
    assert result.outcome is Outcome.SENT
    assert fake.messages[0].payload["aps"]["alert"]["body"].endswith("…")


async def test_close_then_send_opens_a_new_connection(fake: ApnsFake, channel: ApnsChannel) -> None:
    assert await channel.send([]) == []
    await channel.send([out(1)])
    await channel.close()
    [result] = await channel.send([out(2)])
    assert result.outcome is Outcome.SENT and len(fake.alpn) == 2


async def test_capabilities(fake: ApnsFake) -> None:
    ch = ApnsChannel(apns_settings(fake))
    assert ch.id == "apns" and ch.validate_target(fake.good_target()) == fake.good_target()
    caps = ch.capabilities
    assert caps.needs_contact and caps.resend_when_ambiguous and caps.circuit_breaker
    assert not caps.supports_delivery_reports and not caps.supports_read_confirmation
    assert caps.max_attempts == Settings().push_max_attempts
