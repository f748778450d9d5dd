"""``notifier send``: send a notice to a running server and, with ``--watch``, follow it being read.

The watch is the notice's live stream (GET /v1/notices/{id}/stream) drawn with rich: the counts,
then delivered / read per child unit of the first ``--unit``. It ends when everyone has read, or
on Ctrl-C (the notice stays sent; only the watching stops).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import uuid

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from notifier.cli.remote import run
from notifier.client import Client
from notifier.client.models import Audience, NoticeIn, StreamEvent

BAR = 20


def run_send(args: argparse.Namespace) -> int:
    notice = NoticeIn(
        kind=args.kind,
        title=args.title,
        body=args.body,
        audience=Audience(units=args.unit),
        channels=[c.strip() for c in args.channels.split(",") if c.strip()],
        escalation=args.escalation,
    )
    key = args.idempotency_key or str(uuid.uuid4())

    async def command(api: Client) -> int:
        sent = await api.send(notice, idempotency_key=key)
        print(f"sent notice {sent.id} ({sent.state}; idempotency key {key})", flush=True)
        if args.watch:
            await watch(api, sent.id, args.unit[0])
        return 0

    return run(args, command)


def bar(part: int, whole: int) -> str:
    filled = round(BAR * part / whole) if whole else 0
    return "█" * filled + "·" * (BAR - filled)


def render(event: StreamEvent, title: str = "") -> Group:
    """The display of one stream event (pure: the tests render it too)."""
    c = event.counts
    head = Text(
        f"{title}recipients {c.recipients}  delivered {c.delivered}  read {c.read}/{c.recipients}  "
        f"unread {c.unread}  failed {c.failed}"
    )
    table = Table("unit", "delivered", "read", "", "rate", box=None, pad_edge=False)
    for u in event.units:
        label = f"{u.name} ({u.unit_id})" + (" itself" if u.direct else "")
        rate = "-" if u.read_rate is None else f"{u.read_rate:.0%}"
        table.add_row(
            label,
            f"{u.delivered}/{u.recipients}",
            f"{u.read}/{u.recipients}",
            bar(u.read, u.recipients),
            rate,
        )
    return Group(head, table)


def everyone_read(event: StreamEvent) -> bool:
    return event.counts.recipients > 0 and event.counts.unread == 0


async def watch(
    api: Client, notice_id: str, unit: str | None, console: Console | None = None
) -> StreamEvent | None:
    """Follow the notice until everyone has read or SIGINT/SIGTERM; returns the last event seen."""
    console = console or Console()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    last: StreamEvent | None = None
    console.print(f"watching notice {notice_id} (Ctrl-C stops watching)")
    console.file.flush()
    try:
        with Live(Text("waiting for the first counts..."), console=console, auto_refresh=False) as live:
            async for update in api.stream(notice_id, unit=unit):
                last = update.data
                done = everyone_read(last) and (await api.get_notice(notice_id)).state == "active"
                live.update(render(last), refresh=True)
                if done:
                    break
    except asyncio.CancelledError:
        if not stopped:
            raise
        task.uncancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    if last is not None and everyone_read(last):
        console.print(f"everyone has read notice {notice_id}")
    elif stopped:
        console.print(f"stopped watching notice {notice_id} (it stays sent)")
    return last
