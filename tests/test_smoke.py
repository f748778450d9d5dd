from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import wait_until
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import build_org, get, post


async def test_ding_reaches_everyone(
    client: TestClient[Any, Any], worker: None, receiver: WebhookReceiver, db: asyncpg.Connection
) -> None:
    org = await build_org(client, members=50, groups=5)
    for m in org["members"]:
        await post(client, f"/v1/members/{m}/contacts", {"channel": "webhook", "target": receiver.url})
    notice = await post(
        client,
        "/v1/notices",
        {
            "kind": "ding",
            "title": "Muster",
            "body": "Report now",
            "audience": {"units": ["c"]},
            "channels": ["inapp", "webhook"],
        },
        status=202,
    )

    async def done() -> bool:
        n = await get(client, f"/v1/notices/{notice['id']}")
        return bool(
            n["counts"]["delivered"] == 50 and n["state"] == "active" and len(receiver.messages) == 50
        )

    await wait_until(done)
    assert receiver.per_member() == {m: 1 for m in org["members"]}
    n = await get(client, f"/v1/notices/{notice['id']}")
    assert n["counts"] == {
        "recipients": 50,
        "queued": 0,
        "sent": 0,
        "delivered": 50,
        "failed": 0,
        "cancelled": 0,
        "read": 0,
        "unread": 50,
    }
