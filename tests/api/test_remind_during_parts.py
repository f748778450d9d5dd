"""A remind-now while an escalation step runs in parts (schemas/0037): the split reserves the
ceiling for every unread on every channel (escalations.sends), and the step counts it back when
it fires. A step stopped before it fires -- here by a remind-now that reaches the ceiling the
reservation left -- must count back what its parts did not send, or the notice's escalation
sends stay inflated by it for good: later presses are refused for sends never made."""

from __future__ import annotations

import asyncpg
import pytest

from notifier.workers.escalation_parts import remind_parts
from tests.api.test_remind import press
from tests.api.viewsenv import Views, view_settings, views
from tests.workers.test_escalation_parts import split_step

__all__ = ["view_settings", "views"]  # fixtures

IN_PARTS = {"escalation_chunk_size": 6, "escalation_parts": 2, "escalation_max_sends": 50}


@pytest.mark.parametrize("view_settings", [IN_PARTS])
async def test_a_step_in_parts_stopped_by_a_remind_now_counts_back_its_reservation(
    views: Views, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps, _, client = views
    nid = await split_step(deps, db, monkeypatch)  # 20 unread x 2 channels reserved
    assert await db.fetchval("SELECT sends FROM escalations WHERE notice_id = $1", nid) == 40
    # a press that wants 20 reminders finds 10 left of the ceiling: it stops the escalation
    resp = await press(client, nid, {"channels": ["scripted"]})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["ceiling_reached"]
    assert await remind_parts(deps, nid) == 0  # the parts see the step stopped and go
    made = await db.fetchval("SELECT count(*) FROM deliveries WHERE notice_id = $1 AND step > 0", nid)
    assert made == 10
    sends = await db.fetchval("SELECT sends FROM escalations WHERE notice_id = $1", nid)
    assert sends == made  # the 40 reserved for the parts were never sent
    again = await press(client, nid, {"channels": ["inapp"]})  # 40 left of the ceiling
    assert again.status == 202, await again.text()
