"""Read receipts end to end through the API (``notifier dev``), against ``GET /healthz`` from the
same clients in the same run.

Run::

    .venv/bin/python -m benchmarks.receipts [--members 50000] [--clients 32] [--seconds 5]

* an in-app DING to N members (embedded servers, ``notifier dev --processes 1``), until active;
* **batch**: ``POST /v1/receipts:batch`` with 10,000 distinct reads per call, one call after
  another, for half the members: receipts/s end to end (the 200 comes after the commit), and the
  counters checked afterwards (``read`` equals the reads sent);
* **single**: ``--clients`` concurrent loopback clients, each posting ``POST /v1/notices/{id}/
  receipts`` for the next unread member, for ``--seconds`` (bounded: one request in flight per
  client); rate, p50 and p99;
* **single, service key**: the same with a service key bound to the root unit (its lookup and rate
  bucket are one more statement per request). Receipts stay with the units that created the
  notice (README, "Oversight"): the DING is sent with that key, so the notice is its own (an
  admin's DING would answer 404 to every receipt of a unit key, rightly). The dev process gets
  a service rate limit far above what is measured (the default, 1,000/s, would answer 429s);
* **baseline**: the same clients on ``GET /healthz`` for the same time, before and after.

Every phase also prints the CPU it cost per request (the API process, PostgreSQL with its
backends, the worker) and the load average when it ended: the machine is shared, and CPU per
request is the figure that other load skews least.

Targets (issue 13): batch >= 20,000 receipts/s; single >= 2,000/s with p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from benchmarks.fanout.org import create_org, member_id
from benchmarks.harness.cpu import _tree_cpu, find_server_pids
from benchmarks.harness.servers import BenchError, code_version, connected, servers, stop_on_sigterm
from benchmarks.makerun import Dev, wait_ready
from notifier.settings import Settings

BATCH = 10_000


async def closed_loop(
    clients: int, seconds: float, one: Callable[[aiohttp.ClientSession], Awaitable[bool]]
) -> tuple[float, list[float], int]:
    """``clients`` loops of ``one`` for ``seconds``: (requests/s, latencies in ms, failures)."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal failures
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                ok = await one(http)
                latencies.append((time.perf_counter() - t) * 1000)
                failures += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return len(latencies) / elapsed, latencies, failures


