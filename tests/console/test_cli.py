"""``notifier console-link``: a link for a member (or the admin) that signs in once; and the
development VAPID key ``notifier dev`` keeps under the data directory."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.cli import console_link
from notifier.settings import Settings
from tests.console.test_console import csrf_of, org, token_of


async def test_console_link_signs_the_member_in_once(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await org(client)
    url, units = await console_link.make_link(settings, settings.database_url, "s0")
    assert units == ["b0"]
    path = "/console/in/" + token_of(url)
    pre = await csrf_of(client, path)
    resp = await client.post(path, data={"csrf": pre}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/"
    assert (await client.post(path, data={"csrf": pre}, allow_redirects=False)).status == 403
    admin, _ = await console_link.make_link(settings, settings.database_url, None)
    assert admin.startswith(settings.effective_public_url + "/console/in/")
    with pytest.raises(LookupError):
        await console_link.make_link(settings, settings.database_url, "nobody")


def test_dev_keeps_one_vapid_key_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    first = console_link.dev_vapid_key(settings)
    key_file = tmp_path / console_link.VAPID_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.webpush.vapid_private_key is not None
    again = console_link.dev_vapid_key(settings)
    assert again.webpush.vapid_private_key is not None
    assert (
        again.webpush.vapid_private_key.get_secret_value()
        == first.webpush.vapid_private_key.get_secret_value()
    )
    configured = first  # a configured key is kept as it is
    assert console_link.dev_vapid_key(configured) is configured
