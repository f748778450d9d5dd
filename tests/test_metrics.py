"""GET /metrics after real traffic: the numbers move by exactly what happened (real PostgreSQL,
Redis, a fake webhook receiver; the fan-out and delivery jobs run in this process)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from notifier import metrics
from notifier.app import create_app
from notifier.channels.registry import build_registry
from notifier.db.pool import create_pool
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.escalate import advance_escalations
from notifier.workers.fanout import fanout_notice
from notifier.workers.queue import create_queue
from notifier.workers.reconcile import reconcile_once
from notifier.workers.settings import run_supervised
from tests.conftest import advance_clock, auth, make_settings, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import post, put

METRICS_TOKEN = "test-metrics-token-0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metrics_settings(server_urls: tuple[str, str]) -> Settings:
    return make_settings(server_urls, metrics_token=SecretStr(METRICS_TOKEN), delivery_idle_wait_seconds=0.0)


@pytest.fixture
async def mclient(metrics_settings: Settings, db: asyncpg.Connection) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(metrics_settings), host="127.0.0.1")) as c:
        yield c


@pytest.fixture
async def deps(metrics_settings: Settings, db: asyncpg.Connection) -> AsyncIterator[WorkerDeps]:
    d = WorkerDeps(
        metrics_settings,
        await create_pool(metrics_settings),
        await create_queue(metrics_settings),
        build_registry(metrics_settings),
    )
    yield d
    await d.channels.close()
    await d.queue.aclose()
    await d.pool.close()


async def scrape(client: TestClient[Any, Any], token: str = METRICS_TOKEN) -> Samples:
    resp = await client.get("/metrics", headers=auth(token))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await resp.text())


async def test_metrics_need_the_metrics_token_or_the_admin_token(mclient: TestClient[Any, Any]) -> None:
    assert (await mclient.get("/metrics")).status == 401
    wrong = await mclient.get("/metrics", headers=auth("not-the-token"))
    assert wrong.status == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    # An API key, even an admin's, is not a scrape credential.
    key = await post(mclient, "/v1/api-keys", {"name": "ops", "role": "admin"})
    assert (await mclient.get("/metrics", headers=auth(key["token"]))).status == 401
    assert (await scrape(mclient))[("notifier_state_up", frozenset())] == 1
    await scrape(mclient, token="test-admin-token")


async def test_a_send_moves_requests_queue_deliveries_and_latency_by_what_happened(
    mclient: TestClient[Any, Any], deps: WorkerDeps, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    await put(mclient, "/v1/units/u", {"name": "Unit", "parent_id": None})
    members = [{"id": f"m{i}", "name": f"M {i}", "units": ["u"]} for i in range(5)]
    await post(mclient, "/v1/members:batch", {"members": members}, status=200)
    # Four members have a webhook; the fifth has none and fails on that channel.
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members "
        "WHERE id <> 'm4'",
        f'{{"url": "{receiver.url}"}}',
    )
    before = await scrape(mclient)
    notice = await post(
        mclient,
        "/v1/notices",
        {"kind": "ding", "title": "t", "body": "b", "audience": {"units": ["u"]}, "channels": ["webhook"]},
        status=202,
    )
    nid = notice["id"]
    for _ in range(3):
        resp = await mclient.get(f"/v1/notices/{nid}", headers=auth())
        assert resp.status == 200
    assert (
        await mclient.get("/v1/notices/00000000-0000-0000-0000-000000000000", headers=auth())
    ).status == 404

    # Fanned out, nothing sent yet: four queued and due (the fifth failed at once, no contact);
    # two minutes later the oldest has been due that long.
    assert await fanout_notice(deps, nid) == 5
    await advance_clock(db, 120)
    queued = await scrape(mclient)
    assert value(queued, "notifier_queue_depth", channel="webhook", wait="none") == 4
    assert value(queued, "notifier_queue_due", channel="webhook", wait="none") == 4
    assert 120 <= value(queued, "notifier_queue_oldest_due_age_seconds", channel="webhook") < 180

    await deliver_notice_channel(deps, nid, "webhook")
    for member in ("m0", "m1", "m0"):  # a repeated read records nothing new
        receipt = {"member_id": member, "type": "read"}
        await post(mclient, f"/v1/notices/{nid}/receipts", receipt, status=200)
    after = await scrape(mclient)
    assert receiver.per_member() == {f"m{i}": 1 for i in range(4)}
    rows = await db.fetch(
        "SELECT state, count(*) AS n FROM deliveries WHERE channel = 'webhook' GROUP BY state"
    )
    states = {r["state"]: r["n"] for r in rows}
    assert states == {"delivered": 4, "failed": 1}

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("notifier_deliveries_total", channel="webhook", outcome="delivered") == 4
    assert moved("notifier_deliveries_total", channel="webhook", outcome="failed") == 0  # not attempted
    assert moved("notifier_deliveries_total", channel="webhook", outcome="retry") == 0
    assert moved("notifier_provider_send_duration_seconds_count", channel="webhook") >= 1
    assert moved("notifier_provider_send_duration_seconds_sum", channel="webhook") > 0
    assert moved("notifier_provider_errors_total", channel="webhook", error_class="transient") == 0
    count = "notifier_http_request_duration_seconds_count"
    assert moved(count, method="POST", route="/v1/notices", status="202") == 1
    assert moved(count, method="GET", route="/v1/notices/{notice_id}", status="200") == 3
    assert moved(count, method="GET", route="/v1/notices/{notice_id}", status="404") == 1
    assert value(after, "notifier_queue_depth", channel="webhook", wait="none") == 0
    assert moved("notifier_receipts_total", via="api") == 2
    assert moved(count, method="POST", route="/v1/notices/{notice_id}/receipts", status="200") == 3
    assert value(after, "notifier_queue_oldest_due_age_seconds", channel="webhook") == 0
    assert value(after, "notifier_db_pool_connections", pool="api", state="idle") >= 1
    # The jobs ran here, not in a worker: the wake-ups (one fan-out, one delivery) wait in Redis.
    jobs = await deps.queue.zrange(deps.settings.queue_name, 0, -1)
    assert sorted(j.decode().split(":")[0] for j in jobs) == ["deliver", "fanout"]
    assert value(after, "notifier_wakeups_queued") == 2


async def test_every_metric_the_alert_rules_use_is_exposed(mclient: TestClient[Any, Any]) -> None:
    resp = await mclient.get("/metrics", headers=auth(METRICS_TOKEN))
    exposed = set(re.findall(r"^# TYPE (\S+) (\S+)$", await resp.text(), re.M))
    names = set()
    for name, kind in exposed:
        names.add(name)
        if kind == "counter":
            names.add(name + "_total")
        if kind == "histogram":
            names |= {name + "_count", name + "_sum", name + "_bucket"}
    rules = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "alerts.yml").read_text())
    used = {
        m for g in rules["groups"] for r in g["rules"] for m in re.findall(r"notifier_[a-z_]+", r["expr"])
    }
    assert len(used) >= 8
    assert used <= names, used - names


async def test_provider_errors_breaker_and_repairs_are_counted(
    mclient: TestClient[Any, Any], deps: WorkerDeps, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    await put(mclient, "/v1/units/u", {"name": "Unit", "parent_id": None})
    await post(
        mclient, "/v1/members:batch", {"members": [{"id": "m0", "name": "M", "units": ["u"]}]}, status=200
    )
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) VALUES ('m0', 'webhook', $1::jsonb)",
        f'{{"url": "{receiver.url}"}}',
    )
    receiver.responses["m0"] = [503]
    before = await scrape(mclient)
    nid = (
        await post(
            mclient,
            "/v1/notices",
            {
                "kind": "ding",
                "title": "t",
                "body": "b",
                "audience": {"members": ["m0"]},
                "channels": ["webhook"],
            },
            status=202,
        )
    )["id"]
    await fanout_notice(deps, nid)
    await deliver_notice_channel(deps, nid, "webhook")  # 503: queued again
    # A worker that died holding a row: its lease runs out and the reconciler repairs it.
    await db.execute(
        "UPDATE deliveries SET state = 'sending', lease_until = notifier_now() - interval '1 minute' "
        "WHERE notice_id = $1",
        nid,
    )
    await db.execute(
        "INSERT INTO circuit_breakers (key, failures, opened_count, open_until) "
        "VALUES ('sms', 7, 2, notifier_now() + interval '1 hour')"
    )
    mid = await scrape(mclient)
    assert value(mid, "notifier_deliveries_in_flight", channel="webhook") == 1
    assert value(mid, "notifier_deliveries_lease_expired", channel="webhook") == 1
    assert value(mid, "notifier_breaker_open", channel="sms") == 1
    assert value(mid, "notifier_breaker_failures", channel="sms") == 7
    await reconcile_once(deps)
    after = await scrape(mclient)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("notifier_provider_errors_total", channel="webhook", error_class="transient") == 1
    assert moved("notifier_deliveries_total", channel="webhook", outcome="retry") == 1
    assert moved("notifier_reconciler_repairs_total", kind="expired_leases") == 1
    assert value(after, "notifier_deliveries_in_flight", channel="webhook") == 0


async def test_a_worker_serves_its_own_metrics_on_its_port(metrics_settings: Settings) -> None:
    port = _free_port()
    settings = metrics_settings.model_copy(update={"worker_metrics_port": port})
    runner = await metrics.start_worker_metrics(settings)
    # A second worker process on the host takes the next port (worker --processes N).
    second = await metrics.start_worker_metrics(settings)
    assert runner is not None and second is not None
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        async with ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 401
            async with http.get(url, headers=auth(METRICS_TOKEN)) as resp:
                assert resp.status == 200
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{port + 1}/metrics", headers=auth(METRICS_TOKEN)) as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port + 1}/healthz") as resp:
                assert resp.status == 200
    finally:
        await second.cleanup()
        await runner.cleanup()
    samples = parse(text)
    assert ("notifier_lesson_runs_total", frozenset()) in samples
    # The shared state is the API's to serve, not every worker's.
    assert not any(name == "notifier_state_up" for name, _ in samples)


def _free_port() -> int:
    import socket

    while True:  # a port whose successor is free too
        with socket.socket() as s, socket.socket() as t:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


async def test_the_supervised_worker_serves_metrics_while_it_runs(
    metrics_settings: Settings, db: asyncpg.Connection
) -> None:
    port = _free_port()
    settings = metrics_settings.model_copy(update={"worker_metrics_port": port})
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(run_supervised(settings, stop))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with ClientSession() as http:

            async def serving() -> bool:
                try:
                    async with http.get(url, headers=auth(METRICS_TOKEN)) as resp:
                        text = await resp.text()
                except OSError:
                    return False
                # The worker's pool is counted once its startup ran.
                return resp.status == 200 and 'notifier_db_pool_max{pool="worker"}' in text

            await wait_until(serving)
    finally:
        stop.set_result(None)
        await asyncio.wait_for(task, 30)
    async with ClientSession() as http:
        with pytest.raises(OSError):
            async with http.get(url, headers=auth(METRICS_TOKEN)):
                pass


async def test_escalation_steps_are_counted_fired_and_skipped(
    mclient: TestClient[Any, Any], deps: WorkerDeps, db: asyncpg.Connection
) -> None:
    await put(mclient, "/v1/units/u", {"name": "Unit", "parent_id": None})
    await post(
        mclient, "/v1/members:batch", {"members": [{"id": "m0", "name": "M", "units": ["u"]}]}, status=200
    )
    steps = [{"after": f"PT{n}M", "remind": ["inapp"]} for n in (1, 2, 3)]
    body = {
        "kind": "ding",
        "title": "t",
        "body": "b",
        "audience": {"members": ["m0"]},
        "channels": ["inapp"],
        "escalation": {"steps": steps},
    }
    nid = (await post(mclient, "/v1/notices", body, status=202))["id"]
    await fanout_notice(deps, nid)
    before = await scrape(mclient)
    await advance_clock(db, 61)
    assert await advance_escalations(deps) == 1  # step 1 fires
    # The engine was away past steps 2 and 3: step 2 is skipped as late, step 3 fires.
    await advance_clock(db, 600)
    assert await advance_escalations(deps) == 2
    after = await scrape(mclient)

    def moved(outcome: str) -> float:
        name = "notifier_escalation_steps_total"
        return value(after, name, outcome=outcome) - value(before, name, outcome=outcome)

    assert (moved("fired"), moved("skipped"), moved("done"), moved("error")) == (2, 1, 0, 0)
    kinds = [r["kind"] for r in await db.fetch("SELECT kind FROM notice_events WHERE notice_id = $1", nid)]
    assert kinds.count("step_fired") == 2 and kinds.count("step_skipped") == 1
