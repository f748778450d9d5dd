"""Escalation: advance every due escalation timer by one step, in one transaction each.

A step reminds the members who have not read the notice on stronger channels and/or notifies
roles resolved at that moment (the secretaries of the unread members' units, whoever is on duty
there or in the nearest ancestor unit) with a summary that is itself a tracked DING. Only the
units the notice's own audience places the unread in count: a member shared with another branch
never makes that branch's secretaries hear of it. A step that reaches nobody is recorded as an
event (one per step and channel, or chunk, naming the members), never silently skipped. Reading stops
everything for that member; recall, expiry or the notice's ceiling on escalation sends
(``settings.escalation_max_sends``) stops the timer.

A step over many unread reminds them in chunks of ``settings.escalation_chunk_size`` (in member
order), one transaction each: the reminders' insert locks their recipients' rows until commit,
so a read of one of them waits for one chunk, not the whole step. Between chunks the timer stays
due with the step's cursor and progress; the same tick goes straight on with the next chunk, and
a crash resumes after the last committed one. The step's summary, its ``step_fired`` event and
the move to the next step come with the last chunk. Recall or expiry between chunks stops it.

With ``settings.escalation_parts`` > 1, a step whose unread exceed one chunk is split instead
into that many ranges of member ids, reminded at once, chunk by chunk, by the tick that split it
and by part jobs woken for the others (workers/escalation_parts.py, schemas/0037); the last part
to finish fires the step. Meanwhile the timer is postponed by ``reconcile_stall_seconds``: if it
comes due again with its parts unfinished (a lost job, a killed worker), the tick wakes part jobs
again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from notifier import metrics
from notifier.db import duty, escalation_parts, escalations, timeline, units
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
from notifier.links import unread_list_link
from notifier.workers.context import WorkerDeps
from notifier.workers.queue import enqueue_deliveries, enqueue_escalation_parts, enqueue_fanout

log = logging.getLogger(__name__)

MAX_PER_TICK = 200
CEILING_EVENT = "escalation_ceiling_reached"


@dataclass(slots=True)
class Wakeups:
    """Work to hand to the queue once the step's transaction has committed."""

    deliveries: list[tuple[str, str, int]] = field(default_factory=list)  # notice, channel, count
    fanouts: list[str] = field(default_factory=list)
    tag: str = ""  # the delivery jobs' tag: one per chunk of a step
    parts: tuple[str, int, int] | None = None  # notice, step, jobs: wake that many part jobs
    remind_here: str = ""  # a step just split: this tick reminds a part of it too, at once


@dataclass(slots=True)
class Progress:
    """Where a step is, kept on its timer between chunks (``escalations.step_progress``)."""

    unread: int
    recipients: int
    reached: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    # A step in parts (escalation_parts.py): how many, the step's code, and the sends it reserved
    # of the ceiling when it split (every unread on every channel; counted back when it fires).
    parts: int = 0
    step: int = 0
    reserved: int = 0

    def saved(self) -> dict[str, Any]:
        saved: dict[str, Any] = {
            "unread": self.unread,
            "recipients": self.recipients,
            "reached": self.reached,
            "chunks": self.chunks,
        }
        if self.parts:
            saved |= {"parts": self.parts, "step": self.step, "reserved": self.reserved}
        return saved

    @classmethod
    def load(cls, saved: dict[str, Any]) -> Progress:
        return cls(
            int(saved["unread"]),
            int(saved["recipients"]),
            dict(saved["reached"]),
            int(saved["chunks"]),
            int(saved.get("parts", 0)),
            int(saved.get("step", 0)),
            int(saved.get("reserved", 0)),
        )


@dataclass(slots=True)
class Budget:
    """What is left of the notice's ceiling on escalation sends, for this step."""

    left: int
    used: int = 0
    reached: bool = False

    def spend(self, n: int) -> None:
        self.used += n
        self.left -= n


CHUNK = "chunk"  # a step's chunk was committed, the step goes on (not a step's outcome)


async def advance_escalations(deps: WorkerDeps) -> int:
    done = 0
    for _ in range(MAX_PER_TICK):
        wake = Wakeups()
        async with deps.pool.acquire() as conn, conn.transaction():
            row = await escalations.claim_due(conn)
            if row is None:
                break
            try:
                async with conn.transaction():  # a savepoint: one bad row must not stall the engine
                    outcome = await _advance_one(deps, conn, row, wake)
            except Exception:
                log.exception("escalation of notice %s failed; retrying it in a minute", row["notice_id"])
                wake = Wakeups()
                outcome = "error"
                await escalations.postpone(conn, row["notice_id"], 60.0)
                await timeline.record(conn, str(row["notice_id"]), "step_error", {"retry_in": 60})
        if outcome != CHUNK:
            metrics.ESCALATION_STEPS.labels(outcome).inc()  # committed
            done += 1
        await wake_up(deps, wake)
        if wake.remind_here:
            # One part starts here at once rather than after a job's trip through Redis (up to
            # 0.2 s on a busy machine); the serial chunks took this tick as long, and other ticks
            # go on meanwhile. The parts' module builds on this one, hence the late import.
            from notifier.workers.escalation_parts import remind_parts

            try:
                await remind_parts(deps, wake.remind_here)
            except Exception:  # its part jobs, or the tick when the timer comes due again, go on
                log.exception("a part of the escalation step of notice %s failed", wake.remind_here)
    return done


