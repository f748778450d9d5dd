"""Slow and oversized requests against the API as it is served (``server_options``): a client that
trickles its request head or body is cut off within a bound while others are served; oversized
heads and bodies are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from notifier.app import create_app, server_options
from tests.conftest import ADMIN_TOKEN, make_settings

KEEPALIVE = 1.0
BODY_TIMEOUT = 1.0
MAX_BODY = 64 * 1024
# Generous: the server's own bound is one second; this only keeps a broken server from hanging the test.
CUT_OFF_WITHIN = 8.0


@pytest.fixture
async def served(server_urls: tuple[str, str], db: asyncpg.Connection) -> AsyncIterator[tuple[str, int]]:
    settings = make_settings(
        server_urls,
        http_keepalive_seconds=KEEPALIVE,
        http_body_timeout_seconds=BODY_TIMEOUT,
        http_max_body_bytes=MAX_BODY,
        http_max_field_size=4096,
    )
    runner = web.AppRunner(create_app(settings), access_log=None, **server_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port
    finally:
        await runner.cleanup()


async def _trickle(host: str, port: int, head: bytes, then: bytes, interval: float) -> float:
    """Send ``head`` at once, then ``then`` one byte every ``interval`` seconds; returns how long the
    server let that go on before closing the connection (or answering and closing)."""
    reader, writer = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(head)
    try:
        async with asyncio.timeout(CUT_OFF_WITHIN):
            for byte in then:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(65536), interval)
                except TimeoutError:
                    continue
                # Data or EOF: either way the server is done with us.
                break
            await reader.read()  # until the server closes
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
    return loop.time() - started


async def _healthz(host: str, port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/healthz") as resp:
        return resp.status


async def test_a_client_trickling_its_head_is_cut_off_while_others_are_served(
    served: tuple[str, int],
) -> None:
    host, port = served
    loris = asyncio.ensure_future(
        _trickle(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 200, 0.5)
    )
    await asyncio.sleep(0.2)
    # Meanwhile, an ordinary client is answered.
    assert await _healthz(host, port) == 200
    took = await loris
    assert took < CUT_OFF_WITHIN  # cut off, not answered after the whole trickle (100 s)
    assert await _healthz(host, port) == 200


async def test_a_client_trickling_its_body_is_cut_off(served: tuple[str, int]) -> None:
    host, port = served
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"PUT /v1/units/c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + ADMIN_TOKEN.encode()
        + b'\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"name": '
    )
    await writer.drain()
    async with asyncio.timeout(CUT_OFF_WITHIN):
        answer = await reader.read()  # the server answers and closes: read to EOF
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"application/problem+json" in head
    assert json.loads(body)["status"] == 408


async def test_an_oversized_header_is_refused(served: tuple[str, int]) -> None:
    host, port = served
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(CUT_OFF_WITHIN):
        status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] in (b"400", b"431")


async def test_an_oversized_body_is_413_problem_json(served: tuple[str, int], db: asyncpg.Connection) -> None:
    host, port = served
    body = json.dumps({"name": "x" * (MAX_BODY + 1), "parent_id": None})
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"http://{host}:{port}/v1/units/c",
            data=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 413
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["status"] == 413
    assert await db.fetchval("SELECT count(*) FROM units") == 0
