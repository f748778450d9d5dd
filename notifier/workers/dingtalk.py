"""DingTalk read import and recall, parts of the tick.

Read import: poll ``getsendresult`` for every due task timer and turn its lists into reports on
the task's deliveries. ``read_user_id_list`` becomes read receipts (``via: dingtalk``) and
``unread_user_id_list`` 'delivered'; ``invalid`` / ``forbidden`` / ``failed`` become failed
deliveries with DingTalk's reason, and a userid DingTalk calls invalid has its contact disabled.
All of it goes through the provider-report path (``apply_reports``: one set-based statement
moves the deliveries, one ``mark_read_many`` records and counts the reads), so a read seen on
every poll is recorded once. A task's timer ends when nobody in it is left unread, when DingTalk
no longer knows the task, or after its 24-hour window.

Recall: the tasks and DINGs of a recalled notice are withdrawn on DingTalk, once each.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from notifier.channels.base import ChannelError, PermanentError, StatusUpdate, TransientError
from notifier.channels.dingtalk import DingTalkChannel, SendResult
from notifier.channels.dingtalk_ding import DingTalkDingChannel
from notifier.channels.dingtalk_events import robot_ref
from notifier.db import contacts, dingtalk
from notifier.workers.context import WorkerDeps
from notifier.workers.reports import apply_reports

log = logging.getLogger(__name__)

POLLS_PER_TICK = 50
POLL_LEASE_SECONDS = 120.0  # a claimed timer is due again after this if its poll never finished
PARALLEL_POLLS = 4


def reports_for(result: SendResult, deliveries: dict[str, list[int]]) -> list[StatusUpdate]:
    """One task's send result as reports on its deliveries (pure)."""
    updates: list[StatusUpdate] = []
    for user in result.read:
        updates += [
            StatusUpdate(None, "delivered", read=True, delivery_id=d) for d in deliveries.get(user, [])
        ]
    for user in result.unread:
        updates += [StatusUpdate(None, "delivered", delivery_id=d) for d in deliveries.get(user, [])]
    for user, reason in result.failed.items():
        updates += [
            StatusUpdate(None, "failed", error=reason, delivery_id=d) for d in deliveries.get(user, [])
        ]
    return updates


async def poll_dingtalk_reads(deps: WorkerDeps) -> int:
    """Poll the due task timers; returns how many tasks were polled."""
    if "dingtalk" not in deps.channels:
        return 0
    channel = deps.channels.get("dingtalk")
    if not isinstance(channel, DingTalkChannel) or not channel.read_poll:
        return 0
    task_ids = await dingtalk.claim_due(deps.pool, POLLS_PER_TICK, POLL_LEASE_SECONDS)
    if not task_ids:
        return 0
    if channel.robot_messages:
        return await _poll_robot_reads(deps, channel, task_ids)
    limit = asyncio.Semaphore(PARALLEL_POLLS)

    async def poll(task_id: str) -> SendResult | ChannelError:
        async with limit:
            try:
                return await channel.send_result(task_id)
            except ChannelError as exc:
                return exc

    answers = await asyncio.gather(*(poll(t) for t in task_ids))
    answered = [t for t, a in zip(task_ids, answers, strict=True) if isinstance(a, SendResult)]
    done: list[bool] = []
    errors: list[str | None] = []
    waits: list[float | None] = []
    async with deps.pool.acquire() as conn, conn.transaction():
        by_task: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        contact_of: dict[tuple[str, str], str] = {}
        for row in await dingtalk.task_deliveries(conn, answered):
            by_task[row["task_id"]][row["user_id"]].append(row["id"])
            contact_of[(row["task_id"], row["user_id"])] = str(row["contact_id"])
        updates: list[StatusUpdate] = []
        gone: dict[str, str] = {}  # contact id -> why it is disabled
        for task_id, answer in zip(task_ids, answers, strict=True):
            if isinstance(answer, SendResult):
                updates += reports_for(answer, by_task.get(task_id, {}))
                for user in answer.invalid:
                    if (task_id, user) in contact_of:
                        gone[contact_of[(task_id, user)]] = answer.failed[user]
                done.append(not answer.unread)
                errors.append(None)
                waits.append(None)
            else:
                done.append(isinstance(answer, PermanentError))  # e.g. the task is gone
                errors.append(str(answer))
                waits.append(answer.retry_after if isinstance(answer, TransientError) else None)
        await apply_reports(conn, "dingtalk", updates)
        if gone:
            await contacts.disable_many(conn, sorted(gone), [gone[c] for c in sorted(gone)])
        await dingtalk.finish(conn, task_ids, done, errors, waits)
    await dingtalk.purge(deps.pool)
    return len(task_ids)


