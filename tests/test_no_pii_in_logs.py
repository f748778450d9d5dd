"""No PII or secret in the logs, proven (issue 14): a representative day -- members and contacts
created through the API, a DING on every channel with an escalation step, provider failures
(an invalid number, an unregistered device, a webhook receiver failing), provider callbacks (a
signed status report, a forged one, a voice key press), a read link opened and a forged one --
with every logger at DEBUG, and then not one captured record (message, arguments, exception
text) may contain a phone number, device token, webhook URL secret, API token, provider
credential, link token, our own secrets or the message body.

The API runs without aiohttp's access log, as ``notifier serve`` does (``access_log=None``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.settings import Settings
from tests.conftest import (
    ADMIN_TOKEN,
    WEBHOOK_SECRET,
    advance_clock,
    auth,
    make_settings,
    running_worker,
    wait_until,
)
from tests.fakes.apns import ApnsFake
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.fcm import FakeFcm
from tests.fakes.jpush import FakeJPush
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.fakes.webpush import FakePushService

BODY = "Muster at the east gate, bring the ledger 7Q."
TITLE = "Drill 42"
OWN_SECRET = "whsec_bWVtYmVyLW93bi13ZWJob29rLXNlY3JldC0wMQ=="
PHONES = {"m1": "+14155550101", "m2": "+14155550102", "m3": "+14155550103", "bad": "+14155550199"}


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    fake = await FakeFcm().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def pushes() -> AsyncIterator[tuple[ApnsFake, FakeJPush, FakePushService]]:
    """The other push providers the tests register: APNs, JPush, a browser push service."""
    apns, jpush, webpush = (
        await ApnsFake().start(),
        await FakeJPush().start(),
        await FakePushService().start(),
    )
    yield apns, jpush, webpush
    await apns.stop()
    await jpush.stop()
    await webpush.stop()


def formatted(record: logging.LogRecord) -> str:
    text = logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)
    return text + repr(record.args) + repr(getattr(record, "__dict__", {}))


async def test_a_day_of_sends_failures_and_callbacks_logs_no_pii_or_secret(
    server_urls: tuple[str, str],
    db: asyncpg.Connection,
    twilio_fake: FakeTwilio,
    fcm: FakeFcm,
    receiver: WebhookReceiver,
    pushes: tuple[ApnsFake, FakeJPush, FakePushService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    apns, jpush, webpush = pushes
    settings: Settings = make_settings(
        server_urls,
        **twilio_fake.settings_overrides(),
        **fcm.settings_overrides(),
        **apns.settings_overrides(),
        **jpush.settings_overrides(),
        **webpush.settings_overrides(),
        webhook_max_attempts=3,
    )
    tokens = {m: fcm.good_target() for m in ("m1", "m2", "m3", "bad")}
    devices = {m: apns.good_target()[:-2] + f"{i:02x}" for i, m in enumerate(PHONES)}
    registrations = {m: jpush.good_target() for m in PHONES}
    browsers = {m: webpush.good_target() for m in PHONES}
    secrets_seen: list[str] = [
        ADMIN_TOKEN,
        WEBHOOK_SECRET,
        WEBHOOK_SECRET.removeprefix("whsec_"),
        OWN_SECRET,
        OWN_SECRET.removeprefix("whsec_"),
        settings.link_secret.get_secret_value(),
        twilio_fake.auth_token,
        *tokens.values(),
        *devices.values(),
        *registrations.values(),
        jpush.master_secret,
        *(b["endpoint"].rsplit("/", 1)[1] for b in browsers.values()),
        *(b["keys"][k] for b in browsers.values() for k in ("p256dh", "auth")),
        *PHONES.values(),
        *(p.removeprefix("+") for p in PHONES.values()),
        BODY,
    ]
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server(access_log=None)  # as `notifier serve` runs it
    async with (
        TestClient(server) as api,
        running_worker(settings),
    ):

        async def call(
            method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN, status: int = 200
        ) -> Any:
            resp = await api.request(method, path, json=body, headers=auth(token))
            assert resp.status == status, (path, resp.status, await resp.text())
            return await resp.json() if resp.content_type.endswith("json") else None

        await call("PUT", "/v1/units/u", {"name": "U"}, status=201)
        for m in PHONES:
            await call("PUT", f"/v1/members/{m}", {"name": f"Officer {m}", "units": ["u"]}, status=201)
            for channel, target in (
                ("sms", PHONES[m]),
                ("voice", PHONES[m]),
                ("fcm", tokens[m]),
                ("apns", devices[m]),
                ("jpush", registrations[m]),
                ("webpush", browsers[m]),
                (
                    "webhook",
                    {"url": f"{receiver.url}/{m}", "secret": OWN_SECRET} if m == "m3" else receiver.url,
                ),
            ):
                await call(
                    "POST", f"/v1/members/{m}/contacts", {"channel": channel, "target": target}, status=201
                )
        # Refused contacts: the problem names the field, the log must not hold the value.
        await call("POST", "/v1/members/m1/contacts", {"channel": "sms", "target": "+1 415 not"}, status=422)
        key = await call(
            "POST", "/v1/api-keys", {"name": "sec", "role": "service", "unit_id": "u"}, status=201
        )
        secrets_seen.append(key["token"])
        await call("GET", "/v1/units/u", token=key["token"])
        await call("GET", "/v1/units/u", token="ntf_" + "x" * 43, status=401)  # a wrong token
        secrets_seen.append("ntf_" + "x" * 43)

        # Failures the providers will answer.
        twilio_fake.responses[PHONES["bad"]] = [21211, 21211]  # not a valid number: sms and voice
        fcm.responses[tokens["bad"]] = ["UNREGISTERED"]
        receiver.responses["bad"] = [Reply(500), Reply(500), Reply(500)]
        receiver.responses["m2"] = [Reply(503, {"Retry-After": "1"})]  # then accepted

        policy = {"name": "p", "steps": [{"after": "PT5M", "remind": ["sms"]}]}
        await call("POST", "/v1/escalation-policies", policy, status=201)
        ding = {
            "kind": "ding",
            "title": TITLE,
            "body": BODY,
            "audience": {"units": ["u"]},
            "channels": ["inapp", "fcm", "apns", "jpush", "webpush", "webhook", "sms", "voice"],
            "escalation": "p",
        }
        nid = (await call("POST", "/v1/notices", ding, token=key["token"], status=202))["id"]

        async def settled() -> bool:
            pending = await db.fetchval(
                "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state IN ('queued', 'sending')", nid
            )
            rows = await db.fetchval("SELECT count(*) FROM deliveries WHERE notice_id = $1", nid)
            return bool(pending == 0 and rows >= 8 * len(PHONES))

        await wait_until(settled, within=40)
        failed = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state = 'failed'", nid
        )
        assert failed >= 4  # every provider refused the bad member once

        # Callbacks: a signed SMS status report, the same forged, a voice key press.
        public = settings.effective_public_url
        sms = next(m for m in twilio_fake.sms if m.to == PHONES["m1"])
        callback = urlsplit(sms.params["StatusCallback"])
        report = {"MessageSid": sms.sid, "MessageStatus": "delivered", "AccountSid": twilio_fake.account_sid}
        headers, body = twilio_fake.signed_callback(sms.params["StatusCallback"], report)
        path = f"{callback.path}?{callback.query}"
        assert (await api.post(path, data=body, headers=headers)).status == 200
        headers["X-Twilio-Signature"] = "AAAA" + headers["X-Twilio-Signature"][4:]
        assert (await api.post(path, data=body, headers=headers)).status == 403
        voice = next(m for m in twilio_fake.calls if m.to == PHONES["m2"])
        gather = "/v1/providers/voice/callbacks?event=gather"
        pressed = {
            "CallSid": voice.sid,
            "AccountSid": twilio_fake.account_sid,
            "Digits": "1",
            "To": PHONES["m2"],
        }
        headers, body = twilio_fake.signed_callback(public + gather, pressed)
        assert (await api.post(gather, data=body, headers=headers)).status == 200

        # A read link from an SMS, opened; a forged one.
        link = next(
            w
            for w in next(m for m in twilio_fake.sms if m.to == PHONES["m3"]).params["Body"].split()
            if "/r/" in w
        )
        link_path = urlsplit(link).path
        secrets_seen.append(link_path.rsplit("/", 1)[1])
        assert (await api.get(link_path)).status == 200
        assert (await api.get(link_path[:-3] + "AAA")).status == 403

        # The escalation step: an SMS reminder to whoever has not read.
        sent_before = len(twilio_fake.sms)
        await advance_clock(db, 301)

        async def reminded() -> bool:
            return len(twilio_fake.sms) > sent_before

        await wait_until(reminded, within=20)
        await wait_until(settled, within=20)
        resp = await api.get(f"/v1/notices/{nid}/recipients", headers=auth())
        assert resp.status == 200

    assert len(caplog.records) > 20  # the day was logged (the worker, the failures, the callbacks)
    leaks = [
        (secret, formatted(r))
        for r in caplog.records
        for secret in secrets_seen
        if secret and secret in formatted(r)
    ]
    assert not leaks, leaks[:5]
    # No phone number in any shape (the numbers used all start 1415555); a masked one keeps the
    # last four digits only (notifier.logs.mask: "***0199", never "+14155****0199").
    shaped = [
        formatted(r) for r in caplog.records if re.search(r"1\D?415\D?555\D?0\d{3}|\d\d\*+\d", formatted(r))
    ]
    assert any("***0199" in formatted(r) for r in caplog.records)  # the bad number's refusal, masked
    assert not shaped, shaped[:5]


EMAILS = {
    "d1": "officer.d1@police.example.org",
    "d2": "officer.d2@police.example.org",
    "sec": "secretary.u@police.example.org",
}
DING_PHONES = {"d1": "+8613900000101", "d2": "+8613900000102", "sec": "+8613900000103"}


@pytest.fixture
async def dingtalk() -> AsyncIterator[FakeDingTalk]:
    fake = await FakeDingTalk().start()
    yield fake
    await fake.stop()


async def test_dingtalk_channels_event_push_escalation_and_console_sign_in_log_no_pii_or_secret(
    server_urls: tuple[str, str],
    db: asyncpg.Connection,
    dingtalk: FakeDingTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The DingTalk half of the day, at DEBUG: a DING on ``dingtalk`` (robot messages, so reads
    come back by the encrypted event push), ``dingtalk_robot`` (the unit's group) and
    ``dingtalk_ding`` (in the app, then by phone as the escalation step), read events pushed
    and a forged push refused, and a secretary signing in to the console (a console link made,
    followed, pages shown). Not one record may hold a phone number (in any shape, masked only
    as ``***`` + the last four), an e-mail address, a DingTalk secret, AES key, token or robot
    webhook secret, a console link or session token, or the message body."""
    caplog.set_level(logging.DEBUG)
    settings: Settings = make_settings(server_urls, **dingtalk.settings_overrides(robot_messages=True))
    robot = dingtalk.new_robot()
    secrets_seen: list[str] = [
        ADMIN_TOKEN,
        settings.link_secret.get_secret_value(),
        dingtalk.app_secret,
        dingtalk.callback_token,
        dingtalk.callback_aes_key,
        robot["secret"],
        robot["webhook"].split("access_token=")[1],
        *EMAILS.values(),
        *(e.split("@")[0] for e in EMAILS.values()),
        *DING_PHONES.values(),
        *(p.removeprefix("+") for p in DING_PHONES.values()),
        *(p[-11:] for p in DING_PHONES.values()),  # the national number
        BODY,
    ]
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server(access_log=None)
    async with TestClient(server) as api, running_worker(settings):

        async def call(
            method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN, status: int = 200
        ) -> Any:
            resp = await api.request(method, path, json=body, headers=auth(token))
            assert resp.status == status, (path, resp.status, await resp.text())
            return await resp.json() if resp.content_type.endswith("json") else None

        await call("PUT", "/v1/units/u", {"name": "U"}, status=201)
        for m in EMAILS:
            member = {"name": f"Officer {m}", "units": ["u"], "phone": DING_PHONES[m], "email": EMAILS[m]}
            await call("PUT", f"/v1/members/{m}", member, status=201)
            target = {"channel": "dingtalk", "target": "ding" + m}
            await call("POST", f"/v1/members/{m}/contacts", target, status=201)
        await call("PUT", "/v1/units/u", {"name": "U", "secretaries": ["sec"]})
        await call("PUT", "/v1/units/u/contacts", {"items": [{"channel": "dingtalk_robot", "target": robot}]})
        key = await call(
            "POST", "/v1/api-keys", {"name": "desk", "role": "service", "unit_id": "u"}, status=201
        )
        secrets_seen.append(key["token"])
        ding = {
            "kind": "ding",
            "title": TITLE,
            "body": BODY,
            "audience": {"units": ["u"]},
            "channels": ["inapp", "dingtalk", "dingtalk_robot", "dingtalk_ding"],
            "escalation": {"steps": [{"after": "PT5M", "remind": ["dingtalk_ding"], "mode": "phone"}]},
        }
        nid = (await call("POST", "/v1/notices", ding, token=key["token"], status=202))["id"]

        async def settled() -> bool:
            pending = await db.fetchval(
                "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state IN ('queued', 'sending')", nid
            )
            rows = await db.fetchval("SELECT count(*) FROM deliveries WHERE notice_id = $1", nid)
            return bool(pending == 0 and rows >= 3 * len(EMAILS))

        await wait_until(settled, within=40)
        assert dingtalk.robot_sends and dingtalk.dings

        async def posted() -> bool:
            return bool(dingtalk.posts_to(robot))

        await wait_until(posted, within=20)  # the unit's group post

        # The event push: a read, replayed, and a forged push.
        callbacks = str(server.make_url("/v1/providers/dingtalk/callbacks"))
        dingtalk.mark_read({"dingd1"})
        assert await dingtalk.push_reads(callbacks) == 1
        query, body = dingtalk.envelope({"EventType": "check_url"}, token="not-the-token")
        assert (await api.post("/v1/providers/dingtalk/callbacks", params=query, data=body)).status == 403

        # The escalation step: the unread are DINGed by phone.
        await advance_clock(db, 301)

        async def phoned() -> bool:
            return len(dingtalk.dinged(remind_type=3)) == 2

        await wait_until(phoned, within=20)

        # The secretary signs in to the console and looks at the notice.
        link = (await call("POST", "/v1/console-links", {"member_id": "sec"}, status=201))["url"]
        path = "/console/in/" + link.rsplit("/", 1)[1]
        secrets_seen.append(link.rsplit("/", 1)[1])
        html = await (await api.get(path)).text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf, html[:300]
        resp = await api.post(path, data={"csrf": csrf.group(1)}, allow_redirects=False)
        assert resp.status == 303, await resp.text()
        secrets_seen += [c.value for c in api.session.cookie_jar]
        for page in (resp.headers["Location"], "/console", f"/console/notices/{nid}"):
            assert (await api.get(page)).status == 200, page

    assert len(caplog.records) > 10
    leaks = [
        (secret, formatted(r))
        for r in caplog.records
        for secret in secrets_seen
        if secret and secret in formatted(r)
    ]
    assert not leaks, leaks[:5]
    # No phone number in any shape (the numbers used are +86 139 0000 01xx); a masked one keeps
    # the last four digits only (notifier.logs.mask: "***0101", never "+86139****0101").
    shaped = [
        formatted(r) for r in caplog.records if re.search(r"139\D?0000\D?01\d\d|\d\d\*+\d", formatted(r))
    ]
    assert not shaped, shaped[:5]
    assert not [formatted(r) for r in caplog.records if re.search(r"[\w.]+@[\w-]+\.\w", formatted(r))]
