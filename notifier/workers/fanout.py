"""Fan-out: turn a notice's audience into recipients and deliveries, chunk by chunk, in SQL.

Each chunk commits on its own (a cursor), so a killed worker resumes where the last commit left
off, and delivery of the first chunk starts while later chunks are planned. The first chunk runs
alone, the notice row locked (a notice that fits in it is done then). When more remain, the
rest of the audience is split into ``fanout_parts`` ranges of member ids (schemas/0032), each
with its own cursor (the first chunk is small then: ``fanout_first_chunk_size``), and as many
jobs fan them out at once, each part claimed by one of them at a time.
A part's chunk holds the notice row FOR SHARE, so a recall waits for the chunks under way and
cancels their deliveries too; the part that finds every other part done sets the notice
'active' and starts its escalation, exactly once.
"""

from __future__ import annotations

import logging
from typing import Any

from notifier.channels.base import Channel
from notifier.channels.registry import UnknownChannel
from notifier.db import fanout as fanout_db
from notifier.db import notices, timeline
from notifier.db.pool import Connection, Record
from notifier.workers.context import WorkerDeps
from notifier.workers.escalate import start_escalation
from notifier.workers.queue import enqueue_deliveries, enqueue_fanout, hint_changed, wake_tick_in

log = logging.getLogger(__name__)


async def _claim(conn: Connection, notice_id: str) -> tuple[Record | None, Record | None]:
    """(the notice, the part claimed or None for the whole notice); no notice: nothing to do."""
    row = await conn.fetchrow(notices.CLAIM_FANOUT, notice_id)
    if row is not None:
        return row, None
    # Split into parts, finished, or another worker holds it right now.
    part = await fanout_db.claim_part(conn, notice_id)
    if part is None:
        return None, None
    return await conn.fetchrow(notices.SHARE_FANOUT, notice_id), part  # None: recalled meanwhile


def _member_channels(deps: WorkerDeps, row: Record) -> tuple[list[Channel], list[bool]]:
    """The channels a chunk plans a delivery on for each member, and whether each is optional."""
    # Each channel once: a plan holding a (member, channel) twice would fail the chunk's insert,
    # which skips no duplicate (an escalation summary's channels come from a policy step, which
    # may repeat one).
    channels = [deps.channels.get(c) for c in dict.fromkeys(row["channels"])]
    # A unit-level channel posts once per unit (unit_posts, started when the notice goes out),
    # not once per member.
    channels = [c for c in channels if not c.capabilities.unit_level]
    # Used only where they reach (schemas/0038). The API and the constraint keep a required one;
    # were none of the member channels required, all of them would be.
    optional = [c.id in row["optional_channels"] for c in channels]
    return channels, optional if not all(optional) else [False] * len(channels)


async def _split_at_once(
    deps: WorkerDeps, conn: Connection, notice_id: str, row: Record, units: list[str], members: list[str]
) -> bool:
    """A notice not started yet whose audience (a count of its membership rows, no sort) exceeds
    the first chunk is split into parts at once: no serial first chunk resolving the whole
    audience to find its first few thousand members."""
    if deps.settings.fanout_parts == 1 or row["fanout_cursor"] is not None:
        return False
    if not units and len(members) <= deps.settings.fanout_first_chunk_size:
        return False  # named members only, few: no need to ask (a one-member DING, say)
    audience = await fanout_db.audience_estimate(conn, units, members)
    if audience["n"] <= deps.settings.fanout_first_chunk_size:
        return False
    # The parts cover the audience's span of member ids only, not the whole organisation's.
    parts = deps.settings.fanout_parts
    return await fanout_db.split(conn, notice_id, parts, audience["start"], audience["last"])


