"""API-wide headers: X-Request-ID (accepted, bounded, echoed, logged, carried into jobs), security
headers on every answer (a handler's own CSP kept), CORS closed unless an origin is configured."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from notifier.api.middleware import DEFAULT_CSP
from notifier.app import create_app
from notifier.logs import JsonFormatter, RequestIdFilter, TextFormatter
from notifier.settings import Settings
from notifier.workers.queue import deserialize, traced
from tests.conftest import auth, make_settings
from tests.helpers import post, put

ORIGIN = "https://console.example.org"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The root logger's records, as the JSON lines ``NOTIFIER_LOG_FORMAT=json`` writes."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_a_callers_request_id_is_echoed_and_a_bad_one_replaced(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz", headers={"X-Request-ID": "trace-01HX:abc/1"})
    assert resp.headers["X-Request-ID"] == "trace-01HX:abc/1"
    for bad in ["x" * 129, "has space", "<script>", "é", "officer@example.org", "-leading-dash"]:
        resp = await client.get("/healthz", headers={"X-Request-ID": bad})
        made = resp.headers["X-Request-ID"]
        assert made != bad and re.fullmatch(r"[0-9a-f]{32}", made), made
    first = (await client.get("/healthz")).headers["X-Request-ID"]
    second = (await client.get("/healthz")).headers["X-Request-ID"]
    assert first != second
    # Errors carry it too (the problem middleware answers them).
    resp = await client.get("/v1/units", headers={"X-Request-ID": "err-1"})
    assert resp.status == 401 and resp.headers["X-Request-ID"] == "err-1"


async def test_the_request_id_is_in_the_log_lines_and_the_jobs_it_enqueues(
    client: TestClient[Any, Any], db: asyncpg.Connection, settings: Settings, json_logs: io.StringIO
) -> None:
    await put(client, "/v1/units/u", {"name": "Unit", "parent_id": None})
    await post(
        client, "/v1/members:batch", {"members": [{"id": "m0", "name": "M", "units": ["u"]}]}, status=200
    )
    body = {"kind": "ding", "title": "t", "body": "b", "audience": {"members": ["m0"]}, "channels": ["inapp"]}
    resp = await client.post("/v1/notices", json=body, headers={**auth(), "X-Request-ID": "req-fanout-1"})
    assert resp.status == 202
    nid = (await resp.json())["id"]
    # The fan-out job woken for it carries the id (jobs are JSON, never pickle).
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url)
    try:
        raw = await redis.get(f"arq:job:fanout:{nid}:new")
    finally:
        await redis.aclose()
    assert raw is not None
    job = deserialize(raw)
    assert job["k"] == {"request_id": "req-fanout-1"}
    # A record logged while serving a request carries its id, as one JSON object per line.
    logging.getLogger("notifier.test").info("inside", extra={"notice_id": nid})
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert all(set(line) >= {"ts", "level", "logger", "msg"} for line in lines)
    assert {"level": "INFO", "logger": "notifier.test", "msg": "inside", "notice_id": nid}.items() <= lines[
        -1
    ].items()
    assert "request_id" not in lines[-1]  # logged outside any request


async def test_a_log_record_inside_a_request_carries_its_id(
    settings: Settings, db: asyncpg.Connection, json_logs: io.StringIO
) -> None:
    app = create_app(settings)

    async def probe(request: web.Request) -> web.Response:
        logging.getLogger("notifier.probe").warning("probing")
        return web.Response(text="ok")

    app.router.add_get("/probe", probe)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        resp = await c.get("/probe", headers={**auth(), "X-Request-ID": "probe-7"})
        assert resp.status == 200
        link = await c.get("/r/eyJuIjoxfQ.SECRETSIGNATURE0042", headers={"X-Request-ID": "link-8"})
        assert link.status in (400, 403, 404, 410)
    lines = [json.loads(x) for x in json_logs.getvalue().splitlines()]
    line = next(x for x in lines if x["msg"] == "probing")
    assert line["request_id"] == "probe-7" and line["level"] == "WARNING"
    # One access line per request, by route template: never the path, which may hold a token.
    access = [x for x in lines if x["logger"] == "notifier.access"]
    assert [(x["request_id"], x["http"]["route"], x["http"]["status"]) for x in access] == [
        ("probe-7", "/probe", 200),
        ("link-8", "/r/{token}", link.status),
    ]
    # (aiohttp's own access log logs the path; `notifier serve` runs without it: access_log=None.)
    assert not [x for x in lines if x["logger"].startswith("notifier") and "SECRETSIGNATURE" in json.dumps(x)]


async def test_security_headers_on_every_answer_and_a_handlers_csp_is_kept(
    settings: Settings, db: asyncpg.Connection
) -> None:
    app = create_app(settings)
    page_csp = "default-src 'self'; script-src 'self'; frame-ancestors 'none'"

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<p>hi</p>", content_type="text/html", headers={"Content-Security-Policy": page_csp}
        )

    app.router.add_get("/page", page)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        for path, status in [
            ("/healthz", 200),
            ("/v1/units", 401),
            ("/nowhere", 401),
            ("/openapi.json", 200),
        ]:
            resp = await c.get(path)
            assert resp.status == status
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["Content-Security-Policy"] == DEFAULT_CSP
            assert "Strict-Transport-Security" not in resp.headers  # public URL is not https
            assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await c.get("/page", headers=auth())
        assert resp.headers.getall("Content-Security-Policy") == [page_csp]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_cors_is_closed_by_default(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/units", headers={**auth(), "Origin": ORIGIN})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    pre = await client.options(
        "/v1/units", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert pre.status == 403
    assert "Access-Control-Allow-Origin" not in pre.headers


@pytest.fixture
async def cors_client(
    server_urls: tuple[str, str], db: asyncpg.Connection
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(server_urls, cors_origins=[ORIGIN], public_url="https://notifier.example.org")
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as c:
        yield c


async def test_cors_allows_only_configured_origins_and_answers_preflights(
    cors_client: TestClient[Any, Any],
) -> None:
    c = cors_client
    # A preflight needs no token; it names the resource's methods and the headers a caller may send.
    pre = await c.options(
        "/v1/units/{x}".replace("{x}", "u1"),
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"},
    )
    assert pre.status == 204, await pre.text()
    assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PUT" in pre.headers["Access-Control-Allow-Methods"].split(", ")
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert "Origin" in pre.headers.getall("Vary")
    bad_method = await c.options(
        "/healthz", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"}
    )
    assert bad_method.status == 403
    other = await c.options(
        "/v1/units", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert other.status == 403 and "Access-Control-Allow-Origin" not in other.headers
    # The actual request: allowed origin echoed (never '*'), rate-limit and id headers readable.
    resp = await c.get("/v1/units", headers={**auth(), "Origin": ORIGIN})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    resp = await c.get("/v1/units", headers={**auth(), "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_jobs_records_carry_the_request_id_notice_and_channel(json_logs: io.StringIO) -> None:
    async def job(ctx: dict[str, Any], notice_id: str, channel_id: str) -> int:
        logging.getLogger("notifier.workers.deliver").warning("batch handed back")
        return 7

    run = traced(job, "deliver")
    assert await run({}, "n-1", "sms", request_id="req-9") == 7
    assert await run({}, "n-2", "fcm") == 7  # woken by the reconciler: no request
    first, second = (json.loads(x) for x in json_logs.getvalue().splitlines())
    assert {
        "request_id": "req-9",
        "job": "deliver",
        "notice_id": "n-1",
        "channel": "sms",
    }.items() <= first.items()
    assert "request_id" not in second and second["notice_id"] == "n-2"


async def test_the_read_link_page_allows_only_its_own_style(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/r/eyJuIjoxfQ.bm90LWEtc2lnbmF0dXJl")
    assert resp.headers["Content-Type"].startswith("text/html")
    page = await resp.text()
    [style] = re.findall(r"<style>(.*?)</style>", page, re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    csp = resp.headers.getall("Content-Security-Policy")
    assert csp == [
        f"default-src 'none'; style-src 'sha256-{digest}'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    ]
    assert "<script" not in page
    # The unread list an escalation summary links to is the same page, with the same policy.
    unread = await client.get("/r/unread/eyJuIjoxfQ.bm90LWEtc2lnbmF0dXJl")
    assert unread.headers["Content-Type"].startswith("text/html")
    assert unread.headers.getall("Content-Security-Policy") == csp


def test_the_text_format_shows_the_request_id_only_when_there_is_one() -> None:
    formatter = TextFormatter()
    inside = logging.LogRecord("notifier.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    inside.request_id = "req-1"
    outside = logging.LogRecord("notifier.x", logging.INFO, __file__, 1, "hello", (), None)
    outside.request_id = None
    assert formatter.format(inside).endswith("INFO notifier.x [req-1]: hello there")
    assert formatter.format(outside).endswith("INFO notifier.x: hello")
