"""The voice channel against fake Twilio and Aliyun: TwiML, exact requests, "pressed 1" as a read,
call status reports, signature checks, error mapping and ambiguous call requests."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
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
)
from notifier.channels.voice import VoiceChannel
from notifier.settings import AliyunSettings, Settings, TwilioSettings
from tests.conftest import make_settings
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.twilio import FakeTwilio

CONTENT = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "防汛通知", "今晚八点全体到岗")
CALLBACKS = "https://notifier.example.org/v1/providers/voice/callbacks"
GATHER, STATUS = f"{CALLBACKS}?event=gather", f"{CALLBACKS}?event=status"
Fake = FakeAliyun | FakeTwilio


def settings_for(fake: Fake, **extra: Any) -> Settings:
    return make_settings(("", ""), **{**fake.settings_overrides(), **extra})


def call(delivery_id: int, target: Any, content: NoticeContent = CONTENT) -> Outgoing:
    return Outgoing(delivery_id, f"m{delivery_id}", target, content, 1)


@pytest.fixture(params=["aliyun", "twilio"])
def fake(request: pytest.FixtureRequest) -> Fake:
    return request.getfixturevalue(f"{request.param}_fake")  # type: ignore[no-any-return]


async def send_one(settings: Settings, target: Any) -> Any:
    channel = VoiceChannel(settings)
    try:
        [result] = await channel.send([call(1, target)])
    finally:
        await channel.close()
    return result


def parse_xml(text: str | bytes) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - our own TwiML, not untrusted input


# --- TwiML and requests (pure) --------------------------------------------------------------------


def test_twiml_reads_the_notice_twice_listening_for_1() -> None:
    twiml = twilio.call_twiml("防汛通知", "今晚八点\n全体到岗", GATHER)
    gather = (
        f'<Gather numDigits="1" action="{GATHER}" method="POST">'
        '<Say language="zh-CN">防汛通知。 今晚八点 全体到岗。 Press 1 to confirm.</Say></Gather>'
    )
    assert twiml == f'<Response>{gather}{gather}<Say language="zh-CN">Goodbye.</Say></Response>'


def test_twiml_escapes_the_notice_text() -> None:
    twiml = twilio.call_twiml('<Hangup/> & "x"', "</Say><Dial>+1900</Dial>", GATHER + "&lang=zh")
    root = parse_xml(twiml)
    assert [child.tag for child in root] == ["Gather", "Gather", "Say"]
    assert root[0].get("action") == GATHER + "&lang=zh"
    say = root[0][0]
    assert say.text == '<Hangup/> & "x". </Say><Dial>+1900</Dial>. Press 1 to confirm.'
    assert root.find(".//Dial") is None and root.find(".//Hangup") is None


def test_twiml_stays_under_twilios_4000_characters() -> None:
    for body in ["长" * 10_000, "&<>" * 5_000]:
        twiml = twilio.call_twiml("标题" * 200, body, GATHER)
        assert len(twiml) <= twilio.TWIML_MAX_CHARS
        assert "…" in parse_xml(twiml)[0][0].text  # type: ignore[operator]


def test_twilio_call_request_is_exact() -> None:
    settings = TwilioSettings(account_sid="AC123", auth_token="tok", voice_from="+15005550007")
    url, headers, body = twilio.build_call_request(settings, "+8613800138000", "<Response/>", STATUS)
    assert url == "https://api.twilio.com/2010-04-01/Accounts/AC123/Calls.json"
    assert headers["authorization"] == "Basic QUMxMjM6dG9r"
    assert parse_qsl(body.decode()) == [
        ("To", "+8613800138000"),
        ("From", "+15005550007"),
        ("Twiml", "<Response/>"),
        ("StatusCallback", STATUS),
        ("StatusCallbackEvent", "completed"),
        ("StatusCallbackMethod", "POST"),
    ]


def test_aliyun_tts_call_request_is_exact() -> None:
    settings = AliyunSettings(voice_show_number="057188773344", voice_tts_code="TTS_10001")
    params = aliyun.tts_call_params(settings, "+8613800138000", "防汛", "全体到岗", "7")
    assert params == {
        "CalledShowNumber": "057188773344",
        "CalledNumber": "13800138000",
        "TtsCode": "TTS_10001",
        "TtsParam": '{"title":"防汛","content":"全体到岗"}',
        "OutId": "7",
    }
    url, _, body = aliyun.build_rpc_request(
        "https://dyvmsapi.aliyuncs.com",
        "testId",
        "testSecret",
        "SingleCallByTts",
        params,
        1_700_000_000,
        "n-1",
    )
    form = dict(parse_qsl(body.decode()))
    assert url == "https://dyvmsapi.aliyuncs.com/" and form["Action"] == "SingleCallByTts"
    assert form["Version"] == "2017-05-25" and form["Signature"] == aliyun.sign("testSecret", form)


# --- targets and capabilities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [None, "", "13800138000", "+86-138-0013-8000", "+0086138", ["+8613800138000"]]
)
def test_numbers_must_be_strict_e164(fake: Fake, bad: Any) -> None:
    with pytest.raises(InvalidTarget) as info:
        VoiceChannel(settings_for(fake)).validate_target(bad)
    assert info.value.field == "target"


def test_aliyun_calls_mainland_numbers_only(aliyun_fake: FakeAliyun, twilio_fake: FakeTwilio) -> None:
    with pytest.raises(InvalidTarget) as info:
        VoiceChannel(settings_for(aliyun_fake)).validate_target("+14155550123")
    assert info.value.field == "target"
    assert VoiceChannel(settings_for(twilio_fake)).validate_target("+14155550123") == "+14155550123"


def test_capabilities_tell_the_truth(aliyun_fake: FakeAliyun, twilio_fake: FakeTwilio) -> None:
    by_twilio = VoiceChannel(settings_for(twilio_fake, voice_rate_per_second=3.0)).capabilities
    by_aliyun = VoiceChannel(settings_for(aliyun_fake)).capabilities
    for caps in (by_twilio, by_aliyun):
        assert caps.resend_when_ambiguous is False and caps.supports_delivery_reports is True
        assert caps.circuit_breaker is True
    assert by_twilio.rate_per_second == 3.0
    assert by_twilio.supports_read_confirmation is True  # press 1
    assert by_aliyun.supports_read_confirmation is False  # SingleCallByTts collects no key press


# --- against the fakes ----------------------------------------------------------------------------


async def test_places_calls_and_returns_the_call_id(fake: Fake) -> None:
    channel = VoiceChannel(settings_for(fake))
    try:
        results = await channel.send([call(i, fake.good_target()) for i in (1, 2, 3)])
    finally:
        await channel.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 3, results
    assert len(fake.messages) == 3 and fake.rejected == 0
    if isinstance(fake, FakeTwilio):
        assert {r.provider_ref for r in results} == {c.sid for c in fake.calls}
        placed = fake.calls[0].params
        # Both callback URLs name our delivery (call 1), so a report settles it even without the sid.
        assert placed["To"] == fake.good_target() and placed["StatusCallback"] == STATUS + "&delivery=1"
        assert placed["Twiml"] == twilio.call_twiml(CONTENT.title, CONTENT.body, GATHER + "&delivery=1")
    else:
        assert {r.provider_ref for r in results} == {m.ref for m in fake.messages}
        assert {m.action for m in fake.messages} == {"SingleCallByTts"}
        assert json.loads(fake.messages[0].params["TtsParam"]) == {
            "title": "防汛通知",
            "content": "今晚八点全体到岗",
        }


async def test_a_wrong_secret_is_rejected_by_the_fake(fake: Fake) -> None:
    if isinstance(fake, FakeAliyun):
        wrong = {"aliyun": {**fake.settings_overrides()["aliyun"], "access_key_secret": "wrong"}}
    else:
        wrong = {"twilio": {**fake.settings_overrides()["twilio"], "auth_token": "wrong"}}
    result = await send_one(settings_for(fake, **wrong), fake.good_target())
    assert (result.outcome, result.disable_contact) == (Outcome.FAILED, False)
    assert fake.rejected == 1 and fake.messages == []


@pytest.mark.parametrize(
    ("answer", "outcome", "disable"),
    [
        (21211, Outcome.FAILED, True),
        (20429, Outcome.RETRY, False),
        (503, Outcome.RETRY, False),
        (401, Outcome.FAILED, False),
    ],
)
async def test_twilio_call_errors(
    twilio_fake: FakeTwilio, answer: int, outcome: Outcome, disable: bool
) -> None:
    twilio_fake.responses[twilio_fake.good_target()] = [answer]
    result = await send_one(settings_for(twilio_fake), twilio_fake.good_target())
    assert (result.outcome, result.disable_contact) == (outcome, disable)


@pytest.mark.parametrize(
    ("answer", "outcome", "disable"),
    [
        ("isv.MOBILE_NUMBER_ILLEGAL", Outcome.FAILED, True),
        ("isv.BUSINESS_LIMIT_CONTROL", Outcome.RETRY, False),
        ("isv.TTS_TEMPLATE_ILLEGAL", Outcome.FAILED, False),
        (500, Outcome.RETRY, False),
    ],
)
async def test_aliyun_call_errors(
    aliyun_fake: FakeAliyun, answer: int | str, outcome: Outcome, disable: bool
) -> None:
    aliyun_fake.responses[aliyun_fake.good_target()] = [answer]
    result = await send_one(settings_for(aliyun_fake), aliyun_fake.good_target())
    assert (result.outcome, result.disable_contact) == (outcome, disable)


async def test_a_dropped_call_request_is_unknown_never_repeated(fake: Fake) -> None:
    fake.responses[fake.good_target()] = ["drop"]
    result = await send_one(settings_for(fake), fake.good_target())
    assert result.outcome is Outcome.UNKNOWN and result.retry_after is None
    assert len(fake.dropped) == 1 and fake.messages == []


# --- Twilio callbacks -----------------------------------------------------------------------------


def test_pressing_1_is_one_read(twilio_fake: FakeTwilio) -> None:
    channel = VoiceChannel(settings_for(twilio_fake))
    params = {
        "CallSid": "CA42",
        "Digits": "1",
        "CallStatus": "in-progress",
        "AccountSid": twilio_fake.account_sid,
    }
    headers, body = twilio_fake.signed_callback(GATHER, params)
    headers = {k.lower(): v for k, v in headers.items()}  # as the callback endpoint passes them
    reply = channel.handle_callback(GATHER, headers, body)
    assert reply.updates == [StatusUpdate("CA42", "delivered", read=True)]
    assert reply.status == 200 and reply.content_type == "text/xml"
    assert parse_xml(reply.body).find("Say") is not None and parse_xml(reply.body).find("Gather") is None


@pytest.mark.parametrize("digits", ["2", "9", "*", ""])
def test_other_keys_reprompt_without_a_read(twilio_fake: FakeTwilio, digits: str) -> None:
    channel = VoiceChannel(settings_for(twilio_fake))
    headers, body = twilio_fake.signed_callback(GATHER, {"CallSid": "CA42", "Digits": digits})
    reply = channel.handle_callback(GATHER, headers, body)
    assert reply.updates == [] and reply.content_type == "text/xml"
    gather = parse_xml(reply.body).find("Gather")
    assert gather is not None and gather.get("action") == GATHER


@pytest.mark.parametrize(
    ("status", "updates"),
    [
        ("completed", [StatusUpdate("CA42", "delivered")]),
        ("no-answer", [StatusUpdate("CA42", "failed", error="no-answer")]),
        ("busy", [StatusUpdate("CA42", "failed", error="busy")]),
        ("failed", [StatusUpdate("CA42", "failed", error="failed")]),
        ("canceled", [StatusUpdate("CA42", "failed", error="canceled")]),
        ("ringing", []),
    ],
)
def test_call_status_callbacks(twilio_fake: FakeTwilio, status: str, updates: list[StatusUpdate]) -> None:
    channel = VoiceChannel(settings_for(twilio_fake))
    headers, body = twilio_fake.signed_callback(STATUS, {"CallSid": "CA42", "CallStatus": status})
    assert channel.handle_callback(STATUS, headers, body).updates == updates


def test_tampered_or_replayed_callbacks_are_refused(twilio_fake: FakeTwilio) -> None:
    channel = VoiceChannel(settings_for(twilio_fake))
    headers, body = twilio_fake.signed_callback(GATHER, {"CallSid": "CA42", "Digits": "2"})
    status_headers, status_body = twilio_fake.signed_callback(STATUS, {"CallSid": "CA42", "Digits": "1"})
    attempts = [
        (GATHER, headers, body.replace(b"Digits=2", b"Digits=1")),  # a changed key press
        (GATHER, {**headers, "X-Twilio-Signature": "x" + headers["X-Twilio-Signature"]}, body),
        (GATHER, status_headers, status_body),  # signed for ?event=status, replayed at ?event=gather
        (GATHER, {}, body),
    ]
    for url, h, b in attempts:
        with pytest.raises(InvalidSignature):
            channel.handle_callback(url, h, b)


def test_an_unknown_event_is_a_bad_request(twilio_fake: FakeTwilio) -> None:
    channel = VoiceChannel(settings_for(twilio_fake))
    url = f"{CALLBACKS}?event=other"
    headers, body = twilio_fake.signed_callback(url, {"CallSid": "CA42"})
    reply = channel.handle_callback(url, headers, body)
    assert reply.status == 400 and reply.updates == []


# --- Aliyun call reports --------------------------------------------------------------------------


async def test_aliyun_call_report(aliyun_fake: FakeAliyun) -> None:
    settings = settings_for(aliyun_fake)
    channel = VoiceChannel(settings)
    try:
        [result] = await channel.send([call(1, aliyun_fake.good_target())])
    finally:
        await channel.close()
    placed = aliyun_fake.messages[0]
    assert result.provider_ref == placed.ref
    url = aliyun.report_url(settings.effective_public_url, settings.link_secret.get_secret_value(), "voice")
    cases = {
        "200000": [StatusUpdate(placed.ref, "delivered", delivery_id=1)],
        "200001": [StatusUpdate(placed.ref, "delivered", delivery_id=1)],
        "200002": [StatusUpdate(placed.ref, "failed", error="200002 busy", delivery_id=1)],
        "200003": [StatusUpdate(placed.ref, "failed", error="200003 no answer", delivery_id=1)],
        "200005": [StatusUpdate(placed.ref, "failed", error="200005 unreachable (rejected)", delivery_id=1)],
        "200102": [],  # answered, in progress: the final report follows
    }
    for code, updates in cases.items():
        reply = channel.handle_callback(url, {}, aliyun_fake.voice_report(placed, code))
        assert (reply.updates, reply.status, json.loads(reply.body)["code"]) == (updates, 200, 0)
    sms_url = aliyun.report_url(settings.effective_public_url, settings.link_secret.get_secret_value(), "sms")
    for bad in [url.split("?")[0], sms_url, url.replace("token=", "token=A")]:
        with pytest.raises(InvalidSignature):
            channel.handle_callback(bad, {}, aliyun_fake.voice_report(placed))
