"""The sms channel against fake Aliyun and Twilio: signing, exact requests, error mapping,
ambiguous sends, signed delivery reports and number validation."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl

import pytest

from notifier.channels import aliyun, twilio
from notifier.channels.base import (
    InvalidSignature,
    InvalidTarget,
    NoticeContent,
    Outcome,
    Outgoing,
    StatusUpdate,
    TransientError,
)
from notifier.channels.phone import FormPoster, is_gsm7, redact, segment_count
from notifier.channels.sms import SmsChannel, sms_text
from notifier.clock import FrozenClock
from notifier.logs import mask
from notifier.settings import AliyunSettings, Settings, TwilioSettings
from tests.conftest import make_settings
from tests.fakes.aliyun import FakeAliyun, expected_signature
from tests.fakes.twilio import FakeTwilio

CONTENT = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "防汛通知", "今晚八点全体到岗。")
LINK = "https://notifier.example.org/r/eyJkIjo0Mn0.sig"
Fake = FakeAliyun | FakeTwilio


def settings_for(fake: Fake, **extra: Any) -> Settings:
    return make_settings(("", ""), **{**fake.settings_overrides(), **extra})


def item(
    delivery_id: int, target: Any, link: str | None = LINK, content: NoticeContent = CONTENT
) -> Outgoing:
    return Outgoing(delivery_id, f"m{delivery_id}", target, content, 1, link)


@pytest.fixture(params=["aliyun", "twilio"])
def fake(request: pytest.FixtureRequest) -> Fake:
    return request.getfixturevalue(f"{request.param}_fake")  # type: ignore[no-any-return]


async def send_one(settings: Settings, target: Any, clock: FrozenClock | None = None) -> Any:
    channel = SmsChannel(settings, clock=clock)
    try:
        [result] = await channel.send([item(1, target)])
    finally:
        await channel.close()
    return result


# --- signatures: published vectors ----------------------------------------------------------------


def test_aliyun_signature_matches_the_documented_example() -> None:
    # Aliyun's SMS signature guide: testId / testSecret, GET, this exact parameter set.
    params = {
        "AccessKeyId": "testId",
        "Action": "SendSms",
        "Format": "XML",
        "OutId": "123",
        "PhoneNumbers": "15300000001",
        "RegionId": "cn-hangzhou",
        "SignName": "阿里云短信测试专用",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
        "SignatureVersion": "1.0",
        "TemplateCode": "SMS_71390007",
        "TemplateParam": '{"customer":"test"}',
        "Timestamp": "2017-07-12T02:42:19Z",
        "Version": "2017-05-25",
    }
    assert aliyun.string_to_sign("GET", params).startswith(
        "GET&%2F&AccessKeyId%3DtestId%26Action%3DSendSms%26Format%3DXML%26OutId%3D123"
    )
    assert aliyun.sign("testSecret", params, method="GET") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="


def test_aliyun_percent_encoding_rules() -> None:
    assert aliyun.percent_encode("a b*c~d/é") == "a%20b%2Ac~d%2F%C3%A9"


def test_twilio_signature_matches_published_vectors() -> None:
    # twilio-python's own test vectors (token "12345").
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    assert twilio.compute_signature("12345", url, params.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert twilio.compute_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    pairs = list(params.items())
    # The URL as seen behind a proxy: with a port, or signed with the default port.
    assert twilio.verify_signature(
        "12345", url.replace(".com", ".com:1234"), pairs, "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )
    assert twilio.verify_signature("12345", url, pairs, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert not twilio.verify_signature("12345", url, pairs, "RSOYDt4T1cUTdK1PDd93/VVr8B8X")


# --- pure request building ------------------------------------------------------------------------


def test_aliyun_send_sms_request_is_exact() -> None:
    settings = AliyunSettings(sms_sign_name="阿里云短信测试", sms_template_code="SMS_154950909")
    params = aliyun.send_sms_params(
        settings, "+8613800138000", "防汛通知", "今晚 8 点 * 全体到岗", "https://n.example.org/r/AbC~1", "42"
    )
    assert params == {
        "PhoneNumbers": "13800138000",
        "SignName": "阿里云短信测试",
        "TemplateCode": "SMS_154950909",
        "TemplateParam": '{"title":"防汛通知","content":"今晚 8 点 * 全体到岗","link":"https://n.example.org/r/AbC~1"}',
        "OutId": "42",
    }
    url, headers, body = aliyun.build_rpc_request(
        "https://dysmsapi.aliyuncs.com",
        "testId",
        "testSecret",
        "SendSms",
        params,
        1_700_000_000,
        "45e25e9b-0a6f-4070-8c85-2956eda1b466",
    )
    assert url == "https://dysmsapi.aliyuncs.com/"
    assert headers["content-type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert body.decode() == (
        "AccessKeyId=testId&Action=SendSms&Format=JSON&SignatureMethod=HMAC-SHA1"
        "&SignatureNonce=45e25e9b-0a6f-4070-8c85-2956eda1b466&SignatureVersion=1.0"
        "&Timestamp=2023-11-14T22%3A13%3A20Z&Version=2017-05-25&PhoneNumbers=13800138000"
        "&SignName=%E9%98%BF%E9%87%8C%E4%BA%91%E7%9F%AD%E4%BF%A1%E6%B5%8B%E8%AF%95&TemplateCode=SMS_154950909"
        "&TemplateParam=%7B%22title%22%3A%22%E9%98%B2%E6%B1%9B%E9%80%9A%E7%9F%A5%22%2C%22content%22%3A%22"
        "%E4%BB%8A%E6%99%9A%208%20%E7%82%B9%20%2A%20%E5%85%A8%E4%BD%93%E5%88%B0%E5%B2%97%22%2C%22link%22"
        "%3A%22https%3A%2F%2Fn.example.org%2Fr%2FAbC~1%22%7D&OutId=42&Signature=EWbYVFb9BXda30xJIQf9168FzrA%3D"
    )
    # The fake's independent implementation (Aliyun's Java recipe) agrees.
    form = dict(parse_qsl(body.decode()))
    assert expected_signature("testSecret", form)[0] == form["Signature"] == "EWbYVFb9BXda30xJIQf9168FzrA="


def test_twilio_message_request_is_exact() -> None:
    settings = TwilioSettings(
        account_sid="AC123", auth_token="tok", sms_from="+15005550006", base_url="https://api.twilio.com"
    )
    url, headers, body = twilio.build_message_request(
        settings, "+8613800138000", "[t] b", "https://n.example.org/v1/providers/sms/callbacks"
    )
    assert url == "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"
    assert headers["authorization"] == "Basic QUMxMjM6dG9r"  # base64("AC123:tok")
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(body.decode()) == [
        ("To", "+8613800138000"),
        ("From", "+15005550006"),
        ("Body", "[t] b"),
        ("StatusCallback", "https://n.example.org/v1/providers/sms/callbacks"),
    ]
    service = settings.model_copy(update={"sms_from": "MG0123"})
    assert ("MessagingServiceSid", "MG0123") in parse_qsl(
        twilio.build_message_request(service, "+1", "x", "u")[2].decode()
    )


# --- the text -------------------------------------------------------------------------------------


def test_short_text_is_title_body_link() -> None:
    assert sms_text("防汛通知", "今晚八点\n全体到岗。", LINK) == f"[防汛通知] 今晚八点 全体到岗。 {LINK}"
    assert sms_text("Drill", "Assemble at 8.", None) == "[Drill] Assemble at 8."
    assert sms_text("Drill", "", LINK) == f"[Drill] {LINK}" and sms_text("", "Go", None) == "Go"


@pytest.mark.parametrize(
    ("body", "gsm7"), [("Assemble at the north gate now. " * 40, True), ("今晚八点全体到岗。" * 60, False)]
)
def test_long_body_is_cut_never_the_link(body: str, gsm7: bool) -> None:
    text = sms_text("Title", body, LINK)
    assert text.endswith(" " + LINK) and text.startswith("[Title] ")
    assert ("..." if gsm7 else "…") in text
    assert is_gsm7(text) is gsm7
    assert segment_count(text) == 3  # as much body as three segments hold, no more


def test_a_huge_title_still_leaves_the_link() -> None:
    text = sms_text("长" * 400, "正文", LINK)
    assert text.endswith(LINK) and segment_count(text) <= 3


def test_segment_arithmetic() -> None:
    assert segment_count("a" * 160) == 1 and segment_count("a" * 161) == 2
    assert segment_count("中" * 70) == 1 and segment_count("中" * 71) == 2 and segment_count("中" * 135) == 3
    assert segment_count("€" * 80) == 1 and segment_count("€" * 81) == 2  # extension chars count twice


# --- targets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        None,
        8613800138000,
        "8613800138000",
        "+0123456789",
        "+86 138 0013 8000",
        "+12345",
        "+1234567890123456",
        " +8613800138000",
        "+8613800138000\n",
        "tel:+8613800138000",
        {"phone": "+8613800138000"},
    ],
)
def test_numbers_must_be_strict_e164(twilio_fake: FakeTwilio, bad: Any) -> None:
    channel = SmsChannel(settings_for(twilio_fake))
    with pytest.raises(InvalidTarget) as info:
        channel.validate_target(bad)
    assert info.value.field == "target"


@pytest.mark.parametrize("good", ["+8613800138000", "+14155550123", "+4420794600", "+123456789012345"])
def test_good_numbers_are_kept_as_given(twilio_fake: FakeTwilio, good: str) -> None:
    channel = SmsChannel(settings_for(twilio_fake))
    assert channel.validate_target(good) == good == channel.validate_target(channel.validate_target(good))


def test_capabilities(twilio_fake: FakeTwilio) -> None:
    settings = settings_for(twilio_fake, sms_rate_per_second=42.0, sms_per_phone_limit=3)
    caps = SmsChannel(settings).capabilities
    assert caps.resend_when_ambiguous is False and caps.supports_delivery_reports is True
    assert caps.rate_per_second == 42.0 and caps.per_target_limit == (
        3,
        settings.sms_per_phone_window_seconds,
    )
    assert caps.supports_read_confirmation is False and caps.needs_contact is True
    assert caps.circuit_breaker is True


def test_unknown_or_unconfigured_provider_is_refused() -> None:
    with pytest.raises(ValueError, match="sms_provider"):
        SmsChannel(Settings(sms_provider="carrier-pigeon"))
    with pytest.raises(ValueError, match="twilio"):
        SmsChannel(Settings(sms_provider="twilio"))


# --- against the fakes ----------------------------------------------------------------------------


async def test_sends_and_returns_the_provider_id(fake: Fake) -> None:
    channel = SmsChannel(settings_for(fake))
    try:
        results = await channel.send([item(i, fake.good_target()) for i in range(1, 6)])
    finally:
        await channel.close()
    assert sorted(r.delivery_id for r in results) == [1, 2, 3, 4, 5]
    assert all(r.outcome is Outcome.SENT for r in results), results
    refs = {r.provider_ref for r in results}
    assert len(fake.messages) == 5 and fake.rejected == 0
    if isinstance(fake, FakeAliyun):
        assert refs == {m.ref for m in fake.messages}
        sent = next(m for m in fake.messages if m.params["OutId"].startswith("1."))
        assert sent.phone == "+8613800138000" and sent.params["PhoneNumbers"] == "13800138000"
        assert json.loads(sent.params["TemplateParam"]) == {
            "title": "防汛通知",
            "content": "今晚八点全体到岗。",
            "link": LINK,
        }
    else:
        assert refs == {m.sid for m in fake.messages}
        assert fake.messages[0].params["Body"] == f"[防汛通知] 今晚八点全体到岗。 {LINK}"
        assert (
            fake.messages[0].params["StatusCallback"]
            == "https://notifier.example.org/v1/providers/sms/callbacks?delivery=1"  # our id, echoed
        )


async def test_a_wrong_secret_is_rejected_by_the_fake(fake: Fake) -> None:
    if isinstance(fake, FakeAliyun):
        wrong = {"aliyun": {**fake.settings_overrides()["aliyun"], "access_key_secret": "not-the-secret"}}
    else:
        wrong = {"twilio": {**fake.settings_overrides()["twilio"], "auth_token": "not-the-token"}}
    result = await send_one(settings_for(fake, **wrong), fake.good_target())
    assert (result.outcome, result.disable_contact) == (Outcome.FAILED, False)
    assert fake.messages == [] and fake.rejected == 1
    assert ("SignatureDoesNotMatch" if isinstance(fake, FakeAliyun) else "20003") in (result.error or "")


async def test_aliyun_rejects_a_stale_timestamp(aliyun_fake: FakeAliyun) -> None:
    result = await send_one(settings_for(aliyun_fake), "+8613800138000", clock=FrozenClock(1_600_000_000))
    assert result.outcome is Outcome.FAILED and "InvalidTimeStamp.Expired" in (result.error or "")
    assert aliyun_fake.rejections == ["InvalidTimeStamp.Expired"] and aliyun_fake.messages == []


async def test_aliyun_rejects_a_reused_nonce(aliyun_fake: FakeAliyun) -> None:
    settings = settings_for(aliyun_fake)
    poster = FormPoster(5.0, 4)
    client = aliyun.AliyunClient(settings.aliyun, poster, FrozenClock(time.time()), nonce=lambda: "n-1")
    params = aliyun.send_sms_params(settings.aliyun, "+8613800138000", "t", "b", None, "1")
    try:
        assert (await client.call(settings.aliyun.sms_base_url, "SendSms", params))["Code"] == "OK"
        with pytest.raises(TransientError, match="SignatureNonceUsed"):
            await client.call(settings.aliyun.sms_base_url, "SendSms", params)
    finally:
        await poster.close()
    assert len(aliyun_fake.messages) == 1 and aliyun_fake.rejections == ["SignatureNonceUsed"]


@pytest.mark.parametrize(
    ("answer", "outcome", "disable", "retry_after"),
    [
        (21211, Outcome.FAILED, True, None),
        (21614, Outcome.FAILED, True, None),
        (429, Outcome.RETRY, False, 7.0),
        (20429, Outcome.RETRY, False, 7.0),
        (500, Outcome.RETRY, False, None),
        (503, Outcome.RETRY, False, 7.0),
        (401, Outcome.FAILED, False, None),
        (404, Outcome.FAILED, False, None),
    ],
)
async def test_twilio_error_mapping(
    twilio_fake: FakeTwilio, answer: int, outcome: Outcome, disable: bool, retry_after: float | None
) -> None:
    twilio_fake.responses["+14155550123"] = [answer]
    twilio_fake.retry_after = "7"
    result = await send_one(settings_for(twilio_fake), "+14155550123")
    assert (result.outcome, result.disable_contact, result.retry_after) == (outcome, disable, retry_after)
    assert twilio_fake.messages == []
    assert "4155550123" not in (result.error or "")  # numbers in provider messages are masked


@pytest.mark.parametrize(
    ("answer", "outcome", "disable", "retry_after"),
    [
        ("isv.MOBILE_NUMBER_ILLEGAL", Outcome.FAILED, True, None),
        ("isv.BUSINESS_LIMIT_CONTROL", Outcome.RETRY, False, 60.0),
        ("Throttling.User", Outcome.RETRY, False, None),
        ("isp.SYSTEM_ERROR", Outcome.RETRY, False, None),
        ("isv.OUT_OF_SERVICE", Outcome.FAILED, False, None),
        ("isv.AMOUNT_NOT_ENOUGH", Outcome.FAILED, False, None),
        (500, Outcome.RETRY, False, None),
        (503, Outcome.RETRY, False, None),
    ],
)
async def test_aliyun_error_mapping(
    aliyun_fake: FakeAliyun, answer: int | str, outcome: Outcome, disable: bool, retry_after: float | None
) -> None:
    aliyun_fake.responses["+8613800138000"] = [answer]
    result = await send_one(settings_for(aliyun_fake), "+8613800138000")
    assert (result.outcome, result.disable_contact, result.retry_after) == (outcome, disable, retry_after)
    assert aliyun_fake.messages == []


async def test_an_invalid_number_found_by_the_provider_disables_the_contact(aliyun_fake: FakeAliyun) -> None:
    # E.164-valid, but not a number Aliyun can text: the fake answers isv.MOBILE_NUMBER_ILLEGAL.
    result = await send_one(settings_for(aliyun_fake), "+10123456")
    assert (result.outcome, result.disable_contact) == (Outcome.FAILED, True)


async def test_a_dropped_connection_is_unknown_and_not_retried(fake: Fake) -> None:
    fake.responses[fake.good_target()] = ["drop"]
    channel = SmsChannel(settings_for(fake))
    try:
        [dropped] = await channel.send([item(1, fake.good_target())])
        [fine] = await channel.send([item(2, fake.good_target())])
    finally:
        await channel.close()
    assert dropped.outcome is Outcome.UNKNOWN, dropped  # not RETRY: an SMS is never blindly resent
    assert len(fake.dropped) == 1 and fine.outcome is Outcome.SENT and len(fake.messages) == 1


async def test_a_refused_connection_is_a_plain_retry(twilio_fake: FakeTwilio) -> None:
    unreachable = {**twilio_fake.settings_overrides()["twilio"], "base_url": "http://127.0.0.1:9"}
    result = await send_one(settings_for(twilio_fake, twilio=unreachable), "+14155550123")  # nothing sent
    assert result.outcome is Outcome.RETRY


# --- delivery reports -----------------------------------------------------------------------------


def test_twilio_status_callback_is_verified_and_parsed(twilio_fake: FakeTwilio) -> None:
    channel = SmsChannel(settings_for(twilio_fake))
    url = "https://notifier.example.org/v1/providers/sms/callbacks"
    cases = {
        "delivered": StatusUpdate("SM1", "delivered"),
        "sent": StatusUpdate("SM1", "sent"),
        "undelivered": StatusUpdate("SM1", "failed", error="undelivered (error 30003)"),
        "failed": StatusUpdate("SM1", "failed", error="failed (error 30003)"),
    }
    for status, update in cases.items():
        params = {"MessageSid": "SM1", "MessageStatus": status, "AccountSid": twilio_fake.account_sid}
        if status in ("undelivered", "failed"):
            params["ErrorCode"] = "30003"
        headers, body = twilio_fake.signed_callback(url, params)
        assert channel.handle_callback(url, headers, body).updates == [update]
    headers, body = twilio_fake.signed_callback(url, {"MessageSid": "SM1", "MessageStatus": "queued"})
    assert channel.handle_callback(url, headers, body).updates == []


def test_twilio_callback_with_a_bad_signature_is_refused(twilio_fake: FakeTwilio) -> None:
    channel = SmsChannel(settings_for(twilio_fake))
    url = "https://notifier.example.org/v1/providers/sms/callbacks"
    headers, body = twilio_fake.signed_callback(url, {"MessageSid": "SM1", "MessageStatus": "delivered"})
    tampered_sig = {**headers, "X-Twilio-Signature": "A" + headers["X-Twilio-Signature"][1:]}
    tampered_body = body.replace(b"delivered", b"failed")
    for h, b, u in [
        (tampered_sig, body, url),
        (headers, tampered_body, url),
        (headers, body, url + "?x=1"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, body, url),
    ]:
        with pytest.raises(InvalidSignature):
            channel.handle_callback(u, h, b)


async def test_aliyun_report_needs_the_url_token(aliyun_fake: FakeAliyun) -> None:
    settings = settings_for(aliyun_fake)
    channel = SmsChannel(settings)
    try:
        [ok] = await channel.send([item(1, aliyun_fake.good_target())])
    finally:
        await channel.close()
    sent = aliyun_fake.messages[0]
    url = aliyun.report_url(settings.effective_public_url, settings.link_secret.get_secret_value(), "sms")
    assert url.startswith("https://notifier.example.org/v1/providers/sms/callbacks?token=")
    reply = channel.handle_callback(url, {"Content-Type": "application/json"}, aliyun_fake.sms_report(sent))
    assert reply.updates == [StatusUpdate(ok.provider_ref or "", "delivered", delivery_id=1)]  # out_id
    assert (reply.status, json.loads(reply.body)["code"]) == (200, 0)
    failed = channel.handle_callback(url, {}, aliyun_fake.sms_report(sent, success=False, err_code="MK:0000"))
    assert failed.updates == [StatusUpdate(sent.ref, "failed", error="MK:0000: 失败", delivery_id=1)]
    assert channel.handle_callback(url, {}, b"{not json").status == 400
    voice_url = aliyun.report_url(
        settings.effective_public_url, settings.link_secret.get_secret_value(), "voice"
    )
    other_secret = aliyun.report_url(settings.effective_public_url, "another-secret", "sms")
    for bad in [url.split("?")[0], url + "x", voice_url, other_secret, url + "&token=again"]:
        with pytest.raises(InvalidSignature):
            channel.handle_callback(bad, {}, aliyun_fake.sms_report(sent))


def test_masking() -> None:
    assert mask("+8613812348000") == "***8000"  # one rule: the last four only (notifier.logs)
    assert "138" not in redact("invalid number +86 138 1234 8000") and "***8000" in redact(
        "to +8613812348000"
    )
