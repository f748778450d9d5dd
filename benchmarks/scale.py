"""Issue 13 targets 4, 6 and 7 through ``notifier dev`` (the API and its worker processes), each
against a baseline taken in the same run by the same client.

    .venv/bin/python -m benchmarks.scale [--targets 4,6,7] [--members 100000] [--processes 2]

* **4, time to first push**: 50 sequential one-member DINGs on webhook (after one untimed DING);
  for each, the time from the 202 to the receiver (its shared counter, polled every 0.5 ms).
  Baseline: the same client posting a signed webhook to the same receiver, timed the same way.
  Target: p99 <= 250 ms, p50 <= 60 ms.
* **6, status under load**: an in-app notice to ``--members`` members in 200 units (5 levels); while
  it fans out and a read storm runs (4 clients posting single receipts, one posting batches of
  2,000), one client times ``GET /v1/notices/{id}`` and, alternately, ``GET /healthz``.
  Target: status p99 <= 10 ms.
* **7, escalation at scale**: that notice carries a one-step policy (remind in-app after 1 min).
  Once it is active the engine clock jumps to 1.5 s before the step is due, and from there runs
  in real time, as in production (where the clock never jumps): the engine's tick, looking one
  period ahead, wakes itself at the due time. The step reminds every unread member. Timed: from
  the step's due time until its event is committed (and until its first transaction began, from
  its first reminder's engine time), and the longest status read and single receipt during the
  step (probes in a loop, from the jump to 0.5 s after the event; the receipts read members the
  storm left unread, in random order: members the step is reminding). Baseline: the same probes
  before the jump. Target: the step <= 2 s, no read blocked > 100 ms.
  Then the root unit's daily lesson (every member, 200 units): the clock jumps to 1.5 s before its
  lesson time and runs in real time from there (the tick's look-ahead wakes the engine at the
  lesson time, as in production); timed from the lesson time until the notice is active with
  every recipient in. Target: <= 2 s after its time.

Each figure is printed with the load average when it was taken: the machine is shared.
Bounded: every wait has a deadline, every loop a count or an end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from benchmarks.fanout.org import create_org
from benchmarks.harness.cpu import _tree_cpu, find_server_pids, machine_busy
from benchmarks.harness.receiver import Receiver
from benchmarks.harness.servers import BenchError, code_version, connected, servers, stop_on_sigterm
from benchmarks.makerun import Dev, send_ding, wait_ready
from benchmarks.receipts import p
from benchmarks.unit_counts import seed
from notifier.channels.webhook import decode_secret, sign
from notifier.db.pool import Pool
from notifier.settings import Settings

# The clock jumps to this long before the step is due; from there it runs in real time.
STEP_LEAD_SECONDS = 1.5
SECRET = "whsec_" + "QkVOQ0hNQVJLU0VDUkVUU0VDUkVUU0VDUkVU"


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


class Cpu:
    """CPU-seconds of PostgreSQL (server and backends), of notifier dev (API and workers) and
    of the whole machine, over a window: figures per item that other load skews less than wall
    times, and how busy the rest of the machine was (the other engineers' work)."""

    def __init__(self, dev: Dev, postmaster: int | None) -> None:
        self.dev, self.postmaster = dev, postmaster

    def snapshot(self) -> tuple[float, float, float, float]:
        workers, api = self.dev.cpu()
        pg = _tree_cpu(self.postmaster) if self.postmaster is not None else 0.0
        return time.perf_counter(), pg, workers + api + sum(os.times()[:2]), machine_busy()

    @staticmethod
    def delta(
        before: tuple[float, float, float, float], after: tuple[float, float, float, float]
    ) -> tuple[float, float, float]:
        """(seconds, PostgreSQL CPU-s, cores busy with other work)."""
        wall, pg, ours, machine = (a - b for a, b in zip(after, before, strict=True))
        return wall, pg, max(0.0, machine - pg - ours) / max(wall, 1e-9)


def ms(values: list[float]) -> str:
    return f"p50 {p(values, 0.5):.1f} ms, p99 {p(values, 0.99):.1f} ms, max {max(values, default=0):.1f} ms"


async def arrived(receiver: Receiver, before: int, deadline: float) -> float:
    """When the receiver counted one more message (perf_counter), polling its shared memory."""
    while receiver.distinct() <= before:
        if time.perf_counter() > deadline:
            raise BenchError("the webhook did not arrive within 10 s")
        await asyncio.sleep(0.0005)
    return time.perf_counter()


async def first_push(dev: Dev, http: aiohttp.ClientSession, pool: Pool, receiver: Receiver) -> list[str]:
    prefix = "fp" + secrets.token_hex(3)
    await create_org(pool, prefix, 1, receiver.url)
    member = await pool.fetchval("SELECT id FROM members WHERE id LIKE $1 || '%'", prefix)
    ours: list[float] = []
    plain: list[float] = []
    key = decode_secret(SECRET)
    for i in range(51):  # the first warms the processes up (connections, prepared statements): not timed
        before = receiver.distinct()
        _, at_202 = await send_ding(dev, http, {"members": [member]})
        took = (await arrived(receiver, before, at_202 + 10) - at_202) * 1000
        if i:
            ours.append(took)
    for _ in range(50):
        body = json.dumps({"type": "notice.created", "data": {"id": str(uuid.uuid4())}}).encode()
        msg_id, ts = "msg_" + uuid.uuid4().hex, int(time.time())
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(key, msg_id, ts, body),
            "content-type": "application/json",
        }
        before = receiver.distinct()
        t0 = time.perf_counter()
        async with http.post(receiver.url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise BenchError(f"the receiver refused the baseline's webhook: {resp.status}")
        plain.append((await arrived(receiver, before, t0 + 10) - t0) * 1000)
    return [
        f"target 4, time to first push (50 sequential one-member DINGs, webhook): {ms(ours)}; {load()}"
        "   target p99 <= 250 ms, p50 <= 60 ms",
        f"  baseline, the client's own signed POST to the receiver: {ms(plain)}",
    ]


class Storm:
    """Reads landing on a notice while it fans out: single receipts and batches of 2,000."""

    def __init__(self, dev: Dev, http: aiohttp.ClientSession, notice_id: str, members: int) -> None:
        self.dev, self.http, self.notice_id, self.members = dev, http, notice_id, members
        self.auth = {"Authorization": f"Bearer {dev.token}"}
        self.stop = asyncio.Event()
        self.status: dict[int, int] = {}
        self.recorded = 0
        self.singles: list[float] = []  # each single receipt's time, ms

    async def single(self, lane: int) -> None:
        i = lane
        while not self.stop.is_set() and i < self.members // 2:
            body = {"member_id": f"m{1 + i:07d}", "type": "read"}
            url = f"{self.dev.url}/v1/notices/{self.notice_id}/receipts"
            t0 = time.perf_counter()
            async with self.http.post(url, json=body, headers=self.auth) as resp:
                await resp.read()
                self.status[resp.status] = self.status.get(resp.status, 0) + 1
            self.singles.append((time.perf_counter() - t0) * 1000)
            i += 4

    async def batches(self) -> None:
        start = self.members // 2
        while not self.stop.is_set() and start < self.members:
            items = [
                {"notice_id": self.notice_id, "member_id": f"m{1 + i:07d}", "type": "read"}
                for i in range(start, min(self.members, start + 2000))
            ]
            url = f"{self.dev.url}/v1/receipts:batch"
            async with self.http.post(url, json={"receipts": items}, headers=self.auth) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise BenchError(f"batch answered {resp.status}: {str(body)[:200]}")
                self.recorded += body["recorded"]
                if body["not_found"]:  # not fanned out to them yet: again, later
                    await asyncio.sleep(0.05)
                    continue
            start += 2000

    def tasks(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.single(lane)) for lane in range(4)] + [
            asyncio.create_task(self.batches())
        ]


