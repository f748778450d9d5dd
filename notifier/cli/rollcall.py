"""``notifier roll-call NOTICE_ID [--csv]``: who has not read it, by unit, with the reason."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from notifier.cli.remote import run
from notifier.client import Client


def run_roll_call(args: argparse.Namespace) -> int:
    async def command(api: Client) -> int:
        if args.csv:
            sys.stdout.write((await api.roll_call_csv(args.notice_id, unit=args.unit)).lstrip("\ufeff"))
            return 0
        table = Table("unit", "member", "name", "why", "channel", "error")
        cursor = None
        while True:
            page = await api.roll_call(args.notice_id, unit=args.unit, cursor=cursor)
            for group in page.groups:
                for e in group.recipients:
                    table.add_row(
                        group.unit_id, e.member_id, e.name, e.reason, e.channel or "", e.error or ""
                    )
            cursor = page.next_cursor
            if cursor is None:
                break
        Console(width=max(120, Console().width)).print(table)
        return 0

    return run(args, command)
