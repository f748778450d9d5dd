"""Escalation: advance every due escalation timer by one step, in one transaction each.

A step reminds the members who have not read the notice on stronger channels and/or notifies
roles resolved at that moment (the secretaries of the unread members' units, whoever is on duty
there or in the nearest ancestor unit) with a summary that is itself a tracked DING. A step
that reaches nobody is recorded as an event, never silently skipped. Reading stops everything
for that member; recall or expiry stops the timer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from notifier.db import duty, escalations
from notifier.db import members as members_db
from notifier.db.pool import Connection, Record
from notifier.domain.escalation import (
    PolicyRules,
    Step,
    due_offset,
    format_duration,
    next_position,
    step_code,
)
from notifier.workers.context import WorkerDeps
from notifier.workers.queue import enqueue_deliveries, enqueue_fanout

log = logging.getLogger(__name__)

MAX_PER_TICK = 200


@dataclass(slots=True)
class Wakeups:
    """Work to hand to the queue once the step's transaction has committed."""

    deliveries: list[tuple[str, str, int]] = field(default_factory=list)  # notice, channel, count
    fanouts: list[str] = field(default_factory=list)


async def release_scheduled(deps: WorkerDeps) -> int:
    """Scheduled notices whose time has come go to fan-out (the row was the timer)."""
    rows = await deps.pool.fetch(escalations.RELEASE_SCHEDULED, 500)
    for r in rows:
        await enqueue_fanout(deps.queue, str(r["id"]), tag="scheduled")
    return len(rows)


async def advance_escalations(deps: WorkerDeps) -> int:
    done = 0
    for _ in range(MAX_PER_TICK):
        wake = Wakeups()
        async with deps.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(escalations.CLAIM_DUE)
            if row is None:
                break
            try:
                async with conn.transaction():  # a savepoint: one bad row must not stall the engine
                    await _advance_one(deps, conn, row, wake)
            except Exception:
                log.exception("escalation of notice %s failed; retrying it in a minute", row["notice_id"])
                wake = Wakeups()
                await conn.execute(escalations.POSTPONE, row["notice_id"], 60.0)
                await escalations.event(conn, str(row["notice_id"]), "step_error", {"retry_in": 60})
        done += 1
        for notice_id, channel, n in wake.deliveries:
            await enqueue_deliveries(
                deps.queue, deps.settings, notice_id, channel, n, tag=f"esc{row['round']}"
            )
        for notice_id in wake.fanouts:
            await enqueue_fanout(deps.queue, notice_id, tag="summary")
    return done


async def _advance_one(deps: WorkerDeps, conn: Connection, row: Record, wake: Wakeups) -> None:
    notice_id = str(row["notice_id"])
    if row["notice_state"] == "recalled":
        await conn.execute(escalations.FINISH, notice_id, "stopped")
        return
    if row["expired"]:
        await conn.execute(escalations.FINISH, notice_id, "stopped")
        await escalations.event(
            conn, notice_id, "escalation_expired", {"expires_at": row["expires_at"].isoformat()}
        )
        return
    rules = PolicyRules.model_validate({k: v for k, v in row["escalation"].items() if k != "policy"})
    round_, index = row["round"], row["next_step"]
    unread = [r["member_id"] for r in await conn.fetch(escalations.LOCK_UNREAD, notice_id)]
    if not unread:
        await conn.execute(escalations.FINISH, notice_id, "done")
        await escalations.event(conn, notice_id, "everyone_read", {"round": round_, "step": index})
        return
    following = next_position(rules, round_, index)
    if following is not None and due_offset(rules, *following) <= float(row["elapsed"]):
        # The engine was down past this step's successor too: catching up must not fire every
        # missed step at once (six calls to one phone in a second). Skip it, on the record.
        await escalations.event(
            conn, notice_id, "step_skipped", {"round": round_, "step": index, "reason": "late"}
        )
        r, i = following
        await conn.execute(escalations.ADVANCE, notice_id, r, i, due_offset(rules, r, i))
        return
    step = rules.steps[index]
    code = step_code(round_, index)
    detail: dict[str, Any] = {"round": round_, "step": index, "unread": len(unread)}
    if step.remind:
        detail["reminded"] = await _remind(deps, conn, notice_id, step, code, wake)
    if step.notify:
        detail["notified"] = await _notify(deps, conn, row, step, code, index, unread, wake)
    await escalations.event(conn, notice_id, "step_fired", detail)
    if following is None:
        await conn.execute(escalations.FINISH, notice_id, "done")
        await escalations.event(conn, notice_id, "escalation_exhausted", {"rounds": rules.repeat + 1})
    else:
        r, i = following
        await conn.execute(escalations.ADVANCE, notice_id, r, i, due_offset(rules, r, i))