async def _poll_robot_reads(deps: WorkerDeps, channel: DingTalkChannel, keys: list[str]) -> int:
    """The backstop for robot_msg_read events: ``readStatus`` of each due robot send, as reports
    on the members' refs ``{processQueryKey}/{userId}`` (a read already pushed changes nothing)."""
    limit = asyncio.Semaphore(PARALLEL_POLLS)

    async def poll(key: str) -> dict[str, bool] | ChannelError:
        async with limit:
            try:
                return await channel.read_status(key)
            except ChannelError as exc:
                return exc

    answers = await asyncio.gather(*(poll(k) for k in keys))
    updates = [
        StatusUpdate(robot_ref(key, user), "delivered", read=read)
        for key, answer in zip(keys, answers, strict=True)
        if isinstance(answer, dict)
        for user, read in answer.items()
    ]
    async with deps.pool.acquire() as conn, conn.transaction():
        await apply_reports(conn, "dingtalk", updates)
        await dingtalk.finish(
            conn,
            keys,
            [all(a.values()) if isinstance(a, dict) else isinstance(a, PermanentError) for a in answers],
            [None if isinstance(a, dict) else str(a) for a in answers],
            [a.retry_after if isinstance(a, TransientError) else None for a in answers],
        )
    return len(keys)


RECALLS_PER_TICK = 50
RECALL_RETRY_SECONDS = 60.0


async def _withdraw(ids: list[str], recall: Callable[[str], Awaitable[None]]) -> list[ChannelError | None]:
    """Each id recalled on DingTalk (a few at a time); what DingTalk refused, per id."""
    limit = asyncio.Semaphore(PARALLEL_POLLS)

    async def one(item: str) -> ChannelError | None:
        async with limit:
            try:
                await recall(item)
            except ChannelError as exc:
                return exc
            return None

    return list(await asyncio.gather(*(one(i) for i in ids)))


def _outcomes(answers: list[ChannelError | None]) -> tuple[list[bool], list[str | None], list[float | None]]:
    """(done, error, retry in seconds) per answer: a transient refusal is tried again later."""
    return (
        [a is None for a in answers],
        [None if a is None else str(a) for a in answers],
        [(a.retry_after or RECALL_RETRY_SECONDS) if isinstance(a, TransientError) else None for a in answers],
    )


async def withdraw_recalled(deps: WorkerDeps) -> int:
    """Recall on DingTalk the tasks of recalled notices (a part of the tick); returns how many
    were tried. A throttled or failed-to-connect recall is tried again; a refusal (the task is
    over 24 hours old, say) is recorded with DingTalk's reason."""
    if "dingtalk" not in deps.channels:
        return 0
    channel = deps.channels.get("dingtalk")
    if not isinstance(channel, DingTalkChannel):
        return 0
    task_ids = await dingtalk.claim_recalls(deps.pool, RECALLS_PER_TICK, POLL_LEASE_SECONDS)
    if not task_ids:
        return 0
    answers = await _withdraw(task_ids, channel.recall)
    await dingtalk.finish_recalls(deps.pool, task_ids, *_outcomes(answers))
    return len(task_ids)


async def withdraw_recalled_dings(deps: WorkerDeps) -> int:
    """Recall on DingTalk the DINGs of recalled notices (a part of the tick), as for tasks."""
    if "dingtalk_ding" not in deps.channels:
        return 0
    channel = deps.channels.get("dingtalk_ding")
    if not isinstance(channel, DingTalkDingChannel):
        return 0
    ids = await dingtalk.claim_ding_recalls(deps.pool, RECALLS_PER_TICK, POLL_LEASE_SECONDS)
    if not ids:
        return 0
    answers = await _withdraw(ids, channel.recall)
    await dingtalk.finish_ding_recalls(deps.pool, ids, *_outcomes(answers))
    return len(ids)