async def timed(call: Callable[[], Awaitable[int]], into: list[float]) -> int:
    t0 = time.perf_counter()
    status = await call()
    into.append((time.perf_counter() - t0) * 1000)
    return status


async def status_under_load(
    dev: Dev, http: aiohttp.ClientSession, pool: Pool, members: int, cpu: Cpu
) -> tuple[list[str], str]:
    auth = {"Authorization": f"Bearer {dev.token}"}
    policy = {"steps": [{"after": "PT1M", "remind": ["inapp"]}]}
    body = {
        "kind": "notice",
        "title": "Scale",
        "body": "benchmark",
        "audience": {"units": ["root"]},
        "channels": ["inapp"],
        "escalation": policy,
    }
    async with http.post(f"{dev.url}/v1/notices", json=body, headers=auth) as resp:
        created = await resp.json()
        if resp.status != 202:
            raise BenchError(f"POST /v1/notices answered {resp.status}: {created}")
    t_202 = time.perf_counter()
    notice_id = str(created["id"])

    async def status() -> int:
        async with http.get(f"{dev.url}/v1/notices/{notice_id}", headers=auth) as r:
            data = await r.json()
            state[0] = data.get("state", "")
            return r.status

    async def healthz() -> int:
        async with http.get(f"{dev.url}/healthz") as r:
            await r.read()
            return r.status

    state = [""]
    storm = Storm(dev, http, notice_id, members)
    tasks = storm.tasks()
    reads: list[float] = []
    base: list[float] = []
    fanned = None
    deadline = t_202 + 120
    before = cpu.snapshot()
    try:
        while time.perf_counter() < deadline:
            if await timed(status, reads) != 200:
                raise BenchError("GET /v1/notices/{id} did not answer 200")
            await timed(healthz, base)
            if fanned is None and state[0] == "active":
                fanned = time.perf_counter() - t_202
            if fanned is not None and time.perf_counter() - t_202 > fanned + 2:
                break
            dev.check()
    finally:
        _, _, others = Cpu.delta(before, cpu.snapshot())
        storm.stop.set()
        _, stuck = await asyncio.wait(tasks, timeout=10)
        waiting = []
        if stuck:  # a read still running 10 s after the storm stopped is a finding: say what it runs
            waiting = [
                f"{r['state']}/{r['wait_event'] or 'on CPU'} for {r['running'].total_seconds():.0f}s: "
                + " ".join(r["query"].split())
                for r in await pool.fetch(
                    "SELECT state, wait_event, now() - query_start AS running, left(query, 60) AS query "
                    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state = 'active' AND now() - query_start > interval '5 seconds'"
                )
            ]
            await pool.execute(  # so that what follows is measured without them
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active' "
                "AND now() - query_start > interval '5 seconds'"
            )
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
    lines = [
        f"target 6, GET /v1/notices/{{id}} of a {members:,}-recipient notice during its fan-out "
        f"({fanned or float('nan'):.2f}s to active) and a read storm ({storm.recorded:,} batch reads, "
        f"single receipts {storm.status}): {len(reads)} reads, {ms(reads)}; {load()}   target p99 <= 10 ms",
        f"  baseline GET /healthz, interleaved: {ms(base)}",
        f"  single receipts of the storm (answered): {len(storm.singles)}, {ms(storm.singles)}",
        f"  other work on the machine meanwhile: {others:.2f} cores (of {os.cpu_count()})",
    ]
    if stuck:
        lines.append(
            f"  {len(stuck)} storm clients still waiting 10 s after the storm stopped; "
            "cancelled statements > 5 s:"
        )
        lines += [f"    {w}" for w in waiting]
    return lines, notice_id


