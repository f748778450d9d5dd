"""The fan-out table: seconds to final, deliveries/s, the ratio to the naive baseline, where the
CPU went, and the targets the project set."""

from __future__ import annotations

import os

from benchmarks.fanout import Options
from benchmarks.harness.measure import CaseResult, against
from benchmarks.harness.servers import code_version
from notifier.settings import Settings


def format_report(
    results: list[CaseResult], opts: Options, settings: Settings, receiver: dict[str, int]
) -> str:
    naive = {r.channel: r for r in results if r.case.startswith("naive")}
    lines = [
        "",
        f"fan-out benchmark: {opts.members:,} members, {opts.workers} worker process(es), "
        f"{os.cpu_count()} CPUs, code {code_version()}",
        f"worker settings: fanout_chunk_size={settings.fanout_chunk_size} "
        f"fanout_parts={settings.fanout_parts} fanout_first_chunk_size={settings.fanout_first_chunk_size} "
        f"delivery_batch_size={settings.delivery_batch_size} "
        f"delivery_parallel_jobs={settings.delivery_parallel_jobs} "
        f"delivery_concurrency={settings.delivery_concurrency} worker_max_jobs={settings.worker_max_jobs} "
        f"db_pool_max={settings.db_pool_max}",
        "",
        f"{'case':<15} {'recipients':>10} {'s to final':>11} {'deliveries/s':>13} {'vs naive':>9} "
        f"{'fan-out s':>9} {'failed':>7}  note",
        "-" * 100,
    ]
    for r in results:
        base = naive.get(r.channel)
        ratio = against(r.rate, base.rate if base is not None and base is not r else None)
        fan = f"{r.fanout_seconds:.3f}" if r.fanout_seconds is not None else "-"
        lines.append(
            f"{r.case:<15} {r.recipients:>10,} {r.seconds:>11.3f} {r.rate:>13,.0f} {ratio:>9} {fan:>9} "
            f"{r.failed:>7,}  {r.note}"
        )
    lines += [
        "",
        "CPU seconds during each case (other = processes the benchmark did not start; machine = all):",
    ]
    for r in results:
        ours = {k: v for k, v in r.cpu.items() if k != "machine"}
        parts = " ".join(f"{k}={v:.2f}" for k, v in sorted(ours.items()))
        other = max(0.0, r.cpu.get("machine", 0.0) - sum(ours.values()))
        busy = r.cpu.get("machine", 0.0) / r.seconds if r.seconds else 0.0
        lines.append(
            f"  {r.case:<15} wall={r.seconds:.2f} {parts} other={other:.2f} machine={busy:.2f} cores busy"
        )
    lines += ["", f"receiver: {receiver}"]
    lines += ["", *targets(results, opts)]
    return "\n".join(lines)


def targets(results: list[CaseResult], opts: Options) -> list[str]:
    out = []
    for r in results:
        if r.case == "webhook" and r.recipients == 10_000:
            ok = r.rate >= 5_000 and r.failed == 0
            out.append(f"target 10,000 webhook >= 5,000 deliveries/s: {r.rate:,.0f}/s -> {_verdict(ok)}")
        if r.case == "inapp" and r.recipients == 100_000:
            ok = r.seconds <= 3.0 and r.failed == 0
            out.append(
                f"target 100,000 inapp final within 3 s of the 202: {r.seconds:.3f}s -> {_verdict(ok)}"
            )
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
