"""``GET /metrics``: Prometheus text format (notifier/metrics.py says what is in it).

Authenticated by its own bearer token (``NOTIFIER_METRICS_TOKEN``, what a Prometheus scrape
config carries) or the bootstrap admin token; not by API keys, whose lookup spends a rate-limit
token. The state read from PostgreSQL is best effort: with the database away the scrape still
answers, with ``notifier_state_up 0``, so an operator sees the outage instead of a gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from notifier import metrics
from notifier.api.keys import DEPS, AppDeps
from notifier.api.routing import Call, Reply, Router
from notifier.db import metrics as state
from notifier.db.pool import UNAVAILABLE, Record
from notifier.workers.queue import REDIS_UNAVAILABLE

routes = Router()
log = logging.getLogger(__name__)
STATE_TIMEOUT_SECONDS = 5.0


async def state_families(deps: AppDeps) -> list[Metric]:
    """The shared state, read from PostgreSQL (and the wake-up queue's length from Redis)."""
    up = GaugeMetricFamily("notifier_state_up", "1: the state below was read from PostgreSQL now")
    try:
        async with asyncio.timeout(STATE_TIMEOUT_SECONDS), deps.pool.acquire() as conn:
            queue = await state.queue(conn)
            flight = await state.in_flight(conn)
            breakers = await state.breakers(conn)
            lessons = await state.lesson_runs_last_day(conn)
    except UNAVAILABLE as exc:
        log.warning("metrics: PostgreSQL state not read (%s)", type(exc).__name__)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    return [
        up,
        *_queue(queue),
        *_flight(flight),
        *_breakers(breakers),
        _lessons(lessons),
        *await _wakeups(deps),
    ]


async def _wakeups(deps: AppDeps) -> list[Metric]:
    """Jobs waiting in Redis (wake-ups, not the work itself: that is notifier_queue_depth)."""
    try:
        async with asyncio.timeout(STATE_TIMEOUT_SECONDS):
            n = await deps.queue.zcard(deps.settings.queue_name)
    except REDIS_UNAVAILABLE as exc:
        log.warning("metrics: Redis queue length not read (%s)", type(exc).__name__)
        return []
    family = GaugeMetricFamily("notifier_wakeups_queued", "arq jobs waiting in Redis to be picked up")
    family.add_metric([], n)
    return [family]


def _queue(rows: Iterable[Record]) -> list[Metric]:
    queued = GaugeMetricFamily(
        "notifier_queue_depth",
        "Queued deliveries by channel and what they wait for (none: nothing holds them)",
        labels=["channel", "wait"],
    )
    due = GaugeMetricFamily(
        "notifier_queue_due",
        "Queued deliveries due now, by channel and wait reason",
        labels=["channel", "wait"],
    )
    oldest: dict[str, float] = {}
    for r in rows:
        queued.add_metric([r["channel"], r["wait"]], r["queued"])
        due.add_metric([r["channel"], r["wait"]], r["due"])
        oldest[r["channel"]] = max(oldest.get(r["channel"], 0.0), float(r["oldest_due_age"]))
    age = GaugeMetricFamily(
        "notifier_queue_oldest_due_age_seconds",
        "How long the oldest due delivery of each channel has been due (0: none is)",
        labels=["channel"],
    )
    for channel, seconds in sorted(oldest.items()):
        age.add_metric([channel], seconds)
    return [queued, due, age]


def _flight(rows: Iterable[Record]) -> list[Metric]:
    sending = GaugeMetricFamily(
        "notifier_deliveries_in_flight", "Deliveries being sent (leased by a worker)", labels=["channel"]
    )
    expired = GaugeMetricFamily(
        "notifier_deliveries_lease_expired",
        "Deliveries still 'sending' past their lease (the reconciler hands them back)",
        labels=["channel"],
    )
    for r in rows:
        sending.add_metric([r["channel"]], r["n"])
        expired.add_metric([r["channel"]], r["lease_expired"])
    return [sending, expired]


def _breakers(rows: Iterable[Record]) -> list[Metric]:
    is_open = GaugeMetricFamily(
        "notifier_breaker_open", "1: the provider's circuit is open (sends wait)", labels=["channel"]
    )
    failures = GaugeMetricFamily(
        "notifier_breaker_failures", "Consecutive failed batches of the provider", labels=["channel"]
    )
    opened = GaugeMetricFamily(
        "notifier_breaker_reopened", "Times the circuit opened since it last closed", labels=["channel"]
    )
    for r in rows:
        is_open.add_metric([r["key"]], 1 if r["is_open"] else 0)
        failures.add_metric([r["key"]], r["failures"])
        opened.add_metric([r["key"]], r["opened_count"])
    return [is_open, failures, opened]


def _lessons(n: int) -> Metric:
    family = GaugeMetricFamily(
        "notifier_lesson_runs_last_day", "Lesson notices sent in the last 24 hours (all units)"
    )
    family.add_metric([], n)
    return family


@routes.route(
    "GET",
    "/metrics",
    summary="Prometheus metrics (bearer: the metrics token or the admin token)",
    tag="health",
    auth=False,
    db=False,
    media="text/plain",
    responses={401: Reply("no metrics token or admin token", media="text/plain")},
)
async def get_metrics(request: web.Request, call: Call) -> web.Response:
    deps = request.app[DEPS]
    if not metrics.authorised(request, deps.settings):
        return metrics.unauthorised()
    extra = await state_families(deps)
    return web.Response(body=metrics.exposition(extra), headers={"Content-Type": metrics.CONTENT_TYPE})
