"""The webhook channel: Standard Webhooks signing, error mapping, retries and SSRF refusal."""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.channels.base import InvalidTarget, NoticeContent, Outcome, Outgoing
from notifier.channels.webhook import WebhookChannel, build_request, decode_secret, sign
from notifier.clock import FrozenClock
from notifier.settings import Settings
from tests.conftest import WEBHOOK_SECRET, make_settings, running_worker, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org, post

CONTENT = NoticeContent("6f1c1b7e-0000-4000-8000-000000000001", "ding", "标题", "body")


def test_signature_is_standard_webhooks() -> None:
    # Fixed vector: HMAC-SHA256 over "id.timestamp.body" with the base64-decoded secret.
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_build_request_is_pure_and_uses_per_contact_secret() -> None:
    item = Outgoing(7, "m1", {"url": "https://example.org/h", "secret": WEBHOOK_SECRET}, CONTENT, 1)
    url, headers, body = build_request(item, b"x" * 32, 1_700_000_000)
    assert url == "https://example.org/h"
    assert headers["webhook-id"] == "msg_7" and headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == sign(decode_secret(WEBHOOK_SECRET), "msg_7", 1_700_000_000, body)
    assert json.loads(body) == {
        "notice_id": CONTENT.notice_id,
        "member_id": "m1",
        "kind": "ding",
        "title": "标题",
        "body": "body",
    }


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("ftp://example.org/x", "target.url"),
        ("https://user:pw@example.org/x", "target.url"),
        ("/relative", "target.url"),
        ({"url": "https://example.org", "secret": "nope"}, "target.secret"),
        ({"url": "https://example.org", "extra": 1}, "target.extra"),
        ("http://10.0.0.1/hook", "target.url"),
        ("http://127.0.0.1/hook", "target.url"),
        ("http://[::1]/hook", "target.url"),
        ("http://169.254.169.254/latest/meta-data", "target.url"),
        ("http://[64:ff9b::a00:5]/hook", "target.url"),  # NAT64 to 10.0.0.5
        ("http://[2002:7f00:1::]/hook", "target.url"),  # 6to4 of 127.0.0.1
        ("http://[fec0::1]/hook", "target.url"),  # site-local
        ("http://[::7f00:1]/hook", "target.url"),  # IPv4-compatible loopback
    ],
)
def test_invalid_or_private_targets_are_refused(target: Any, field: str) -> None:
    channel = WebhookChannel(Settings(allow_private_targets=False))
    with pytest.raises(InvalidTarget) as info:
        channel.validate_target(target)
    assert info.value.field == field


async def test_private_address_refused_at_send_time_even_behind_a_name(receiver: WebhookReceiver) -> None:
    channel = WebhookChannel(Settings(allow_private_targets=False))
    try:
        # "localhost" passes validation (a name) but resolves to loopback: refused, not sent.
        url = receiver.url.replace("127.0.0.1", "localhost")
        results = await channel.send([Outgoing(1, "m1", {"url": url}, CONTENT, 1)])
    finally:
        await channel.close()
    assert results[0].outcome is Outcome.FAILED
    assert "non-public" in (results[0].error or "")
    assert receiver.messages == [] and receiver.rejected == 0


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (400, Outcome.FAILED),
        (410, Outcome.FAILED),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
async def test_status_mapping(
    receiver: WebhookReceiver, settings: Settings, status: int, outcome: Outcome
) -> None:
    receiver.responses["m1"] = [status]
    receiver.headers_for[429] = {"Retry-After": "7"}
    clock = FrozenClock(1_800_000_000)
    channel = WebhookChannel(settings, clock=clock)
    receiver.tolerance_seconds = 10**10  # the frozen clock is far from the receiver's
    try:
        [result] = await channel.send([Outgoing(1, "m1", {"url": receiver.url}, CONTENT, 1)])
    finally:
        await channel.close()
    assert result.outcome is outcome, result
    if status == 429:
        assert result.retry_after == 7.0


