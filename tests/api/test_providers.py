"""Provider callbacks are public until the channel has checked the signature: their bodies are
capped small, so nobody can make the API buffer megabytes before it is authenticated."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from tests.conftest import make_settings
from tests.fakes.twilio import PUBLIC_URL, FakeTwilio

CALLBACK = "/v1/providers/sms/callbacks"
MAX_CALLBACK_BYTES = 64 * 1024  # notifier.api.providers.MAX_CALLBACK_BYTES


@pytest.fixture
async def twilio_client(
    server_urls: tuple[str, str], db: asyncpg.Connection, twilio_fake: FakeTwilio
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(server_urls, **twilio_fake.settings_overrides())
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as c:
        yield c


async def _chunks(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b"a" * 4096
        sent += 4096


async def test_an_oversized_callback_is_413_before_it_is_read(
    twilio_client: TestClient[Any, Any], twilio_fake: FakeTwilio, db: asyncpg.Connection
) -> None:
    """Before: up to 16 MB were read, then the signature was checked (403)."""
    headers, body = twilio_fake.signed_callback(
        PUBLIC_URL + CALLBACK, {"MessageSid": "SM1", "MessageStatus": "delivered"}
    )
    resp = await twilio_client.post(CALLBACK, data=body, headers=headers)
    assert resp.status == 200, await resp.text()  # a real report still goes through
    # Declared too large: refused on its Content-Length.
    big = b"MessageSid=SM1&Body=" + b"x" * (1024 * 1024)
    resp = await twilio_client.post(CALLBACK, data=io.BytesIO(big), headers=headers)
    assert resp.status == 413, await resp.text()
    problem = await resp.json(content_type="application/problem+json")
    assert (
        problem["status"] == 413
        and problem["detail"] == f"a callback body is at most {MAX_CALLBACK_BYTES} bytes"
    )
    # Chunked, with no length announced: refused once the cap is passed.
    resp = await twilio_client.post(CALLBACK, data=_chunks(1024 * 1024), headers=headers)
    assert resp.status == 413, await resp.text()
    # At the cap, the body is read and judged by its signature.
    resp = await twilio_client.post(CALLBACK, data=io.BytesIO(b"a" * MAX_CALLBACK_BYTES), headers=headers)
    assert resp.status == 403, await resp.text()
