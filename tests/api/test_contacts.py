"""Contacts: every target a channel cannot use is a 422 naming the field (never a 500), any
target a channel accepts can be stored and found again, and a branch that shares a member sees
its contacts without the secrets their URLs carry.

The organisation (see ``tests/api/conftest.py``)::

    c ── b1 ── g1a (m1a), g1b (m1b)
     └── b2 ── g2a (m2a), g2b (m2b)
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from notifier.app import create_app
from notifier.channels.webpush import generate_vapid_keys
from notifier.settings import WebPushSettings
from tests.api.conftest import Org, problem, snapshot
from tests.conftest import auth, make_settings
from tests.fakes.fcm import FakeFcm
from tests.helpers import get, post, put


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _subscription(endpoint: str) -> dict[str, Any]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {"endpoint": endpoint, "keys": {"p256dh": _b64url(point), "auth": _b64url(os.urandom(16))}}


@pytest.fixture
async def client(server_urls: tuple[str, str], db: asyncpg.Connection) -> AsyncIterator[TestClient[Any, Any]]:
    """The app with web push and FCM configured too (neither is called: contacts only)."""
    settings = make_settings(
        server_urls,
        webpush=WebPushSettings(vapid_private_key=SecretStr(generate_vapid_keys()[0])),
        **FakeFcm().settings_overrides(),
    )
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as c:
        yield c


async def _member(client: TestClient[Any, Any]) -> None:
    await put(client, "/v1/units/u", {"name": "Unit"})
    await put(client, "/v1/members/m", {"name": "Member", "units": ["u"]})


@pytest.mark.parametrize(
    ("channel", "target", "field", "message"),
    [
        ("webhook", "http://[::1", "target.url", "url is not a valid URL: malformed host"),
        ("webhook", "https://[::1/hook", "target.url", "url is not a valid URL: malformed host"),
        ("webhook", "https://[zz]/hook", "target.url", "url is not a valid URL: malformed host"),
        (
            "webhook",
            "https://example.org:99999/hook",
            "target.url",
            "url must have a port between 1 and 65535",
        ),
        ("webhook", "https://example.org:0/hook", "target.url", "url must have a port between 1 and 65535"),
        ("webhook", "https://example.org:8o/hook", "target.url", "url must have a port between 1 and 65535"),
        (
            "webhook",
            "https://exa mple.org/hook",
            "target.url",
            "url must not contain whitespace or control characters",
        ),
        (
            "webhook",
            "https://example.org/\u2028",
            "target.url",
            "url must not contain whitespace or control characters",
        ),
        ("webhook", "https://exa..mple.org/hook", "target.url", "url has an invalid host name"),
        ("webhook", "https://[2001:db8::1]x/hook", "target.url", "url has an invalid host name"),
        (
            "webhook",
            "https://example.org/" + "é" * 1100,
            "target.url",
            "url must be a string of at most 2048 bytes",
        ),
        (
            "webpush",
            _subscription("https://[::1"),
            "target.endpoint",
            "endpoint is not a valid URL: malformed host",
        ),
        (
            "webpush",
            _subscription("https://push.example.org:99999/s"),
            "target.endpoint",
            "endpoint must have a port between 1 and 65535",
        ),
        (
            "webpush",
            _subscription("https://push.example.org/" + "推" * 700),
            "target.endpoint",
            "endpoint must be a string of at most 2048 bytes",
        ),
    ],
)
async def test_a_target_no_sender_could_use_is_422_naming_the_field(
    client: TestClient[Any, Any], db: asyncpg.Connection, channel: str, target: Any, field: str, message: str
) -> None:
    """Before: "http://[::1" raised outside validation (500), 2,048 characters of non-ASCII text
    overflowed the unique index (500), and port 99999 was stored."""
    await _member(client)
    before = await snapshot(db)
    resp = await client.post(
        "/v1/members/m/contacts", json={"channel": channel, "target": target}, headers=auth()
    )
    await problem(resp, 422, [{"field": field, "message": message}])
    assert await snapshot(db) == before


async def test_a_long_target_is_unique_by_its_hash(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """A 4,000-character FCM token is a valid target, longer than a btree entry may be: the
    uniqueness key is a hash of the normalised target, so it is stored, and adding it again finds it."""
    await _member(client)
    token = "f" * 4000
    first = await post(client, "/v1/members/m/contacts", {"channel": "fcm", "target": token})
    again = await post(client, "/v1/members/m/contacts", {"channel": "fcm", "target": token}, status=200)
    assert again["id"] == first["id"] and again["target"] == token
    # The same object written with its keys in another order is the same target.
    url = "https://example.org/" + "é" * 1000  # 2,020 bytes: fits the URL cap
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    one = await post(
        client, "/v1/members/m/contacts", {"channel": "webhook", "target": {"url": url, "secret": secret}}
    )
    two = await post(
        client,
        "/v1/members/m/contacts",
        {"channel": "webhook", "target": {"secret": secret, "url": url}},
        status=200,
    )
    assert one["id"] == two["id"]
    assert await db.fetchval("SELECT count(*) FROM contacts") == 2


async def test_an_oversized_target_is_refused_in_bytes(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    """FCM allows 4,096 characters; 4,096 characters of non-ASCII are 8 KB more than any target holds."""
    await _member(client)
    before = await snapshot(db)
    resp = await client.post(
        "/v1/members/m/contacts", json={"channel": "fcm", "target": "令" * 4000}, headers=auth()
    )
    await problem(resp, 422, [{"field": "target", "message": "target must be at most 8192 bytes as JSON"}])
    assert await snapshot(db) == before


SECRET_URL = "https://hooks.example.org/services/T0/B0/s3cr3t?token=abc"
SIGNING = "whsec_" + base64.b64encode(b"s" * 32).decode()


async def test_a_branch_sharing_a_member_sees_its_contacts_without_url_secrets(
    client: TestClient[Any, Any], db: asyncpg.Connection, org: Org
) -> None:
    await put(client, "/v1/members/mx", {"name": "Shared", "units": ["g1a", "g2a"]})
    sub = _subscription("https://push.example.org/wp/s3cr3t-endpoint-token")
    for member in ("mx", "m1a"):
        await post(
            client,
            f"/v1/members/{member}/contacts",
            {"channel": "webhook", "target": {"url": SECRET_URL, "secret": SIGNING}},
        )
        await post(client, f"/v1/members/{member}/contacts", {"channel": "webpush", "target": sub})
    owned = {
        "webhook": {"url": SECRET_URL, "secret": "***"},
        "webpush": {"endpoint": sub["endpoint"], "keys": {"p256dh": "***", "auth": "***"}},
    }
    shared = {
        "webhook": {"url": "https://hooks.example.org/***?***", "secret": "***"},
        "webpush": {"endpoint": "https://push.example.org/***", "keys": {"p256dh": "***", "auth": "***"}},
    }

    async def targets(member: str, token: str | None) -> dict[str, Any]:
        return {
            c["channel"]: c["target"]
            for c in (await get(client, f"/v1/members/{member}/contacts", token=token))["items"]
        }

    # Keys are secrets for everyone (the web-push keys sit one level down, and were echoed before).
    assert await targets("mx", None) == owned  # the admin owns every member
    assert await targets("m1a", org.b1_service) == owned  # b1 owns its own member
    # Either branch may see that the shared member has a webhook and where, not its secrets.
    assert await targets("mx", org.b1_service) == shared
    assert await targets("mx", org.b2_service) == shared
    rendered = str(await get(client, "/v1/members/mx/contacts", token=org.b2_service))
    assert "s3cr3t" not in rendered and "token=abc" not in rendered
    # Out of reach is still 404.
    resp = await client.get("/v1/members/m1a/contacts", headers=auth(org.b2_service))
    await problem(resp, 404)