async def test_credentials_in_the_url_go_as_basic_auth_and_are_never_logged(
    receiver: WebhookReceiver, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver behind HTTP Basic authorization, its credentials in the URL (percent-encoded):
    sent in the Authorization header as aiohttp sent them; wrong ones are the receiver's 401. No
    log line and no result holds the password, in any form."""
    caplog.set_level(logging.DEBUG)
    receiver.basic = ("hook-user", "pä ss:w0rd")
    good = receiver.url.replace("http://", "http://hook-user:p%C3%A4%20ss%3Aw0rd@")
    bad = receiver.url.replace("http://", "http://hook-user:Wrong-Pass-77@")
    channel = WebhookChannel(settings)
    try:
        results = await channel.send(
            [Outgoing(1, "m1", {"url": good}, CONTENT, 1), Outgoing(2, "m2", {"url": bad}, CONTENT, 1)]
        )
    finally:
        await channel.close()
    outcomes = [(r.outcome, r.error) for r in results]
    assert outcomes == [(Outcome.DELIVERED, None), (Outcome.FAILED, "HTTP 401")]
    assert receiver.per_member() == {"m1": 1} and receiver.unauthorised == 1
    for secret in ("pä ss:w0rd", "p%C3%A4%20ss%3Aw0rd", "Wrong-Pass-77", "hook-user:"):
        assert secret not in caplog.text


async def test_unreachable_receiver_is_transient(settings: Settings) -> None:
    channel = WebhookChannel(settings)
    try:
        [result] = await channel.send([Outgoing(1, "m1", {"url": "http://127.0.0.1:9/x"}, CONTENT, 1)])
    finally:
        await channel.close()
    assert result.outcome is Outcome.RETRY


async def _deliveries(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT member_id, state, attempts, error FROM deliveries ORDER BY member_id"))


async def test_retries_then_delivers_with_a_stable_webhook_id(
    client: TestClient[Any, Any], worker: None, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    await build_org(client, groups=3, members=3)
    for m in ("m00000", "m00001", "m00002"):
        await post(client, f"/v1/members/{m}/contacts", {"channel": "webhook", "target": receiver.url})
    receiver.responses["m00000"] = [503, 503]  # then 200
    receiver.responses["m00001"] = [404]  # permanent
    receiver.responses["m00002"] = [500] * 50  # never recovers
    await post(
        client,
        "/v1/notices",
        {"kind": "notice", "title": "t", "body": "b", "audience": {"units": ["c"]}, "channels": ["webhook"]},
        status=202,
    )

    async def settled() -> bool:
        rows = await _deliveries(db)  # one read: two could straddle the fan-out
        return len(rows) == 3 and all(r["state"] in ("delivered", "failed") for r in rows)

    await wait_until(settled, within=60)
    rows = {r["member_id"]: r for r in await _deliveries(db)}
    assert (rows["m00000"]["state"], rows["m00000"]["attempts"]) == ("delivered", 3)
    assert (rows["m00001"]["state"], rows["m00001"]["attempts"], rows["m00001"]["error"]) == (
        "failed",
        1,
        "HTTP 404",
    )
    max_attempts = make_settings(("", "")).webhook_max_attempts
    assert (rows["m00002"]["state"], rows["m00002"]["attempts"]) == ("failed", max_attempts)
    assert f"gave up after {max_attempts} attempts" in rows["m00002"]["error"]
    assert receiver.per_member() == {"m00000": 1}
    assert len(receiver.responses["m00002"]) == 50 - max_attempts  # exactly max_attempts requests made
    counts = await db.fetchrow(
        "SELECT sum(delivered) AS d, sum(failed) AS f, sum(queued) AS q FROM notice_counts"
    )
    assert counts is not None and (counts["d"], counts["f"], counts["q"]) == (1, 2, 0)


async def test_retry_after_is_honoured(
    client: TestClient[Any, Any], receiver: WebhookReceiver, db: asyncpg.Connection, settings: Settings
) -> None:
    # Up to the retry cap (the test settings' 0.5 s would hide it): the provider's wait wins.
    async with running_worker(settings.model_copy(update={"retry_max_seconds": 60.0})):
        await _retry_after_is_honoured(client, receiver, db)


async def _retry_after_is_honoured(
    client: TestClient[Any, Any], receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    await build_org(client, groups=1, members=1)
    await post(client, "/v1/members/m00000/contacts", {"channel": "webhook", "target": receiver.url})
    receiver.responses["m00000"] = [429]
    receiver.headers_for[429] = {"Retry-After": "30"}
    await post(
        client,
        "/v1/notices",
        {
            "kind": "notice",
            "title": "t",
            "body": "b",
            "audience": {"members": ["m00000"]},
            "channels": ["webhook"],
        },
        status=202,
    )

    async def retried_later() -> bool:
        row = await db.fetchrow(
            "SELECT state, attempts, next_attempt_at - updated_at AS wait FROM deliveries"
        )
        return row is not None and row["attempts"] == 1 and row["state"] == "queued"

    await wait_until(retried_later)
    wait = await db.fetchval("SELECT extract(epoch FROM next_attempt_at - updated_at) FROM deliveries")
    assert 30 <= float(wait) <= 31
    assert receiver.messages == []


def test_the_body_built_once_per_notice_is_the_json_of_the_whole_message() -> None:
    """The notice's parts are serialised once and shared by the batch; the bytes (which are
    signed) are exactly the compact JSON of the whole message, escapes and non-ASCII included."""
    import json as _json

    from notifier.channels.base import NoticeContent, Outgoing
    from notifier.channels.webhook import build_body

    notice = NoticeContent("n-1", "ding", 'Fire "drill" 火警 \\ \u2028', "line\nbreak\t\x00")
    for member in ("m-1", 'm"2', "成员-3"):
        body = build_body(Outgoing(1, member, {"url": "http://x"}, notice, 1))
        want = {
            "notice_id": "n-1",
            "member_id": member,
            "kind": "ding",
            "title": notice.title,
            "body": notice.body,
        }
        assert body == _json.dumps(want, ensure_ascii=False, separators=(",", ":")).encode()
        assert _json.loads(body) == want
