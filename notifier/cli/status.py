"""``notifier status NOTICE_ID``: a notice's counts now, and delivered / read per child unit."""

from __future__ import annotations

import argparse

from rich.console import Console

from notifier.cli.remote import run
from notifier.cli.send import render
from notifier.client import Client


def run_status(args: argparse.Namespace) -> int:
    async def command(api: Client) -> int:
        notice = await api.get_notice(args.notice_id, unit=args.unit)
        event = await api.status(args.notice_id, unit=args.unit)
        Console().print(render(event, title=f"{notice.title} [{notice.kind}, {notice.state}]  "))
        return 0

    return run(args, command)
