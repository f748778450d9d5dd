"""Secrets rotation (issue 14): while ``*_previous`` holds the value being replaced, what was signed
with it still verifies -- read links already in members' SMS, Aliyun report URLs configured in
the console, receivers still holding the old webhook key -- and what is new is signed with the
current one. Without ``*_previous`` the old value is refused. An API key rotated to a new token
accepts the old one until the end of the window it was given, and not a moment longer."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from notifier.app import create_app
from notifier.channels import aliyun
from notifier.channels.base import NoticeContent, Outgoing
from notifier.channels.webhook import build_request, decode_secret
from notifier.links import make_token
from notifier.settings import Settings
from tests.conftest import WEBHOOK_SECRET, advance_clock, auth, make_settings, running_worker, wait_until
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org, post

OLD_LINK = "old-link-secret-0123456789abcdef"
NEW_LINK = "new-link-secret-fedcba9876543210"
NEW_WEBHOOK = "whsec_bmV3LXdlYmhvb2stc2lnbmluZy1rZXktMDI="


def rotating(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(
        update={"link_secret": SecretStr(NEW_LINK), "link_secret_previous": SecretStr(OLD_LINK), **extra}
    )


def finished(settings: Settings) -> Settings:
    return settings.model_copy(update={"link_secret": SecretStr(NEW_LINK), "link_secret_previous": None})


async def test_read_links_signed_with_the_previous_link_secret_work_until_the_rotation_ends(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings
) -> None:
    await build_org(client, groups=1, members=3)
    old = settings.model_copy(update={"link_secret": SecretStr(OLD_LINK)})
    async with running_worker(old):
        ding = {
            "kind": "ding",
            "title": "t",
            "body": "b",
            "audience": {"units": ["c"]},
            "channels": ["inapp"],
        }
        nid = (await post(client, "/v1/notices", ding, status=202))["id"]

        async def fanned_out() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", nid) == 3)

        await wait_until(fanned_out)
    expires = int(time.time()) + 3600
    sent_before = make_token(OLD_LINK.encode(), nid, "m00000", expires)  # in an SMS already
    sent_after = make_token(NEW_LINK.encode(), nid, "m00001", expires)
    forged = make_token(b"somebody-elses-secret-0123456789", nid, "m00002", expires)
    async with TestClient(TestServer(create_app(rotating(settings)), host="127.0.0.1")) as during:
        assert (await during.get(f"/r/{sent_before}")).status == 200
        assert (await during.get(f"/r/{sent_after}")).status == 200
        assert (await during.get(f"/r/{forged}")).status == 403
    read = await db.fetch(
        "SELECT member_id FROM recipients WHERE notice_id = $1 AND read_at IS NOT NULL", nid
    )
    assert sorted(r["member_id"] for r in read) == ["m00000", "m00001"]
    async with TestClient(TestServer(create_app(finished(settings)), host="127.0.0.1")) as after:
        assert (await after.get(f"/r/{sent_before}")).status == 403
        assert (await after.get(f"/r/{sent_after}")).status == 200


async def test_aliyun_report_urls_of_the_previous_link_secret_are_accepted_during_the_rotation(
    server_urls: tuple[str, str], db: asyncpg.Connection, aliyun_fake: FakeAliyun
) -> None:
    base = make_settings(server_urls, **aliyun_fake.settings_overrides())
    old_url = aliyun.report_url("http://x", OLD_LINK, "sms")  # what the Aliyun console still has
    path = "/v1/providers/sms/callbacks?" + old_url.partition("?")[2]
    for app_settings, status in ((rotating(base), 200), (finished(base), 403)):
        async with TestClient(TestServer(create_app(app_settings), host="127.0.0.1")) as api:
            resp = await api.post(path, data=b"[]", headers={"Content-Type": "application/json"})
            assert resp.status == status, await resp.text()
    # An echoed OutId made before the rotation still settles its delivery; a forged one never.
    echoed = aliyun.out_id(OLD_LINK, 42)
    assert aliyun.echoed_out_id((NEW_LINK, OLD_LINK), echoed) == 42
    assert aliyun.echoed_out_id((NEW_LINK,), echoed) is None
    assert aliyun.out_id(NEW_LINK, 42) != echoed


def test_webhooks_carry_a_signature_under_each_secret_while_the_webhook_secret_rotates(
    settings: Settings,
) -> None:
    during = settings.model_copy(
        update={
            "webhook_secret": SecretStr(NEW_WEBHOOK),
            "webhook_secret_previous": SecretStr(WEBHOOK_SECRET),
        }
    )
    after = settings.model_copy(
        update={"webhook_secret": SecretStr(NEW_WEBHOOK), "webhook_secret_previous": None}
    )
    item = Outgoing(7, "m1", {"url": "http://127.0.0.1/hook"}, NoticeContent("n", "ding", "t", "b"), 1)
    still_old, switched = WebhookReceiver(secret=WEBHOOK_SECRET), WebhookReceiver(secret=NEW_WEBHOOK)
    now = int(time.time())

    def verifies(receiver: WebhookReceiver, s: Settings) -> bool:
        _, headers, body = build_request(item, [decode_secret(x) for x in s.webhook_secrets()], now)
        assert json.loads(body)["member_id"] == "m1"
        return receiver.verify(
            headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"], body
        )

    assert verifies(still_old, during) and verifies(switched, during)
    assert not verifies(still_old, after) and verifies(switched, after)
    assert (
        len(
            build_request(item, [decode_secret(x) for x in during.webhook_secrets()], now)[1][
                "webhook-signature"
            ].split(" ")
        )
        == 2
    )
    # Setting the previous value to the current one is no rotation: one signature.
    same = settings.model_copy(update={"webhook_secret_previous": settings.webhook_secret})
    assert same.webhook_secrets() == (WEBHOOK_SECRET,)


async def test_a_rotated_api_key_accepts_its_old_token_for_the_window_it_was_given(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await build_org(client, groups=1, members=1)
    key = await post(client, "/v1/api-keys", {"name": "svc", "role": "service", "unit_id": "c"})
    old = key["token"]
    rotated = await post(
        client, f"/v1/api-keys/{key['id']}/rotate", {"previous_valid_for": 600}, token=old, status=200
    )
    new = rotated["token"]
    assert new != old and rotated["id"] == key["id"] and rotated["previous_valid_until"]
    for token in (old, new):
        assert (await client.get("/v1/units/c", headers=auth(token))).status == 200
    await advance_clock(db, 601)
    assert (await client.get("/v1/units/c", headers=auth(old))).status == 401
    assert (await client.get("/v1/units/c", headers=auth(new))).status == 200
    # Rotating again at once (no window) forgets both earlier tokens.
    again = await post(client, f"/v1/api-keys/{key['id']}/rotate", {}, token=new, status=200)
    assert (await client.get("/v1/units/c", headers=auth(new))).status == 401
    assert (await client.get("/v1/units/c", headers=auth(again["token"]))).status == 200
    # The log says who rotated which key, never a token.
    rows = await db.fetch("SELECT details::text AS d FROM audit_log WHERE action = 'api_key.rotate'")
    assert len(rows) == 2
    assert not any(t in r["d"] for r in rows for t in (old, new, again["token"]))
    resp = await client.post(
        f"/v1/api-keys/{key['id']}/rotate", json={"previous_valid_for": 10**9}, headers=auth()
    )
    assert resp.status == 422
    resp = await client.post(
        "/v1/api-keys/00000000-0000-0000-0000-000000000000/rotate", json={}, headers=auth()
    )
    assert resp.status == 404
