"""The shared delivery layer, driven directly with the engine clock moved forward (no sleeping):
account rate limits, per-contact caps, the circuit breaker, ambiguous sends, fallback, and
order-tolerant provider reports. A scripted channel stands in for a provider."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.channels.base import (
    CallbackReply,
    Capabilities,
    InvalidSignature,
    InvalidTarget,
    Outcome,
    Outgoing,
    Result,
    StatusUpdate,
)
from notifier.channels.inapp import InAppChannel
from notifier.channels.registry import ChannelRegistry
from notifier.db.pool import create_pool
from notifier.domain.escalation import PolicyRules
from notifier.settings import Settings
from notifier.workers import deliver as deliver_module
from notifier.workers import queue as queue_module
from notifier.workers.context import WorkerDeps
from notifier.workers.deliver import deliver_notice_channel
from notifier.workers.fanout import fanout_notice
from notifier.workers.queue import create_queue
from tests.conftest import advance_clock, auth

CALLBACK_KEY = b"scripted-provider-key"


@dataclass
class ScriptedChannel:
    """A provider stand-in: records every send, answers from a script (default: sent)."""

    id: str = "scripted"
    capabilities: Capabilities = field(default_factory=Capabilities)
    script: list[Outcome] = field(default_factory=list)
    sent: list[Outgoing] = field(default_factory=list)

    def validate_target(self, target: Any) -> Any:
        if not isinstance(target, str) or not target.startswith("+"):
            raise InvalidTarget("a phone number")
        return target

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        results = []
        for item in batch:
            outcome = self.script.pop(0) if self.script else Outcome.SENT
            self.sent.append(item)
            results.append(
                Result(item.delivery_id, outcome, provider_ref=f"ref-{item.delivery_id}-{item.attempt}")
            )
        return results

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        expected = hmac.new(CALLBACK_KEY, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("x-signature", ""), expected):
            raise InvalidSignature("bad signature")
        data = json.loads(body)
        update = StatusUpdate(data["ref"], data.get("state"), data.get("error"), bool(data.get("read")))
        return CallbackReply([update], status=204)

    async def close(self) -> None:
        return None


@pytest.fixture
async def env(
    settings: Settings, db: asyncpg.Connection
) -> AsyncIterator[tuple[WorkerDeps, ScriptedChannel]]:
    tuned = settings.model_copy(update={"delivery_idle_wait_seconds": 0.0, "delivery_batch_size": 500})
    channel = ScriptedChannel()
    registry = ChannelRegistry()
    registry.register(InAppChannel())
    registry.register(channel)
    pool = await create_pool(tuned)
    queue = await create_queue(tuned)
    deps = WorkerDeps(tuned, pool, queue, registry)
    await db.execute("INSERT INTO units (id, name) VALUES ('u', 'Unit')")
    yield deps, channel
    await queue.aclose()
    await pool.close()


async def make_members(db: asyncpg.Connection, n: int, phone: str | None = None) -> None:
    await db.execute(
        "INSERT INTO members (id, name) "
        "SELECT 'm' || lpad(i::text, 5, '0'), 'M' FROM generate_series(0, $1 - 1) i",
        n,
    )
    await db.execute("INSERT INTO member_units SELECT id, 'u' FROM members")
    await db.execute(
        "INSERT INTO contacts (member_id, channel, target) "
        "SELECT id, 'scripted', to_jsonb(coalesce($1, '+86138' || lpad(substr(id, 2), 8, '0'))) FROM members",
        phone,
    )


async def make_notice(
    deps: WorkerDeps,
    db: asyncpg.Connection,
    channels: list[str],
    fallback: bool = False,
    kind: str = "ding",
    escalation: dict[str, Any] | None = None,
) -> str:
    snapshot = (
        None if escalation is None else json.dumps(PolicyRules.model_validate(escalation).snapshot(None))
    )
    nid = str(
        await db.fetchval(
            "INSERT INTO notices (kind, title, body, audience, channels, fallback, escalation) "
            "VALUES ($1, 't', 'b', '{\"units\": [\"u\"]}', $2, $3, $4::jsonb) RETURNING id",
            kind,
            channels,
            fallback,
            snapshot,
        )
    )
    await fanout_notice(deps, nid)
    return nid


async def states(db: asyncpg.Connection, nid: str) -> Counter[str]:
    rows = await db.fetch(
        "SELECT state, wait_reason FROM deliveries WHERE notice_id = $1 AND channel = 'scripted'", nid
    )
    return Counter(
        r["state"] if r["wait_reason"] is None else f"{r['state']}:{r['wait_reason']}" for r in rows
    )


async def test_account_rate_limit_holds_work_visibly_and_drops_nothing(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, channel = env
    channel.capabilities = Capabilities(rate_per_second=100.0)
    await make_members(db, 1000)
    nid = await make_notice(deps, db, ["scripted"])
    jumped = 0.0
    started = time.monotonic()
    per_step: list[tuple[int, float]] = []
    engine_start = await db.fetchval("SELECT notifier_now()")
    for _ in range(60):
        before, t0 = len(channel.sent), time.monotonic()
        await deliver_notice_channel(deps, nid, "scripted")
        per_step.append((len(channel.sent) - before, time.monotonic() - t0))
        if len(channel.sent) == 1000:
            break
        if jumped == 0:
            # Over the limit is visible: throttled, with the time each is expected to go -- the
            # last one not before 900 more tokens have refilled at 100/s after the first pass
            # began (measured from then, not from "now": the pass's own real time is not slack).
            held = await db.fetch(
                "SELECT extract(epoch FROM next_attempt_at - $2::timestamptz) AS eta FROM deliveries "
                "WHERE notice_id = $1 AND wait_reason = 'throttled' ORDER BY next_attempt_at",
                nid,
                engine_start,
            )
            assert len(held) == 1000 - len(channel.sent)
            assert float(held[-1]["eta"]) >= 9.0 - 1e-3
        await advance_clock(db, 1.0)
        jumped += 1.0
    # The engine's time is the jumps plus the real time that passed meanwhile.
    engine_seconds = jumped + (time.monotonic() - started)
    assert len(channel.sent) == 1000
    assert engine_seconds >= 9.0, per_step
    for sent, real in per_step:  # never more than the bucket allows: 1 s of burst + refill
        assert sent <= 100 * (1 + 1 + real) + 1, per_step
    assert Counter(o.delivery_id for o in channel.sent).most_common(1)[0][1] == 1  # none twice
    assert await states(db, nid) == {"sent": 1000}
    attempts = await db.fetchval("SELECT max(attempts) FROM deliveries WHERE notice_id = $1", nid)
    assert attempts == 1  # waiting for the limit spends no attempt


async def test_per_contact_cap(env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection) -> None:
    deps, channel = env
    channel.capabilities = Capabilities(per_target_limit=(5, 900.0))
    await make_members(db, 1)
    notices = [await make_notice(deps, db, ["scripted"]) for _ in range(7)]
    for nid in notices:
        await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 5
    held = await db.fetch(
        "SELECT extract(epoch FROM next_attempt_at - notifier_now()) AS eta FROM deliveries "
        "WHERE wait_reason = 'capped'"
    )
    assert len(held) == 2 and all(890 <= float(r["eta"]) <= 900 for r in held)
    await advance_clock(db, 600)
    for nid in notices:
        await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 5
    await advance_clock(db, 301)
    for nid in notices:
        await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 7


async def test_circuit_breaker_opens_probes_and_closes(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, channel = env
    channel.capabilities = Capabilities(circuit_breaker=True, max_batch=2, max_attempts=100)
    await make_members(db, 10)
    nid = await make_notice(deps, db, ["scripted"])
    channel.script = [Outcome.RETRY] * 10  # the provider is down: five batches of two fail
    await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 10
    threshold = deps.settings.breaker_threshold
    assert threshold == 5
    # Retries come due, but the breaker is open: nothing is sent, every row says why.
    await advance_clock(db, 2)
    await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 10
    assert await states(db, nid) == {"queued:circuit_open": 10}
    # After the cool-down one probe goes; it succeeds and the circuit closes for the rest.
    await advance_clock(db, deps.settings.breaker_base_seconds + 1)
    await deliver_notice_channel(deps, nid, "scripted")
    await advance_clock(db, 2)
    await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 20
    assert await states(db, nid) == {"sent": 10}


async def test_ambiguous_sends_are_not_resent_unless_the_channel_says_it_is_safe(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, channel = env
    channel.capabilities = Capabilities(resend_when_ambiguous=False)
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["scripted"])
    channel.script = [Outcome.UNKNOWN, Outcome.SENT]
    await deliver_notice_channel(deps, nid, "scripted")
    await advance_clock(db, 60)
    await deliver_notice_channel(deps, nid, "scripted")
    assert len(channel.sent) == 2
    assert await states(db, nid) == {"unknown": 1, "sent": 1}
    # A push channel may resend: the same outcome becomes a retry.
    channel.capabilities = Capabilities(resend_when_ambiguous=True)
    nid2 = await make_notice(deps, db, ["scripted"])
    channel.script = [Outcome.UNKNOWN, Outcome.SENT]
    await deliver_notice_channel(deps, nid2, "scripted")
    await advance_clock(db, 60)
    await deliver_notice_channel(deps, nid2, "scripted")
    assert await states(db, nid2) == {"sent": 2}


async def test_fallback_picks_the_first_reachable_channel_and_hands_over_when_a_contact_dies(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection
) -> None:
    deps, channel = env
    await make_members(db, 3)
    await db.execute("DELETE FROM contacts WHERE member_id = 'm00002'")
    nid = await make_notice(deps, db, ["scripted", "inapp"], fallback=True)
    rows = await db.fetch(
        "SELECT member_id, channel, state FROM deliveries WHERE notice_id = $1 ORDER BY 1, 2", nid
    )
    assert [tuple(r) for r in rows] == [
        ("m00000", "scripted", "queued"),
        ("m00001", "scripted", "queued"),
        ("m00002", "inapp", "delivered"),
    ]
    channel.script = [Outcome.SENT, Outcome.FAILED]  # m00001's number is dead for good
    channel.sent.clear()
    await deliver_notice_channel(deps, nid, "scripted")
    rows = await db.fetch(
        "SELECT member_id, channel, state FROM deliveries WHERE notice_id = $1 ORDER BY 1, 2", nid
    )
    assert [tuple(r) for r in rows] == [
        ("m00000", "scripted", "sent"),
        ("m00001", "inapp", "delivered"),
        ("m00001", "scripted", "failed"),
        ("m00002", "inapp", "delivered"),
    ]
    counts = await db.fetchrow(
        "SELECT sum(recipients) r, sum(sent) s, sum(delivered) d, sum(failed) f "
        "FROM notice_counts WHERE notice_id = $1",
        nid,
    )
    assert counts is not None and tuple(counts) == (3, 1, 2, 0)


async def test_a_batch_that_falls_back_wakes_the_next_channel_once(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps, channel = env
    backup = ScriptedChannel(id="backup", capabilities=Capabilities(needs_contact=False))
    deps.channels.register(backup)
    await make_members(db, 5)
    nid = await make_notice(deps, db, ["scripted", "backup"], fallback=True)
    channel.script = [Outcome.FAILED] * 5  # every number dead: all five hand over to the backup
    woken: list[tuple[str, int]] = []
    real = queue_module.enqueue_deliveries

    async def counting(
        queue: Any, settings: Settings, notice_id: str, channel_id: str, pending: int, tag: str
    ) -> int:
        woken.append((channel_id, pending))
        return await real(queue, settings, notice_id, channel_id, pending, tag)

    monkeypatch.setattr(deliver_module, "enqueue_deliveries", counting)
    await deliver_notice_channel(deps, nid, "scripted")
    # One wake-up for the five rows, not one Redis round trip per row (each a connect timeout or
    # an answer deadline while Redis is away).
    assert woken == [("backup", 5)]
    rows = await db.fetch("SELECT channel, state FROM deliveries WHERE notice_id = $1", nid)
    assert Counter((r["channel"], r["state"]) for r in rows) == {
        ("scripted", "failed"): 5,
        ("backup", "queued"): 5,
    }


async def test_provider_reports_are_verified_idempotent_and_order_tolerant(
    env: tuple[WorkerDeps, ScriptedChannel], db: asyncpg.Connection, settings: Settings
) -> None:
    deps, channel = env
    await make_members(db, 2)
    nid = await make_notice(deps, db, ["scripted"])
    await deliver_notice_channel(deps, nid, "scripted")
    refs = {
        r["member_id"]: r["provider_ref"]
        for r in await db.fetch("SELECT member_id, provider_ref FROM deliveries WHERE notice_id = $1", nid)
    }
    async with TestClient(TestServer(create_app(settings, deps.channels), host="127.0.0.1")) as client:

        async def report(body: dict[str, Any], key: bytes = CALLBACK_KEY) -> int:
            raw = json.dumps(body).encode()
            sig = hmac.new(key, raw, hashlib.sha256).hexdigest()
            resp = await client.post(
                "/v1/providers/scripted/callbacks", data=raw, headers={"X-Signature": sig}
            )
            return resp.status

        assert await report({"ref": refs["m00000"], "state": "delivered"}, key=b"forged") == 403
        assert await report({"ref": refs["m00000"], "state": "delivered"}) == 204
        assert await report({"ref": refs["m00000"], "state": "delivered"}) == 204  # repeated
        assert await report({"ref": refs["m00000"], "state": "sent"}) == 204  # late, stale
        assert await report({"ref": refs["m00001"], "state": "failed", "error": "undelivered"}) == 204
        assert await report({"ref": refs["m00001"], "state": "delivered"}) == 204  # after a final state
        # A report that beats our own write of the provider id is parked, then applied.
        assert await report({"ref": "ref-early", "state": "delivered", "read": True}) == 204
        assert (await client.post("/v1/providers/webhook/callbacks", data=b"{}")).status == 404
        resp = await client.get(f"/v1/notices/{nid}", headers=auth())
        counts = (await resp.json())["counts"]
    rows = {
        r["member_id"]: r["state"]
        for r in await db.fetch("SELECT member_id, state FROM deliveries WHERE notice_id = $1", nid)
    }
    assert rows == {"m00000": "delivered", "m00001": "failed"}
    assert (counts["delivered"], counts["failed"], counts["sent"]) == (1, 1, 0)
    parked = await db.fetchval("SELECT count(*) FROM provider_events WHERE provider_ref = 'ref-early'")
    assert parked == 1
