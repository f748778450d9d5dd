"""A batch keeps its lease while its sends wait and run (issue 7, defect 3).

Slow receivers (each answers after ~9 s), two notices at once sharing few send slots, and a lease
shorter than any single request: without renewal the reconciler hands the claimed rows back and
they are sent again. With it, every member gets exactly one request."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.db import deliveries
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.lease import LeaseKeeper
from tests.conftest import running_worker, wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org, post
from tests.workers.test_delivery_layer import ScriptedChannel, env, make_members, make_notice

__all__ = ["env"]  # the delivery-layer fixture, used here too

MEMBERS_PER_NOTICE = 8


async def test_slow_sends_behind_shared_send_slots_go_out_once(
    client: TestClient[Any, Any], receiver: WebhookReceiver, db: asyncpg.Connection, settings: Settings
) -> None:
    await build_org(client, groups=2, members=2 * MEMBERS_PER_NOTICE)  # m00000..: g0, g1, g0, …
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{receiver.url}"}}',
    )
    receiver.delay = 9.0
    tuned = settings.model_copy(
        update={
            "delivery_lease_seconds": 4.0,  # far shorter than one request
            "delivery_concurrency": MEMBERS_PER_NOTICE,  # half the sends wait a whole round for a slot
            "delivery_batch_size": MEMBERS_PER_NOTICE,
            "webhook_timeout_seconds": 30.0,
        }
    )
    async with running_worker(tuned):
        ids = await asyncio.gather(
            *(
                post(
                    client,
                    "/v1/notices",
                    {
                        "kind": "ding",
                        "title": "t",
                        "body": "b",
                        "audience": {"units": [unit]},
                        "channels": ["webhook"],
                    },
                    status=202,
                )
                for unit in ("g0", "g1")
            )
        )

        async def all_delivered() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM deliveries WHERE state = 'delivered' AND notice_id = ANY($1::uuid[])",
                [i["id"] for i in ids],
            )
            return bool(n == 2 * MEMBERS_PER_NOTICE)

        await wait_until(all_delivered, within=60)
        # The reconciler ran throughout (every second) and found no lease to take back.
        expired = await db.fetchval("SELECT count(*) FROM deliveries WHERE error LIKE 'lease expired%'")
    assert expired == 0
    assert receiver.requests == {f"m{i:05d}": 1 for i in range(2 * MEMBERS_PER_NOTICE)}
    attempts = await db.fetchval("SELECT max(attempts) FROM deliveries")
    assert attempts == 1


class _FailingOnce:
    """The real pool, except that the first renewal fails with an error that is not a database
    outage (a bug, a pool being closed): the keeper must log it and keep renewing."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.failed = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed += 1
            raise RuntimeError("not a database outage")
        return await self.pool.execute(*args, **kwargs)


async def test_a_renewal_that_fails_oddly_neither_stops_renewing_nor_hides_the_batch(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, _ = env
    await make_members(db, 3)
    nid = await make_notice(deps, db, ["scripted"])
    lease = 3.0
    started = asyncio.get_running_loop().time()
    claimed = await deliveries.claim(deps.pool, nid, "scripted", 10, lease)
    flaky = _FailingOnce(deps.pool)
    async with LeaseKeeper(flaky, claimed, lease, started):  # type: ignore[arg-type]
        await asyncio.sleep(2 * lease)  # twice the lease: only renewals keep the rows
    assert flaky.failed == 1
    held = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state = 'sending' "
        "AND lease_until > notifier_now()",
        nid,
    )
    assert held == 3
