"""A step's parts (schemas/0037): jobs that remind a step's unread at once, range by range.

The tick splits a step over more than one chunk of unread into ``escalation_parts`` ranges of
member ids (workers/escalate.py), wakes one of these jobs per part but one, and reminds that one
itself at once. Each runner claims a part nobody holds, reminds its next chunk (in member order,
within the part, one transaction: a read waits for one chunk at most) and records it on the
part's row, until no part is left to claim. The
part that finds every other part done fires the step -- notify, ``step_fired``, the next step --
in the transaction of its last chunk, exactly once. A crash loses at most the uncommitted chunk;
the reminders' unique key keeps every member reminded once, and the tick wakes the jobs again
when the timer comes due with parts unfinished.
"""

from __future__ import annotations

import logging
from typing import Any

from notifier import metrics
from notifier.db import escalation_parts as parts_db
from notifier.db import escalations, timeline
from notifier.db.pool import Connection
from notifier.domain.escalation import PolicyRules
from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import Budget, Progress, Wakeups, fire_step, remind_chunk, wake_up

log = logging.getLogger(__name__)


async def remind_parts(deps: WorkerDeps, notice_id: str) -> int:
    """Remind the parts of the notice's step that no other job holds; returns the chunks done."""
    chunks = 0
    while True:
        wake = Wakeups()
        outcome = ""
        async with deps.pool.acquire() as conn, conn.transaction():
            part = await parts_db.claim(conn, notice_id)
            if part is None:
                await parts_db.prune(conn, notice_id)  # a step stopped meanwhile leaves its parts
                return chunks
            rules = PolicyRules.model_validate({k: v for k, v in part["escalation"].items() if k != "policy"})
            step, code = rules.steps[part["next_step"]], int(part["step"])
            saved = Progress.load(part["step_progress"])
            # The ceiling was reserved for every unread at the split: a part cannot exceed it.
            budget = Budget(saved.reserved)
            progress = Progress(saved.unread, saved.recipients, dict(part["reached"]))
            cursor, upper = str(part["cursor"]), part["upper"]
            # The parts' chunks together hold at most one chunk's rows locked, each committing
            # in about the time a chunk did alone (they share the cores): a read waits as long.
            size = max(1, deps.settings.escalation_chunk_size // saved.parts)
            upto = await escalations.chunk_end(conn, notice_id, cursor, size)
            last = upto is None or (upper is not None and upto >= upper)
            if last:
                upto = upper
            wake.tag = f"esc{part['round']}.{part['next_step']}.p{part['part']}.{part['chunks']}"
            await remind_chunk(
                deps,
                conn,
                notice_id,
                step,
                code,
                budget,
                wake,
                progress,
                (cursor, upto),
                first=False,
                last=False,
            )
            left = await parts_db.advance(conn, notice_id, part, upto, progress.reached, budget.used, last)
            if left == 0:
                outcome = await _fire(deps, conn, notice_id, code, rules, wake)
        chunks += 1
        if outcome:
            metrics.ESCALATION_STEPS.labels(outcome).inc()  # committed
        await wake_up(deps, wake)


async def _fire(
    deps: WorkerDeps, conn: Connection, notice_id: str, code: int, rules: PolicyRules, wake: Wakeups
) -> str:
    """Every part is done: fire the step with what they did, as its serial last chunk would."""
    row = await escalations.step_in_parts(conn, notice_id)
    assert row is not None  # claimed with the timer active, held FOR KEY SHARE since
    reached, sends = await parts_db.done(conn, notice_id, code)
    progress = Progress.load(row["step_progress"])
    step = rules.steps[row["next_step"]]
    progress.reached = {c: reached.get(c, 0) for c in step.remind}
    for channel_id in step.remind:
        if channel_id in deps.channels and not progress.reached[channel_id]:
            await timeline.record(
                conn, notice_id, "step_reached_nobody", {"channel": channel_id, "step": code}
            )
    left = max(0, deps.settings.escalation_max_sends - (int(row["sends"]) - progress.reserved) - sends)
    budget = Budget(left, used=sends)
    detail: dict[str, Any] = {
        "round": row["round"],
        "step": row["next_step"],
        "unread": progress.unread,
        "reminded": progress.reached,
    }
    return await fire_step(deps, conn, row, rules, progress, budget, detail, wake)


async def escalation_part(ctx: dict[str, Any], notice_id: str) -> int:
    """arq job."""
    try:
        return await remind_parts(ctx["deps"], notice_id)
    except Exception:
        # The timer stays postponed; when it comes due with this part unfinished the tick
        # wakes part jobs again (workers/escalate.py).
        log.exception("a part of the escalation step of notice %s failed; the tick retries it", notice_id)
        return 0