async def wake_up(deps: WorkerDeps, wake: Wakeups) -> None:
    """Hand a committed step's (or chunk's) work to the queue."""
    for notice_id, channel, n in wake.deliveries:
        await enqueue_deliveries(deps.queue, deps.settings, notice_id, channel, n, tag=wake.tag)
    for notice_id in wake.fanouts:
        await enqueue_fanout(deps.queue, notice_id, tag="summary")
    if wake.parts is not None:
        notice_id, step, jobs = wake.parts
        await enqueue_escalation_parts(deps.queue, notice_id, step, jobs, tag=wake.tag)


async def _advance_one(deps: WorkerDeps, conn: Connection, row: Record, wake: Wakeups) -> str:
    """Advance one due escalation; returns what happened (the step metric's outcome)."""
    notice_id = str(row["notice_id"])
    if row["notice_state"] == "recalled":
        await escalations.finish(conn, notice_id, "stopped")
        return "stopped"
    if row["expired"]:
        await escalations.finish(conn, notice_id, "stopped")
        await timeline.record(
            conn, notice_id, "escalation_expired", {"expires_at": row["expires_at"].isoformat()}
        )
        return "stopped"
    rules = PolicyRules.model_validate({k: v for k, v in row["escalation"].items() if k != "policy"})
    round_, index = row["round"], row["next_step"]
    following = next_position(rules, round_, index)
    cursor: str | None = row["step_cursor"]
    if cursor is not None:  # the step is under way: its next chunk
        progress = Progress.load(row["step_progress"])
    else:
        progress = Progress(*await escalations.counts(conn, notice_id))
    if progress.parts:  # due again with parts unfinished (none is reminding right now): wake them
        stall = deps.settings.reconcile_stall_seconds
        await escalations.postpone(conn, notice_id, stall)
        wake.parts, wake.tag = (notice_id, progress.step, progress.parts), f"r{int(time.time() // stall)}"
        return CHUNK
    if not progress.unread:
        await escalations.finish(conn, notice_id, "done")
        await timeline.record(conn, notice_id, "everyone_read", {"round": round_, "step": index})
        return "done"
    unread = progress.unread
    if cursor is None and following is not None and due_offset(rules, *following) <= float(row["elapsed"]):
        # The engine was down past this step's successor too: catching up must not fire every
        # missed step at once (six calls to one phone in a second). Skip it, on the record.
        await timeline.record(
            conn, notice_id, "step_skipped", {"round": round_, "step": index, "reason": "late"}
        )
        r, i = following
        await escalations.advance(conn, notice_id, r, i, due_offset(rules, r, i))
        return "skipped"
    step = rules.steps[index]
    code = step_code(round_, index)
    budget = Budget(max(0, deps.settings.escalation_max_sends - int(row["sends"])))
    detail: dict[str, Any] = {"round": round_, "step": index, "unread": unread}
    wake.tag = f"esc{round_}" + (f".{index}.{progress.chunks}" if cursor is not None else "")
    if step.remind:
        size = deps.settings.escalation_chunk_size
        one_chunk = cursor is None and unread <= size  # counted just now: no need to look
        if (
            cursor is None
            and not one_chunk
            and await _split(deps, conn, notice_id, step, code, progress, budget, wake)
        ):
            return CHUNK
        upto = None if one_chunk else await escalations.chunk_end(conn, notice_id, cursor or "", size)
        await remind_chunk(
            deps,
            conn,
            notice_id,
            step,
            code,
            budget,
            wake,
            progress,
            (cursor or "", upto),
            first=cursor is None,
            last=upto is None,
        )
        if upto is not None and not budget.reached:  # more unread after this chunk
            progress.chunks += 1
            await escalations.continue_step(conn, notice_id, upto, progress.saved(), budget.used)
            return CHUNK
        detail["reminded"] = progress.reached
    return await fire_step(deps, conn, row, rules, progress, budget, detail, wake)


