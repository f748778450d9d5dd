"""Fan-out benchmark: one notice to a whole unit tree, in-app and webhook, against a naive baseline.

Run::

    .venv/bin/python -m benchmarks.fanout [--members N] [--workers W] [--channels inapp,webhook]

What it does:

* starts embedded PostgreSQL + Redis in a temp dir (``fast=True``) unless NOTIFIER_DATABASE_URL
  and NOTIFIER_REDIS_URL are set, and migrates;
* creates N members under a small unit tree (1 root, 4 branches, 16 groups; every 10th member
  also sits in its branch) with one webhook contact each, set-based in SQL (setup, not measured);
* starts a webhook receiver in its own process (a minimal asyncio HTTP/1.1 keep-alive server that
  verifies every Standard Webhooks signature and counts distinct message ids in shared memory);
* starts W ``notifier worker`` processes (NOTIFIER_* env; any NOTIFIER_* you export, e.g.
  NOTIFIER_DELIVERY_BATCH_SIZE, reaches them too), waits until each has its database pool, warms
  them up with a small notice, then for each channel inserts a notice to the whole tree, starts the
  clock when it commits (what the API answers 202 after), enqueues the fan-out and polls until every
  recipient is final (delivered + failed == recipients == N, state 'active'; webhook: and the
  receiver has counted N distinct, correctly signed messages);
* the naive baseline: one arq job per recipient (enqueued by the benchmark acting as the fan-out,
  after one audience query), each job POSTs one signed webhook (webhook only) and INSERTs one
  delivery row; W naive worker processes with the same max_jobs / poll delay / JSON serializer.
  It is capped at --naive-cap recipients (default 5,000) to bound the run time;
* prints a table (seconds to final, deliveries/s, ratio vs naive) and where the CPU went.

Every wait is bounded, and every process and server this script started is stopped at the end,
also on error or Ctrl-C.

Layout: ``org`` builds the tree, ``engine`` is the case under test, ``naive`` the baseline case,
``report`` prints the table, ``__main__`` parses the flags and runs them; servers, worker
processes, the receiver, CPU accounting and polling come from ``benchmarks.harness``.
"""

from __future__ import annotations

from dataclasses import dataclass

CHANNELS = ("inapp", "webhook")
WARMUP_MEMBERS = 256


@dataclass
class Options:
    members: int
    workers: int
    channels: list[str]
    naive: bool
    naive_cap: int
    timeout: float
    repeat: int = 1
