"""Prometheus metrics: what each process counts, and how it is served.

Two kinds, on purpose:

- **Events, counted in the process** that sees them (this module's counters and histograms, in
  prometheus_client's process registry): API requests by route and status, sends and provider
  latency by channel, outcomes, held rows by reason, escalation steps, reconciler repairs,
  lesson runs, receipts. An increment is a lock and an add: nothing on a hot path waits on I/O.
  Several processes aggregate by **per-process scraping**, not multiprocess mode: the API serves
  its own at ``GET /metrics``, each worker process at ``worker_metrics_host:worker_metrics_port``;
  Prometheus scrapes every target and ``sum()``\\ s (each series carries its ``instance``).
- **State, read from PostgreSQL at scrape time** by the API (db/metrics.py; ``state_families``):
  queue depth by channel and wait reason, age of the oldest due delivery, rows in flight, breaker
  state. PostgreSQL is the truth and is shared, so these are right however many workers run;
  only the API serves them (a worker would repeat them). With several API processes, aggregate
  them with ``max()``, not ``sum()``.
"""

from __future__ import annotations

import errno
import hmac
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifier.settings import Settings

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WORKER_PORT_SPAN = 64  # worker processes on one host take consecutive ports from worker_metrics_port

# Request latency: most answers take milliseconds; a fan-out of 10,000 members, a second or two.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A provider call: tens of milliseconds to the webhook timeout.
SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Histogram(
    "notifier_http_request_duration_seconds",
    "API requests by method, route (the path template) and status: latency, and with _count the number",
    ["method", "route", "status"],
    buckets=HTTP_BUCKETS,
)
DELIVERIES = Counter(
    "notifier_deliveries_total",
    "Delivery attempts written back, by channel and outcome "
    "(delivered, sent, failed, unknown, retry: queued again after a transient error)",
    ["channel", "outcome"],
)
SEND_SECONDS = Histogram(
    "notifier_provider_send_duration_seconds",
    "One batch handed to a channel's provider: how long the provider took",
    ["channel"],
    buckets=SEND_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "notifier_provider_errors_total",
    "Sends that did not succeed, by channel and class "
    "(transient: retried; permanent: failed; ambiguous: may have arrived; exception: channel bug)",
    ["channel", "error_class"],
)
HELD = Counter(
    "notifier_deliveries_held_total",
    "Rows a limit held back before sending, by channel and reason "
    "(quiet_hours, circuit_open, capped, throttled)",
    ["channel", "reason"],
)
ESCALATION_STEPS = Counter(
    "notifier_escalation_steps_total",
    "Due escalation steps by outcome (fired; skipped: the engine was late past the next step; "
    "done: everyone read; stopped: recalled or expired; error: retried in a minute)",
    ["outcome"],
)
RECONCILER_REPAIRS = Counter(
    "notifier_reconciler_repairs_total",
    "What the reconciler had to repair, by kind (expired_leases, fanouts, delivery_groups, "
    "parked_reports): each is a crash recovered, a lost wake-up or a bug -- alert on any",
    ["kind"],
)
LESSON_RUNS = Counter("notifier_lesson_runs_total", "Daily lesson notices created by the scheduler")
RECEIPTS = Counter(
    "notifier_receipts_total",
    "Reads recorded (new ones only; a repeated read is not counted), by how they came",
    ["via"],
)
REPAIR_KINDS = ("expired_leases", "fanouts", "delivery_groups", "parked_reports")
for _kind in REPAIR_KINDS:  # every series exists from the start, at 0, so rate() and alerts see it
    RECONCILER_REPAIRS.labels(_kind)


class PoolCollector(Collector):
    """The connection pools this process holds (API or worker), read when scraped."""

    def __init__(self) -> None:
        self._pools: list[tuple[Any, str]] = []  # asyncpg pools take no weak references

    def track(self, pool: Any, role: str) -> None:
        """Count ``pool`` from now until it is closed (a closed pool is dropped)."""
        self._pools = [(p, r) for p, r in self._pools if not p.is_closing()] + [(pool, role)]

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "notifier_db_pool_connections",
            "PostgreSQL connections this process holds",
            labels=["pool", "state"],
        )
        cap = GaugeMetricFamily("notifier_db_pool_max", "The pools' maximum size", labels=["pool"])
        sizes: dict[tuple[str, str], int] = {}
        caps: dict[str, int] = {}
        self._pools = [(p, r) for p, r in self._pools if not p.is_closing()]
        for pool, role in self._pools:
            total, idle = pool.get_size(), pool.get_idle_size()
            sizes[role, "idle"] = sizes.get((role, "idle"), 0) + idle
            sizes[role, "in_use"] = sizes.get((role, "in_use"), 0) + total - idle
            caps[role] = caps.get(role, 0) + pool.get_max_size()
        for (role, state), n in sorted(sizes.items()):
            size.add_metric([role, state], n)
        for role, n in sorted(caps.items()):
            cap.add_metric([role], n)
        yield size
        yield cap


POOLS = PoolCollector()
REGISTRY.register(POOLS)


def record_outcomes(channel: str, states: Iterable[str]) -> None:
    for state in states:
        DELIVERIES.labels(channel, "retry" if state == "queued" else state).inc()


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (monotonic)."""

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def authorised(request: web.Request, settings: Settings) -> bool:
    """A scrape carries ``Authorization: Bearer`` the metrics token or the bootstrap admin token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    accepted = [s for s in (settings.metrics_token, settings.admin_token) if s is not None]
    # Every candidate compared, in constant time each.
    return any([hmac.compare_digest(given, s.get_secret_value().encode()) for s in accepted])


def exposition(extra: Iterable[Metric] = ()) -> bytes:
    """This process's metrics, then ``extra`` (scrape-time state), in the text format."""
    text = generate_latest(REGISTRY)
    families = list(extra)
    if families:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        text += generate_latest(registry)
    return text


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def unauthorised() -> web.Response:
    return web.Response(
        status=401,
        text="send 'Authorization: Bearer <metrics token>'\n",
        headers={"WWW-Authenticate": 'Bearer realm="notifier-metrics"'},
    )


def worker_metrics_app(settings: Settings) -> web.Application:
    """A worker process's own /metrics (its events; the API serves the shared state) and /healthz."""

    async def metrics(request: web.Request) -> web.Response:
        if not authorised(request, settings):
            return unauthorised()
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})  # the process is up (a container health check)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def start_worker_metrics(settings: Settings) -> web.AppRunner | None:
    """Serve this worker process's metrics when ``worker_metrics_port`` is set; the caller cleans up.

    Several worker processes on one host (``worker --processes N``) each take the first free port
    from ``worker_metrics_port`` up (at most ``WORKER_PORT_SPAN``): scrape that range."""
    if not settings.worker_metrics_port:
        return None
    if settings.metrics_token is None and settings.admin_token is None:
        log.warning("worker metrics not served: set NOTIFIER_METRICS_TOKEN (scrapes need a token)")
        return None
    runner = web.AppRunner(worker_metrics_app(settings), access_log=None)
    await runner.setup()
    host, first = settings.worker_metrics_host, settings.worker_metrics_port
    for port in range(first, min(first + WORKER_PORT_SPAN, 65536)):
        try:
            await web.TCPSite(runner, host, port, reuse_port=False).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                await runner.cleanup()
                raise
            continue
        log.info("worker metrics on %s:%d", host, port)
        return runner
    await runner.cleanup()
    log.warning("worker metrics not served: ports %d-%d are all taken", first, first + WORKER_PORT_SPAN - 1)
    return None