async def _split(
    deps: WorkerDeps,
    conn: Connection,
    notice_id: str,
    step: Step,
    code: int,
    progress: Progress,
    budget: Budget,
    wake: Wakeups,
) -> bool:
    """Split the step's unread into ``escalation_parts`` parts, when it has more than one and
    every unread on every channel fits in what is left of the ceiling (the parts run at once,
    so they cannot share a remainder: the ceiling stops a step serially, chunk by chunk)."""
    parts = deps.settings.escalation_parts
    channels = [c for c in step.remind if c in deps.channels]
    reserve = progress.unread * len(channels)
    if parts < 2 or not channels or reserve > budget.left:
        return False
    if not await escalation_parts.split(conn, notice_id, code, parts, progress.unread):
        return False
    await _unavailable(deps, conn, notice_id, step, code)
    progress.parts, progress.step, progress.reserved = parts, code, reserve
    await escalations.continue_step(conn, notice_id, "", progress.saved(), reserve)
    await escalations.postpone(conn, notice_id, deps.settings.reconcile_stall_seconds)
    wake.parts, wake.remind_here = (notice_id, code, parts - 1), notice_id
    log.info(
        "escalation step %s of notice %s: %d unread in %d parts", code, notice_id, progress.unread, parts
    )
    return True


async def fire_step(
    deps: WorkerDeps,
    conn: Connection,
    row: Record,
    rules: PolicyRules,
    progress: Progress,
    budget: Budget,
    detail: dict[str, Any],
    wake: Wakeups,
) -> str:
    """The step's reminders are made: notify its roles, record it and move its timer on."""
    notice_id = str(row["notice_id"])
    round_, index = row["round"], row["next_step"]
    following = next_position(rules, round_, index)
    step = rules.steps[index]
    code = step_code(round_, index)
    if step.notify:
        detail["notified"] = await _notify(
            deps, conn, row, step, code, index, (progress.unread, progress.recipients), budget, wake
        )
    await escalations.add_sends(conn, notice_id, budget.used - progress.reserved)
    await timeline.record(conn, notice_id, "step_fired", detail)
    if budget.reached:
        await escalations.finish(conn, notice_id, "stopped")
        await timeline.record(
            conn,
            notice_id,
            CEILING_EVENT,
            {
                "limit": deps.settings.escalation_max_sends,
                "sends": int(row["sends"]) + budget.used - progress.reserved,
                "round": round_,
                "step": index,
            },
        )
    elif following is None:
        await escalations.finish(conn, notice_id, "done")
        await timeline.record(conn, notice_id, "escalation_exhausted", {"rounds": rules.repeat + 1})
    else:
        r, i = following
        await escalations.advance(conn, notice_id, r, i, due_offset(rules, r, i))
    return "fired"


async def _unavailable(deps: WorkerDeps, conn: Connection, notice_id: str, step: Step, code: int) -> None:
    """A step's first chunk (or its split) says which of its channels this deployment lacks."""
    for channel_id in step.remind:
        if channel_id not in deps.channels:
            await timeline.record(
                conn, notice_id, "channel_unavailable", {"channel": channel_id, "step": code}
            )


async def remind_chunk(
    deps: WorkerDeps,
    conn: Connection,
    notice_id: str,
    step: Step,
    code: int,
    budget: Budget,
    wake: Wakeups,
    progress: Progress,
    chunk: tuple[str, str | None],
    *,
    first: bool,
    last: bool,
) -> None:
    """Remind one chunk of the unread (after member ``chunk[0]``, '': from the first, up to
    ``chunk[1]``, None: the last) on each channel; adds who was reached to ``progress``. The
    step's ``first`` chunk says which channels are missing, its ``last`` which reached nobody
    (a step in parts says both apart: its split and the part that fires it)."""
    after, upto = chunk
    reached = progress.reached
    if first:
        await _unavailable(deps, conn, notice_id, step, code)
    for channel_id in step.remind:
        if channel_id not in deps.channels:
            reached[channel_id] = 0
            continue
        caps = deps.channels.get(channel_id).capabilities
        allowed = budget.left
        result = await escalations.remind(
            conn,
            notice_id,
            channel_id,
            code,
            needs_contact=caps.needs_contact,
            delivers_on_insert=caps.delivers_on_insert,
            budget=allowed,
            after=after,
            upto=upto,
        )
        n = int(result["reached"])
        reached[channel_id] = reached.get(channel_id, 0) + n
        budget.spend(n)
        if int(result["wanted"]) > allowed:
            budget.reached = True  # some of the unread were left out: the ceiling stops it here
        await timeline.record_for_members(  # one event per chunk and channel
            conn,
            notice_id,
            list(result["unreachable"]),
            "not_reached",
            {"channel": channel_id, "step": code, "reason": "no contact"},
        )
        if n:
            if not caps.delivers_on_insert:
                wake.deliveries.append((notice_id, channel_id, n))
        elif reached[channel_id] == 0 and (last or budget.reached):
            await timeline.record(
                conn, notice_id, "step_reached_nobody", {"channel": channel_id, "step": code}
            )