async def _remind(
    deps: WorkerDeps, conn: Connection, notice_id: str, step: Step, code: int, wake: Wakeups
) -> dict[str, int]:
    reached: dict[str, int] = {}
    for channel_id in step.remind:
        if channel_id not in deps.channels:
            await escalations.event(
                conn, notice_id, "channel_unavailable", {"channel": channel_id, "step": code}
            )
            reached[channel_id] = 0
            continue
        caps = deps.channels.get(channel_id).capabilities
        result = await conn.fetchrow(
            escalations.REMIND, notice_id, channel_id, code, caps.needs_contact, caps.delivers_on_insert
        )
        assert result is not None
        reached[channel_id] = int(result["reached"])
        unreachable = list(result["unreachable"])
        await escalations.events_many(
            conn,
            notice_id,
            unreachable,
            "not_reached",
            {"channel": channel_id, "step": code, "reason": "no contact"},
        )
        if reached[channel_id] == 0:
            await escalations.event(
                conn, notice_id, "step_reached_nobody", {"channel": channel_id, "step": code}
            )
        elif not caps.delivers_on_insert:
            wake.deliveries.append((notice_id, channel_id, reached[channel_id]))
    return reached


async def _notify(
    deps: WorkerDeps,
    conn: Connection,
    row: Record,
    step: Step,
    code: int,
    index: int,
    unread: list[str],
    wake: Wakeups,
) -> dict[str, Any]:
    notice_id = str(row["notice_id"])
    if await conn.fetchval(escalations.ACKNOWLEDGED, notice_id, index + 1):
        await escalations.event(conn, notice_id, "notify_skipped", {"step": code, "reason": "acknowledged"})
        return {"skipped": "acknowledged"}
    units = await conn.fetch(escalations.UNREAD_UNITS, notice_id)
    unit_ids = [u["unit_id"] for u in units]
    roles: dict[str, list[str]] = {}
    if "secretary" in step.notify:
        by_unit = await duty.secretaries_for_units(conn, unit_ids)
        roles["secretary"] = sorted({m for ms in by_unit.values() for m in ms})
    if "on_duty" in step.notify:
        by_unit = await duty.on_duty_for_units(conn, unit_ids)
        roles["on_duty"] = sorted({m for ms in by_unit.values() for m in ms})
    for role, members in roles.items():
        if not members:
            await escalations.event(conn, notice_id, "nobody_to_notify", {"role": role, "step": code})
    audience = sorted({m for ms in roles.values() for m in ms})
    channels = [c for c in step.channels if c in deps.channels]
    if not audience or not channels:
        if audience:
            await escalations.event(
                conn, notice_id, "channel_unavailable", {"channels": step.channels, "step": code}
            )
        return {**roles, "summary": None}
    counts = await conn.fetchrow(escalations.COUNTS, notice_id)
    assert counts is not None
    title, body = summary_text(deps, row, int(counts["unread"]), int(counts["recipients"]), units)
    # Escalating up the tree may reach people outside the sender's units (the committee's duty
    # officer). The sender then must not see who they are: the summary is visible to admins only
    # and the event names only the people inside the sender's units.
    scope = row["scope_unit_id"]
    inside = set(audience) if scope is None else await members_db.visible(conn, audience, scope)
    summary = await conn.fetchval(
        escalations.SUMMARY_INSERT,
        title,
        body,
        {"members": audience, "units": []},
        channels,
        scope if inside == set(audience) else None,
        notice_id,
        code,
    )
    if summary is not None:
        wake.fanouts.append(str(summary))
    shown = {role: [m for m in ms if m in inside] for role, ms in roles.items()}
    outside = len(set(audience) - inside)
    return {
        **shown,
        **({"outside_your_units": outside} if outside else {}),
        "summary": str(summary) if summary else None,
    }


def summary_text(
    deps: WorkerDeps, row: Record, unread: int, recipients: int, units: list[Record]
) -> tuple[str, str]:
    since = format_duration(round(float(row["elapsed"])))
    base = deps.settings.effective_public_url.rstrip("/")
    link = f"{base}/v1/notices/{row['notice_id']}/recipients?status=unread"
    where = ", ".join(f"{u['unit_id']}: {u['n']}" for u in units[:5])
    title = f"未读 {unread}/{recipients}: {row['title']}"[:200]
    body = (
        f'{unread} of {recipients} recipients have not read "{row["title"]}" '
        f"after {since}. Unread by unit: {where}. Unread list: {link}"
    )
    return title, body


async def start_escalation(
    conn: Connection, notice_id: str, started_at: Any, snapshot: dict[str, Any]
) -> float:
    """Create the timer for a notice that carries a policy snapshot (called when it goes out).

    Returns the seconds until its first step, for an early wake-up."""
    rules = PolicyRules.model_validate({k: v for k, v in snapshot.items() if k != "policy"})
    offset = due_offset(rules, 0, 0)
    await conn.execute(escalations.START, notice_id, started_at, offset)
    elapsed = await conn.fetchval(
        "SELECT extract(epoch FROM (SELECT notifier_now()) - $1::timestamptz)", started_at
    )
    return max(0.0, offset - float(elapsed))
