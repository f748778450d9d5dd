"""``notifier console-link MEMBER``: print a one-time sign-in link to the web console.

Development aid: it writes the link's row straight into the database -- NOTIFIER_DATABASE_URL,
or the embedded PostgreSQL a running ``notifier dev`` keeps under the data directory. ``--admin``
(or no member) prints a link for the bootstrap admin; ``notifier dev`` prints one at start.
Also here: the development VAPID key ``notifier dev`` keeps under ``.notifier/`` so web push works
out of the box.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from notifier.api.console_links import mint
from notifier.db import console
from notifier.embedded import PG_USER, _lock_owner
from notifier.settings import Settings

VAPID_FILE = "vapid_private_key.pem"


def database_url(settings: Settings) -> str | None:
    if settings.database_url:
        return settings.database_url
    owner = _lock_owner(Path(settings.data_dir) / "pgdata" / "postmaster.pid")
    return None if owner is None else f"postgresql://{PG_USER}@127.0.0.1:{owner[1]}/postgres"


async def make_link(settings: Settings, url: str, member_id: str | None) -> tuple[str, list[str]]:
    """(the link, the units it signs in as secretary of). Unknown member: ``LookupError``."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            if member_id is not None and not await conn.fetchval(console.MEMBER_EXISTS, member_id):
                raise LookupError(member_id)
            link, _ = await mint(conn, settings, member_id)
            units = [] if member_id is None else await console.secretary_of(conn, member_id)
    finally:
        await conn.close()
    return link, units


def run(settings: Settings, member_id: str | None) -> None:
    url = database_url(settings)
    if url is None:
        sys.exit("notifier console-link: set NOTIFIER_DATABASE_URL, or start 'notifier dev' first")
    try:
        link, units = asyncio.run(make_link(settings, url, member_id))
    except LookupError:
        sys.exit(f"notifier console-link: no member {member_id!r}")
    who = "the admin" if member_id is None else member_id
    roles = f"secretary of {', '.join(units)}" if units else ("admin" if member_id is None else "member")
    print(
        f"{link}\n  signs in {who} ({roles}) once, within {settings.console_link_ttl_seconds // 60} minutes"
    )


async def print_admin_link(settings: Settings) -> None:
    """For ``notifier dev``: a console sign-in link for the admin, printed at start."""
    link, _ = await make_link(settings, settings.database_url, None)
    print(f"  console: {link}  (one-time; `notifier console-link MEMBER` makes more)", flush=True)


def dev_vapid_key(settings: Settings) -> Settings:
    """The settings with a VAPID key: the configured one, else the one kept under the data
    directory (made on first use, readable by its owner only)."""
    if settings.webpush.vapid_private_key is not None:
        return settings
    from notifier.channels.webpush import generate_vapid_keys

    path = Path(settings.data_dir) / VAPID_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        private_pem, _ = generate_vapid_keys()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private_pem)
    webpush = settings.webpush.model_copy(update={"vapid_private_key": SecretStr(path.read_text())})
    return settings.model_copy(update={"webpush": webpush})