async def escalation_step(
    dev: Dev, http: aiohttp.ClientSession, pool: Pool, notice_id: str, cpu: Cpu
) -> list[str]:
    auth = {"Authorization": f"Bearer {dev.token}"}
    unread = await pool.fetchval(
        "SELECT count(*) FROM recipients WHERE notice_id = $1 AND read_at IS NULL", notice_id
    )
    # The probe's receipts read members the storm left unread (it reads from the first and from
    # the middle up), in random order: members the step is reminding, whose rows it locks.
    members: int = await pool.fetchval("SELECT count(*) FROM recipients WHERE notice_id = $1", notice_id)
    unread_tail = list(range(members * 7 // 10 + 1, members + 1))
    random.Random(13).shuffle(unread_tail)
    probe_member = iter(unread_tail)

    async def status() -> int:
        async with http.get(f"{dev.url}/v1/notices/{notice_id}", headers=auth) as r:
            await r.read()
            return r.status

    async def receipt() -> int:
        body = {"member_id": f"m{next(probe_member):07d}", "type": "read"}
        async with http.post(f"{dev.url}/v1/notices/{notice_id}/receipts", json=body, headers=auth) as r:
            await r.read()
            return r.status

    async def probe(until: Callable[[], bool], gets: list[float], posts: list[float]) -> None:
        while not until():
            await timed(status, gets)
            await timed(receipt, posts)

    quiet_gets: list[float] = []
    quiet_posts: list[float] = []
    t_end = time.perf_counter() + 3
    quiet = cpu.snapshot()
    await probe(lambda: time.perf_counter() > t_end, quiet_gets, quiet_posts)
    quiet_wall, quiet_pg, _ = Cpu.delta(quiet, cpu.snapshot())
    fired: list[float] = []
    gets: list[float] = []
    posts: list[float] = []

    async def watch(t_due: float) -> None:
        while time.perf_counter() < t_due + 60:
            n = await pool.fetchval(
                "SELECT count(*) FROM notice_events WHERE notice_id = $1 AND kind = 'step_fired'", notice_id
            )
            if n:
                fired.append(time.perf_counter() - t_due)
                return
            await asyncio.sleep(0.01)
        raise BenchError("the escalation step did not fire within 60 s of its due time")

    due_in = "SELECT extract(epoch FROM due_at - notifier_now()) FROM escalations WHERE notice_id = $1"
    due_at = await pool.fetchval("SELECT due_at FROM escalations WHERE notice_id = $1", notice_id)
    await jump_clock(pool, float(await pool.fetchval(due_in, notice_id)) - STEP_LEAD_SECONDS)
    t_due = time.perf_counter() + float(await pool.fetchval(due_in, notice_id))
    watcher = asyncio.create_task(watch(t_due))
    before = cpu.snapshot()
    at_fired: list[tuple[float, float, float, float]] = []

    def step_over() -> bool:
        if fired and not at_fired:
            at_fired.append(cpu.snapshot())
        return bool(fired) and time.perf_counter() > t_due + fired[0] + 0.5

    await probe(step_over, gets, posts)
    await watcher
    # From the jump (1.5 s before the step) to its event: the probes' own PostgreSQL CPU rate,
    # measured before the jump, taken off.
    wall, pg, others = Cpu.delta(before, at_fired[0])
    step_pg = max(0.0, pg - quiet_pg / max(quiet_wall, 1e-9) * wall)
    reminded = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND step > 0", notice_id
    )
    began = await pool.fetchval(  # a reminder's engine time is its transaction's start
        "SELECT extract(epoch FROM min(created_at) - $2::timestamptz) FROM deliveries "
        "WHERE notice_id = $1 AND step > 0",
        notice_id,
        due_at,
    )
    return [
        f"target 7, escalation step over {unread:,} unread: committed {fired[0]:.2f}s after its due time "
        f"(its first transaction began {float(began):.3f}s after it), {reminded:,} reminded; {load()}"
        "   target <= 2 s",
        f"  PostgreSQL {step_pg:.2f} CPU-s for the step, {step_pg / max(reminded, 1) * 1e6:.1f} us per "
        f"reminder (less the probes' rate before the jump); other work on the machine {others:.2f} cores",
        f"  during the step: status {ms(gets)}; single receipt {ms(posts)}   target max <= 100 ms",
        f"  baseline, before the jump: status {ms(quiet_gets)}; single receipt {ms(quiet_posts)}",
    ]


async def jump_clock(pool: Pool, seconds: float) -> None:
    await pool.execute(
        "INSERT INTO engine_clock (id, offset_interval) VALUES (true, make_interval(secs => $1)) "
        "ON CONFLICT (id) DO UPDATE "
        "SET offset_interval = engine_clock.offset_interval + excluded.offset_interval",
        seconds,
    )


async def daily_lesson(
    dev: Dev, http: aiohttp.ClientSession, pool: Pool, members: int, cpu: Cpu
) -> list[str]:
    """The root unit's lesson (its subtree: every member, 200 units) at its lesson time: the clock
    jumps to just before that time and runs in real time; the time from the lesson time until every
    recipient is in and the notice active is taken."""
    now: dt.datetime = await pool.fetchval("SELECT notifier_now()")
    at = (now + dt.timedelta(minutes=2)).astimezone(dt.UTC).replace(second=0, microsecond=0)
    await pool.execute("UPDATE units SET timezone = 'UTC', lesson_time = $1 WHERE id = 'root'", at.time())
    auth = {"Authorization": f"Bearer {dev.token}"}
    lesson = {"title": "Daily lesson", "body": "Five minutes of reading."}
    async with http.put(f"{dev.url}/v1/units/root/lessons/{at.date()}", json=lesson, headers=auth) as resp:
        if resp.status != 201:
            raise BenchError(f"PUT lesson answered {resp.status}: {await resp.text()}")
    lead = (at - await pool.fetchval("SELECT notifier_now()")).total_seconds() - STEP_LEAD_SECONDS
    await jump_clock(pool, lead)
    t_due = time.perf_counter() + float(
        await pool.fetchval("SELECT extract(epoch FROM $1::timestamptz - notifier_now())", at)
    )
    sent = final = None
    notice_id = ""
    before = cpu.snapshot()
    while time.perf_counter() < t_due + 60:
        row = await pool.fetchrow(
            "SELECT n.id, n.state, (SELECT coalesce(sum(recipients), 0) FROM notice_counts k "
            "WHERE k.notice_id = n.id) AS recipients FROM lesson_runs r JOIN notices n ON n.id = r.notice_id "
            "WHERE r.unit_id = 'root' AND r.day = $1",
            at.date(),
        )
        if row is not None and sent is None:
            sent, notice_id = time.perf_counter() - t_due, str(row["id"])
        if row is not None and row["state"] == "active" and row["recipients"] == members:
            final = time.perf_counter() - t_due
            break
        dev.check()
        await asyncio.sleep(0.01)
    if final is None:
        raise BenchError("the lesson did not fan out within 60 s of its time")
    _, pg, others = Cpu.delta(before, cpu.snapshot())  # from the jump: the engine idle until its time
    # Where the time went, in engine time from the lesson time: a recipient's created_at is its
    # chunk's transaction start, so the first and last chunk's starts bound the fan-out statements.
    began, last_began = tuple(
        await pool.fetchrow(
            "SELECT extract(epoch FROM min(created_at) - $2::timestamptz), "
            "extract(epoch FROM max(created_at) - $2::timestamptz) FROM recipients WHERE notice_id = $1",
            notice_id,
            at,
        )
        or (0, 0)
    )
    return [
        f"target 7, daily lesson to {members:,} members in 200 units: notice {sent:.2f}s and every recipient "
        f"in, active, {final:.2f}s after its time (the engine woken at its time); {load()}"
        "   target <= 2 s",
        f"  its fan-out's chunks began {float(began):.2f}s to {float(last_began):.2f}s after its time (the "
        f"split and the jobs' pickup before); PostgreSQL {pg:.2f} CPU-s, {pg / members * 1e6:.1f} us per "
        f"recipient; other work on the machine {others:.2f} cores",
    ]


async def benchmark(opts: argparse.Namespace, settings: Settings, tmp: Path) -> list[str]:
    targets = set(opts.targets.split(","))
    lines = [
        "",
        f"scale benchmark: notifier dev --processes {opts.processes}, {opts.members:,} members, "
        f"code {code_version()}",
    ]
    receiver = Receiver(SECRET).start()
    try:
        async with connected(settings) as (pool, queue):
            postmaster, _ = await find_server_pids(pool, queue)
            await seed(pool, opts.members)
            dev = Dev(settings, opts.processes, tmp / "dev.log")
            try:
                async with aiohttp.ClientSession() as http:
                    await wait_ready(dev, http, opts.processes)
                    if "4" in targets:
                        lines += await first_push(dev, http, pool, receiver)
                    if targets & {"6", "7"}:
                        cpu = Cpu(dev, postmaster)
                        more, notice_id = await status_under_load(dev, http, pool, opts.members, cpu)
                        lines += more if "6" in targets else []
                        if "7" in targets:
                            lines += await escalation_step(dev, http, pool, notice_id, cpu)
                            lines += await daily_lesson(dev, http, pool, opts.members, cpu)
            except BaseException:
                print(dev.log.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            finally:
                await asyncio.to_thread(dev.stop)
                if opts.keep_log:
                    await asyncio.to_thread(shutil.copyfile, dev.log, opts.keep_log)
    finally:
        receiver.stop()
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--targets", default="4,6,7")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep-log", default="", help="copy notifier dev's log here")
    opts = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-scale-")))
            db_url, redis_url = stack.enter_context(servers(tmp))
            settings = Settings(
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"notifier:scale:{secrets.token_hex(4)}",
                webhook_secret=SecretStr(SECRET),
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