async def _notify(
    deps: WorkerDeps,
    conn: Connection,
    row: Record,
    step: Step,
    code: int,
    index: int,
    counts: tuple[int, int],
    budget: Budget,
    wake: Wakeups,
) -> dict[str, Any]:
    notice_id = str(row["notice_id"])
    if await escalations.acknowledged(conn, notice_id, index + 1):
        await timeline.record(conn, notice_id, "notify_skipped", {"step": code, "reason": "acknowledged"})
        return {"skipped": "acknowledged"}
    scope = row["scope_unit_id"]
    reach = await _sender_reach(conn, row)
    placed = await escalations.unread_units(conn, notice_id, row["audience"], reach)
    unit_ids = [u["unit_id"] for u in placed]
    roles: dict[str, list[str]] = {}
    if "secretary" in step.notify:
        by_unit = await duty.secretaries_for_units(conn, unit_ids)
        roles["secretary"] = sorted({m for ms in by_unit.values() for m in ms})
    if "on_duty" in step.notify:
        by_unit = await duty.on_duty_for_units(conn, unit_ids)
        roles["on_duty"] = sorted({m for ms in by_unit.values() for m in ms})
    for role, members in roles.items():
        if not members:
            await timeline.record(conn, notice_id, "nobody_to_notify", {"role": role, "step": code})
    audience = sorted({m for ms in roles.values() for m in ms})
    channels = [c for c in step.channels if c in deps.channels]
    if not audience or not channels:
        if audience:
            await timeline.record(
                conn, notice_id, "channel_unavailable", {"channels": step.channels, "step": code}
            )
        return {**roles, "summary": None}
    sends = len(audience) * len(channels)
    if sends > budget.left:
        budget.reached = True
        return {**_shown(roles, set(audience) if scope is None else set()), "summary": None}
    summary_id = str(uuid.uuid4())
    title, body = summary_text(deps, row, counts, placed, summary_id)
    # Escalating up the tree may reach people outside the sender's units (the committee's duty
    # officer). The sender then must not see who they are: the summary is visible to admins only
    # and the event names only the people inside the sender's units.
    inside = set(audience) if scope is None else await members_db.visible(conn, audience, scope)
    summary = await escalations.insert_summary(
        conn,
        summary_id,
        title=title,
        body=body,
        members=audience,
        channels=channels,
        scope_unit_id=scope if inside == set(audience) else None,
        parent_notice_id=notice_id,
        parent_step=code,
    )
    if summary is not None:
        budget.spend(sends)
        wake.fanouts.append(summary)
    outside = len(set(audience) - inside)
    return {
        **_shown(roles, inside),
        **({"outside_your_units": outside} if outside else {}),
        "summary": summary,
    }


def _shown(roles: dict[str, list[str]], inside: set[str]) -> dict[str, list[str]]:
    return {role: [m for m in ms if m in inside] for role, ms in roles.items()}


async def _sender_reach(conn: Connection, notice: Record) -> list[str] | None:
    """The units the notice's sender reaches (None: an admin), needed only when the audience
    names members directly."""
    scope = notice["scope_unit_id"]
    if scope is None or not notice["audience"].get("members"):
        return None  # an admin reaches every unit; with no member named directly it is unused
    return await units.subtree_ids(conn, scope)


def summary_text(
    deps: WorkerDeps, row: Record, counts: tuple[int, int], placed: list[Record], summary_id: str
) -> tuple[str, str]:
    unread, recipients = counts
    since = format_duration(round(float(row["elapsed"])))
    settings = deps.settings
    expires = int(deps.clock.time() + settings.link_ttl_seconds)
    link = unread_list_link(
        settings.effective_public_url, settings.link_secret.get_secret_value().encode(), summary_id, expires
    )
    where = ", ".join(f"{u['unit_id']}: {u['n']}" for u in placed[:5])
    title = f"未读 {unread}/{recipients}: {row['title']}"[:200]
    body = (
        f'{unread} of {recipients} recipients have not read "{row["title"]}" '
        f"after {since}. Unread by unit: {where}. Unread list: {link}"
    )
    return title, body


async def start_escalation(
    conn: Connection, notice_id: str, started_at: datetime, snapshot: dict[str, Any]
) -> float:
    """Create the timer for a notice that carries a policy snapshot (called when it goes out).

    Returns the seconds until its first step, for an early wake-up."""
    rules = PolicyRules.model_validate({k: v for k, v in snapshot.items() if k != "policy"})
    return max(0.0, await escalations.start(conn, notice_id, started_at, due_offset(rules, 0, 0)))
