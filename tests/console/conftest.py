"""The console's tests: a real app on loopback (real PostgreSQL + Redis, the worker running) and,
for the browser tests, one headless Chromium per pytest session -- the OS's (Debian's
``chromium``), driven by Playwright through ``executable_path``; a browser is never downloaded.
Without a Chromium the browser tests skip, saying why."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from notifier.app import create_app, server_options
from notifier.embedded import free_port
from notifier.settings import Settings
from tests.conftest import ADMIN_TOKEN, make_settings, running_worker

CHROMIUM = os.environ.get("NOTIFIER_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parents[1] / "output"


@dataclass
class Live:
    url: str
    settings: Settings
    http: aiohttp.ClientSession

    async def api(self, method: str, path: str, body: Any = None, status: int | None = None) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            data = await resp.json() if resp.content_type.endswith("json") else await resp.text()
            assert status is None or resp.status == status, (resp.status, data)
            assert resp.status < 400 or status is not None, (resp.status, data)
            return data

    async def link(self, member_id: str) -> str:
        data = await self.api("POST", "/v1/console-links", {"member_id": member_id}, status=201)
        return str(data["url"])


@pytest.fixture
async def live(server_urls: tuple[str, str], db: asyncpg.Connection) -> AsyncIterator[Live]:
    """The API (console included) on a loopback port, with a worker, like ``make run``."""
    port = free_port()
    settings = make_settings(server_urls, port=port, public_url=f"http://127.0.0.1:{port}")
    runner = web.AppRunner(create_app(settings), access_log=None, **server_options(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with running_worker(settings), aiohttp.ClientSession() as http:
            yield Live(f"http://127.0.0.1:{port}", settings, http)
    finally:
        await runner.cleanup()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium when apt-get is usable"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def output() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
