"""A hostile answer costs its own row, never a resend of its batch (issue 7, defect 2).

A receiver may answer ``503`` with ``Retry-After: 1e300`` (an interval PostgreSQL cannot hold), a
4xx body holding ``\\u0000`` (text PostgreSQL refuses) or a 2xx with an 8 KB ``Location`` (over
the btree row limit of the ``provider_ref`` index). Every ``Result`` cleans what the provider said
as it is built, and a batch whose write-back the database still refuses is written row by row."""

from __future__ import annotations

import math
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier.channels.base import (
    MAX_ERROR_CHARS,
    MAX_REF_CHARS,
    MAX_RETRY_AFTER_SECONDS,
    Outcome,
    Result,
    StatusUpdate,
)
from notifier.domain.retry import backoff_seconds
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import UNSTORABLE, deliver_notice_channel
from tests.conftest import wait_until
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import build_org, post
from tests.workers.test_delivery_layer import ScriptedChannel, make_members, make_notice

BIG_LOCATION = "https://receiver.example/r/" + "x" * 8000


def test_results_clean_what_the_provider_said() -> None:
    r = Result(1, Outcome.FAILED, error="bad \x00 thing" + "e" * 10_000, provider_ref="ref\x00-1")
    assert r.error is not None and "\x00" not in r.error and len(r.error) == MAX_ERROR_CHARS
    assert r.provider_ref == "ref-1"
    assert Result(1, Outcome.SENT, provider_ref=BIG_LOCATION).provider_ref is None  # a cut id names another
    assert Result(1, Outcome.SENT, provider_ref="x" * MAX_REF_CHARS).provider_ref == "x" * MAX_REF_CHARS
    assert Result(1, Outcome.RETRY, retry_after=1e300).retry_after == MAX_RETRY_AFTER_SECONDS
    assert Result(1, Outcome.RETRY, retry_after=math.inf).retry_after == MAX_RETRY_AFTER_SECONDS
    assert Result(1, Outcome.RETRY, retry_after=-5.0).retry_after == 0.0
    assert Result(1, Outcome.RETRY, retry_after=math.nan).retry_after is None
    update = StatusUpdate("r" * 9000, "failed", error="\x00x")
    assert update.provider_ref is None and update.error == "x"
    # The dispatcher never waits longer than its own cap, whatever the provider asked for.
    assert backoff_seconds(1, base=2.0, cap=600.0, retry_after=MAX_RETRY_AFTER_SECONDS) == 600.0


async def test_each_poison_costs_only_its_own_row(
    client: TestClient[Any, Any], worker: None, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    await build_org(client, groups=1, members=12)
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) SELECT id, 'webhook', $1::jsonb FROM members",
        f'{{"url": "{receiver.url}"}}',
    )
    receiver.responses["m00001"] = [Reply(503, {"Retry-After": "1e300"})]  # then accepted
    receiver.responses["m00002"] = [
        Reply(400, {"Content-Type": "application/json"}, b'{"message": "bad \\u0000 request"}')
    ]
    receiver.responses["m00003"] = [Reply(201, {"Location": BIG_LOCATION})]
    notice = await post(
        client,
        "/v1/notices",
        {
            "kind": "ding",
            "title": "t",
            "body": "b",
            "audience": {"units": ["g0"]},
            "channels": ["webhook"],
        },
        status=202,
    )

    async def settled() -> bool:
        pending = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE notice_id = $1 AND state NOT IN ('delivered', 'failed')",
            notice["id"],
        )
        return bool(pending == 0) and receiver.requests["m00001"] == 2

    await wait_until(settled, within=30)
    rows = {
        r["member_id"]: (r["state"], r["attempts"])
        for r in await db.fetch(
            "SELECT member_id, state, attempts FROM deliveries WHERE notice_id = $1", notice["id"]
        )
    }
    expected = {f"m{i:05d}": ("delivered", 1) for i in range(12)}
    expected["m00001"] = ("delivered", 2)  # retried once, after the retry cap, not after 1e300 s
    expected["m00002"] = ("failed", 1)
    assert rows == expected
    # One request per member; the 503 costs its own member one more. Nobody else heard twice.
    assert receiver.requests == {**{m: 1 for m in expected}, "m00001": 2}


async def test_unstorable_provider_strings_are_cleaned_before_the_write_back(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, channel = env
    await make_members(db, 5)
    nid = await make_notice(deps, db, ["scripted"])

    async def send(batch: list[Any]) -> list[Result]:
        channel.sent.extend(batch)
        out = [Result(o.delivery_id, Outcome.SENT, provider_ref=f"ok-{o.delivery_id}") for o in batch]
        out[1] = Result(batch[1].delivery_id, Outcome.FAILED, error="HTTP 400: bad \x00 request")
        out[2] = Result(batch[2].delivery_id, Outcome.SENT, provider_ref=BIG_LOCATION)
        out[3] = Result(batch[3].delivery_id, Outcome.RETRY, error="HTTP 503", retry_after=1e300)
        return out

    channel.send = send  # type: ignore[method-assign]
    await deliver_notice_channel(deps, nid, "scripted")
    rows = await db.fetch(
        "SELECT state, error, provider_ref, attempts, "
        "extract(epoch FROM next_attempt_at - updated_at) AS wait "
        "FROM deliveries WHERE notice_id = $1 ORDER BY id",
        nid,
    )
    assert len(channel.sent) == 5  # one batch, each member once
    assert [r["state"] for r in rows] == ["sent", "failed", "sent", "queued", "sent"]
    assert rows[1]["error"] == "HTTP 400: bad  request"
    assert rows[2]["provider_ref"] is None
    assert float(rows[3]["wait"]) <= deps.settings.retry_max_seconds + 0.01
    assert [r["attempts"] for r in rows] == [1] * 5


async def test_a_row_the_database_still_refuses_is_written_alone(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    """Whatever slips past the cleaning (here: a constraint the test adds) fails one row: the
    rest of the batch is recorded, and the refused row is recorded without the provider's words."""
    deps, channel = env
    await make_members(db, 6)
    nid = await make_notice(deps, db, ["scripted"])
    poisoned = int(await db.fetchval("SELECT min(id) + 2 FROM deliveries WHERE notice_id = $1", nid))
    await db.execute(
        "ALTER TABLE deliveries ADD CONSTRAINT test_poison CHECK (provider_ref IS DISTINCT FROM 'poison')"
    )
    try:

        async def send(batch: list[Any]) -> list[Result]:
            channel.sent.extend(batch)
            return [
                Result(
                    o.delivery_id, Outcome.SENT, provider_ref="poison" if o.delivery_id == poisoned else None
                )
                for o in batch
            ]

        channel.send = send  # type: ignore[method-assign]
        await deliver_notice_channel(deps, nid, "scripted")
    finally:
        await db.execute("ALTER TABLE deliveries DROP CONSTRAINT test_poison")
    rows = await db.fetch("SELECT id, state, error FROM deliveries WHERE notice_id = $1 ORDER BY id", nid)
    assert len(channel.sent) == 6
    assert [(r["state"], r["error"]) for r in rows if r["id"] != poisoned] == [("sent", None)] * 5
    assert [(r["state"], r["error"]) for r in rows if r["id"] == poisoned] == [("sent", UNSTORABLE)]
    counts = await db.fetchrow(
        "SELECT sum(sent) AS s, sum(queued) AS q FROM notice_counts WHERE notice_id = $1", nid
    )
    assert counts is not None and (counts["s"], counts["q"]) == (6, 0)