async def _window(
    deps: WorkerDeps, conn: Connection, row: Record, part: Record | None, named: int
) -> tuple[str | None, int, str | None, bool]:
    """The next chunk: (cursor, limit, upper bound, whether it is the part's last)."""
    chunk_size = deps.settings.fanout_chunk_size
    if part is None:
        if deps.settings.fanout_parts > 1:
            return row["fanout_cursor"], min(chunk_size, deps.settings.fanout_first_chunk_size), None, False
        return row["fanout_cursor"], chunk_size, None, False
    # A part's chunk: the members of the next chunk_size membership rows above its cursor, within
    # the part, all of them (and the named members in that range who belong to no unit).
    upper, last = await fanout_db.part_bound(conn, part["cursor"], chunk_size, part["upper"])
    return part["cursor"], chunk_size + named, upper, last


async def fanout_notice(deps: WorkerDeps, notice_id: str) -> int:
    """Fan the notice out (all of it, or the parts no other job holds); returns the number of
    recipients this call added."""
    total = 0
    chunk_no = 0
    while True:
        first_step_in: float | None = None
        split_into = 0
        async with deps.pool.acquire() as conn, conn.transaction():
            row, part = await _claim(conn, notice_id)
            if row is None:
                return total
            try:
                channels, optional = _member_channels(deps, row)
            except UnknownChannel as exc:
                # Configured when the notice was accepted, gone from this deployment now: say so
                # on the notice instead of retrying forever.
                await conn.execute(notices.MARK_FAILED, notice_id)
                await timeline.record(
                    conn, notice_id, "fanout_failed", {"reason": f"channel {exc} is not configured"}
                )
                log.error("notice %s names channel %s, which is not configured", notice_id, exc)
                return total
            units = list(row["audience"].get("units", []))
            members = list(row["audience"].get("members", []))
            n, queued_channels, done, last = 0, [], False, row["fanout_cursor"]
            if part is None and await _split_at_once(deps, conn, notice_id, row, units, members):
                split_into = deps.settings.fanout_parts
            else:
                cursor, limit, upper, last_chunk = await _window(deps, conn, row, part, len(members))
                result = await fanout_db.fanout_chunk(
                    conn,
                    notice_id,
                    units=units,
                    members=members,
                    cursor=cursor,
                    limit=limit,
                    channels=[c.id for c in channels],
                    needs_contact=[c.capabilities.needs_contact for c in channels],
                    on_insert=[c.capabilities.delivers_on_insert for c in channels],
                    fallback=row["fallback"],
                    optional=optional,
                    in_part=part is not None,
                    upper=upper,
                )
                n, queued_channels = result["n"], result["queued_channels"]
                done = n < limit if part is None else last_chunk
                last = upper if upper is not None else (result["last_member"] or cursor)
            if part is None and not done and not split_into and deps.settings.fanout_parts > 1:
                # the parts end at the audience's last member id, not the organisation's
                end = (await fanout_db.audience_estimate(conn, units, members))["last"]
                if await fanout_db.split(conn, notice_id, deps.settings.fanout_parts, last, end):
                    split_into = deps.settings.fanout_parts
            elif part is not None:
                others_left = await fanout_db.advance_part(conn, notice_id, part["part"], last, done)
                done = done and others_left == 0
            if done and row["escalation"] is not None:
                first_step_in = await start_escalation(conn, notice_id, row["went_out_at"], row["escalation"])
            if part is None or done:
                await conn.execute(
                    notices.ADVANCE_FANOUT,
                    notice_id,
                    last if part is None else row["fanout_cursor"],
                    "active" if done else "fanning_out",
                )
        total += n
        await hint_changed(deps.queue, notice_id)  # live streams: poll its counters now
        tag = f"f{chunk_no}" if part is None else f"p{part['part']}f{chunk_no}"
        for channel in queued_channels:
            await enqueue_deliveries(deps.queue, deps.settings, notice_id, channel, n, tag=tag)
        chunk_no += 1
        for k in range(1, split_into):  # this job takes a part too, on its next turn
            await enqueue_fanout(deps.queue, notice_id, tag=f"part{k}")
        if done and first_step_in is not None:
            await wake_tick_in(deps.queue, first_step_in)
        if done:
            log.info("notice %s fanned out", notice_id)
            return total


async def fanout(ctx: dict[str, Any], notice_id: str) -> int:
    """arq job."""
    return await fanout_notice(ctx["deps"], notice_id)