class Phases:
    """CPU per phase: the API process, PostgreSQL (with its backends), the worker; and the load."""

    def __init__(self, dev: Dev, postmaster: int | None) -> None:
        self.dev, self.postmaster = dev, postmaster

    def snap(self) -> tuple[float, float, float]:
        workers, api = self.dev.cpu()
        return api, _tree_cpu(self.postmaster) if self.postmaster else 0.0, workers

    def cost(self, before: tuple[float, float, float], n: int) -> str:
        after = self.snap()
        api, pg, wk = (1e6 * (a - b) / max(1, n) for a, b in zip(after, before, strict=True))
        load = os.getloadavg()[0]
        return (
            f"CPU/request: API {api:,.0f} us, PostgreSQL {pg:,.0f} us, worker {wk:,.0f} us; load {load:.2f}"
        )


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def benchmark(opts: argparse.Namespace, settings: Settings, tmp: Path) -> list[str]:
    async with connected(settings) as (pool, _queue):
        prefix = "rc" + secrets.token_hex(3)
        root = await create_org(pool, prefix, opts.members, "http://127.0.0.1:9/hook")
        # Services' rate limit (Settings.rate_limits) far above any rate measured here
        os.environ["NOTIFIER_RATE_LIMITS__SERVICE__PER_SECOND"] = "1000000"
        os.environ["NOTIFIER_RATE_LIMITS__SERVICE__BURST"] = "1000000"
        dev = Dev(settings, 1, tmp / "dev.log")
        lines: list[str] = []
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(dev, http, 1)
                headers = {"Authorization": f"Bearer {dev.token}"}
                service = await issue_service_key(dev, http, root)
                notice_id = await send_ding_inapp(dev, http, service, {"units": [root]})
                deadline = time.monotonic() + 300
                while True:
                    n = await pool.fetchval(
                        "SELECT coalesce(sum(recipients), 0) FROM notice_counts WHERE notice_id = $1",
                        notice_id,
                    )
                    state = await pool.fetchval("SELECT state FROM notices WHERE id = $1", notice_id)
                    if n == opts.members and state == "active":
                        break
                    if time.monotonic() > deadline:
                        raise BenchError("the in-app notice did not fan out within 300s")
                    dev.check()
                    await asyncio.sleep(0.1)

                async def healthz(h: aiohttp.ClientSession) -> bool:
                    async with h.get(f"{dev.url}/healthz") as resp:
                        await resp.read()
                        return resp.status == 200

                postmaster, _ = await find_server_pids(pool, _queue)
                meter = Phases(dev, postmaster)
                t = meter.snap()
                base1, base_lat1, _ = await closed_loop(opts.clients, opts.seconds, healthz)
                cost_base1 = meter.cost(t, int(base1 * opts.seconds))

                # batch: half the members, 10,000 per call, each call's last item a repeat of its first
                half = opts.members // 2
                t = meter.snap()
                t0 = time.perf_counter()
                for start in range(0, half, BATCH - 1):
                    items = [
                        {"notice_id": notice_id, "member_id": member_id(prefix, i), "type": "read"}
                        for i in range(start, min(half, start + BATCH - 1))
                    ]
                    items.append(items[0])
                    async with http.post(
                        f"{dev.url}/v1/receipts:batch", json={"receipts": items}, headers=headers
                    ) as resp:
                        body = await resp.json()
                        if resp.status != 200 or (body["recorded"], body["already_read"]) != (
                            len(items) - 1,
                            1,
                        ):
                            raise BenchError(f"batch answered {resp.status}: {str(body)[:300]}")
                batch_s = time.perf_counter() - t0
                cost_batch = meter.cost(t, half)
                await check_counters(pool, notice_id, half)

                # single: the other half, one member per request; an admin's, then a service key's
                nxt = iter(range(half, opts.members))

                statuses: dict[str, dict[int, int]] = {}

                def single(token: str) -> Callable[[aiohttp.ClientSession], Awaitable[bool]]:
                    auth = {"Authorization": f"Bearer {token}"}
                    seen = statuses.setdefault(token, {})

                    async def one(h: aiohttp.ClientSession) -> bool:
                        i = next(nxt, None)
                        if i is None:
                            return False
                        body = {"member_id": member_id(prefix, i), "type": "read"}
                        async with h.post(
                            f"{dev.url}/v1/notices/{notice_id}/receipts", json=body, headers=auth
                        ) as resp:
                            await resp.read()
                            seen[resp.status] = seen.get(resp.status, 0) + 1
                            return resp.status == 200

                    return one

                t = meter.snap()
                single_rate, single_lat, single_fail = await closed_loop(
                    opts.clients, opts.seconds, single(dev.token)
                )
                cost_single = meter.cost(t, len(single_lat))
                t = meter.snap()
                svc_rate, svc_lat, svc_fail = await closed_loop(opts.clients, opts.seconds, single(service))
                cost_svc = meter.cost(t, len(svc_lat))
                t = meter.snap()
                base2, base_lat2, _ = await closed_loop(opts.clients, opts.seconds, healthz)
                cost_base2 = meter.cost(t, int(base2 * opts.seconds))
                done = half + len(single_lat) - single_fail + len(svc_lat) - svc_fail
                await check_counters(pool, notice_id, done)
        except BaseException:
            print(dev.log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            await asyncio.to_thread(dev.stop)
        base = statistics.median([base1, base2])
        batch_rate = half / batch_s
        lines += [
            "",
            f"receipts benchmark: {opts.members:,} in-app recipients, notifier dev --processes 1, "
            f"{opts.clients} clients, {opts.seconds:.0f}s per phase, code {code_version()}",
            f"baseline GET /healthz: {base1:,.0f}/s before, {base2:,.0f}/s after "
            f"(p99 {p(base_lat1, 0.99):.1f} / {p(base_lat2, 0.99):.1f} ms)",
            f"  before: {cost_base1}",
            f"  after:  {cost_base2}",
            f"batch POST /v1/receipts:batch ({BATCH - 1:,} + 1 repeat/call): "
            f"{half:,} reads in {batch_s:.2f}s = "
            f"{batch_rate:,.0f} receipts/s ({batch_rate / base:.1f}x healthz requests/s); counters right"
            f"   target >= 20,000/s",
            f"  {cost_batch} (per receipt)",
            f"single POST .../receipts, admin token: {single_rate:,.0f}/s "
            f"({single_rate / base:.2f}x healthz), "
            f"p50 {p(single_lat, 0.5):.1f} ms, p99 {p(single_lat, 0.99):.1f} ms, "
            f"answers {statuses.get(dev.token)}"
            f"   target >= 2,000/s, p99 <= 50 ms",
            f"  {cost_single}",
            f"single POST .../receipts, service key: {svc_rate:,.0f}/s ({svc_rate / base:.2f}x healthz), "
            f"p50 {p(svc_lat, 0.5):.1f} ms, p99 {p(svc_lat, 0.99):.1f} ms, answers {statuses.get(service)}",
            f"  {cost_svc}",
            f"counters right after every phase ({done:,} reads: notice and per-unit counters equal the rows)",
        ]
        return lines


async def issue_service_key(dev: Dev, http: aiohttp.ClientSession, unit: str) -> str:
    """A service key bound to the benchmark's root unit (its rate limit: 1000/s, burst 5000)."""
    async with http.post(
        f"{dev.url}/v1/api-keys",
        json={"name": "receipts benchmark", "role": "service", "unit_id": unit},
        headers={"Authorization": f"Bearer {dev.token}"},
    ) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise BenchError(f"issuing a service key answered {resp.status}: {body}")
        return str(body["token"])


async def check_counters(pool: Any, notice_id: str, reads: int) -> None:
    """The notice's read counter, and its root unit's, equal the reads recorded and the rows."""
    rows = await pool.fetchval(
        "SELECT count(*) FROM recipients WHERE notice_id = $1 AND read_at IS NOT NULL", notice_id
    )
    counted = await pool.fetchval(
        "SELECT coalesce(sum(read), 0) FROM notice_counts WHERE notice_id = $1", notice_id
    )
    units = await pool.fetch(
        "SELECT k.unit_id, sum(k.read) AS read, (SELECT count(*) FROM recipients t WHERE t.notice_id = $1 "
        "AND t.read_at IS NOT NULL AND k.unit_id = ANY(t.units)) AS rows "
        "FROM notice_unit_counts k WHERE k.notice_id = $1 AND NOT k.direct GROUP BY k.unit_id",
        notice_id,
    )
    wrong = [(u["unit_id"], u["read"], u["rows"]) for u in units if u["read"] != u["rows"]]
    if not (rows == counted == reads) or wrong or not units:
        raise BenchError(f"counters: rows={rows}, read={counted}, sent {reads}; units wrong: {wrong[:5]}")


async def send_ding_inapp(dev: Dev, http: aiohttp.ClientSession, token: str, audience: dict[str, Any]) -> str:
    """An in-app DING sent with ``token`` (a unit key: the notice is that unit's own)."""
    body = {"kind": "ding", "title": "Benchmark", "body": "receipts benchmark", "audience": audience}
    body["channels"] = ["inapp"]
    async with http.post(
        f"{dev.url}/v1/notices", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        text = await resp.text()
        if resp.status != 202:
            raise BenchError(f"POST /v1/notices answered {resp.status}: {text[:300]}")
        return str(json.loads(text)["id"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.receipts", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--members", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    opts = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-receipts-")))
            db_url, redis_url = stack.enter_context(servers(tmp))
            settings = Settings(
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"notifier:receipts:{secrets.token_hex(4)}",
                webhook_secret=SecretStr("whsec_" + "A" * 32),
                allow_private_targets=True,
            )
            print("\n".join(asyncio.run(benchmark(opts, settings, tmp))), flush=True)
    except KeyboardInterrupt:
        return 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
