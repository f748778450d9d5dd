"""``notifier import dingtalk`` and ``notifier import csv FILE``: the organisation, imported.

Both print progress to stderr (departments and users fetched, rows read, rows applied: counts
only, no PII) and, at the end, what changed (or, with ``--dry-run``, what would
change: the same transaction, rolled back). Both are idempotent: a second run prints zeros.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from notifier.channels.base import ChannelError
from notifier.channels.dingtalk import DingTalkChannel
from notifier.channels.dingtalk import configured as dingtalk_configured
from notifier.channels.dingtalk_contacts import fetch_org
from notifier.db import imports
from notifier.db.pool import create_pool
from notifier.domain.org_import import ImportError_, from_csv, from_dingtalk
from notifier.settings import Settings


def printer(err: TextIO) -> Callable[[str], None]:
    """Progress lines (counts only, never a name, number or id) to ``err``, as they come."""
    return lambda line: print(line, file=err, flush=True)


def report(counts: dict[str, int], dry_run: bool, out: TextIO) -> None:
    head = "would change (dry run, nothing written):" if dry_run else "changed:"
    print(head + " " + ", ".join(f"{k}={v}" for k, v in counts.items()), file=out, flush=True)


async def import_dingtalk(
    settings: Settings, root_unit: str, dry_run: bool, err: TextIO = sys.stderr
) -> dict[str, int]:
    if not dingtalk_configured(settings):
        raise SystemExit("set NOTIFIER_DINGTALK__APP_KEY, __APP_SECRET and __AGENT_ID to import from it")
    channel = DingTalkChannel(settings)
    progress = printer(err)
    try:
        departments, users = await fetch_org(channel, progress)
    finally:
        await channel.close()
    userids = [u["userid"] for u in users if isinstance(u.get("userid"), str)]
    pool = await create_pool(settings)
    try:
        return await imports.run(
            pool,
            userids,
            lambda known: from_dingtalk(departments, users, known, root_unit),
            dry_run,
            progress=progress,
        )
    finally:
        await pool.close()


async def import_csv(
    settings: Settings, text: str, dry_run: bool, err: TextIO = sys.stderr
) -> dict[str, int]:
    snap = from_csv(text)
    progress = printer(err)
    progress(f"rows read: {len(snap.people)} members in {len(snap.units)} units")
    pool = await create_pool(settings)
    try:
        return await imports.run(pool, [], lambda _known: snap, dry_run, progress=progress)
    finally:
        await pool.close()


def run_command(settings: Settings, args: argparse.Namespace) -> None:
    """The ``import`` command's body (``notifier/__main__.py`` only parses)."""
    try:
        if args.source == "dingtalk":
            counts = asyncio.run(import_dingtalk(settings, args.root_unit, args.dry_run))
        else:
            text = Path(args.file).read_text(encoding="utf-8")
            counts = asyncio.run(import_csv(settings, text, args.dry_run))
    except (ImportError_, ChannelError, OSError) as exc:
        sys.exit(f"notifier import {args.source}: {exc}")
    report(counts, args.dry_run, sys.stdout)
