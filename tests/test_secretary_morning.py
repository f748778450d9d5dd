"""A secretary's morning, end to end on real PostgreSQL + Redis with the worker running: a
committee DING to 3 branches x 3 groups; each branch secretary sees exactly its slice on the
roll-call (with reasons) and nothing of its siblings; remind-now reaches only the unread of the
caller's branch; the committee sees every branch."""

from __future__ import annotations

import csv
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.conftest import issue_key
from tests.conftest import auth, wait_until
from tests.helpers import build_org, get, post


async def test_each_branch_secretary_sees_and_reminds_only_its_own_slice(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None
) -> None:
    org = await build_org(client, groups=9, members=90)
    group_of = dict(zip(org["members"], org["group_of"], strict=True))
    branch_of_group = {f"g{i}": f"b{i % 3}" for i in range(9)}
    desks = {
        b: await issue_key(client, {"name": f"{b} desk", "role": "secretary", "unit_id": b})
        for b in ("b0", "b1", "b2")
    }
    committee = await issue_key(client, {"name": "c desk", "role": "secretary", "unit_id": "c"})
    body = {"kind": "ding", "title": "全体集合", "body": "Muster now", "audience": {"units": ["c"]}}
    nid = (await post(client, "/v1/notices", body, status=202))["id"]

    async def active() -> bool:
        return bool((await get(client, f"/v1/notices/{nid}"))["state"] == "active")

    await wait_until(active, within=30)
    readers = org["members"][::2]
    for m in readers:
        await post(client, f"/v1/notices/{nid}/receipts", {"type": "read", "member_id": m}, status=200)
    unread = [m for m in org["members"] if m not in readers]
    for branch, token in desks.items():
        mine = [m for m in org["members"] if branch_of_group[group_of[m]] == branch]
        groups = sorted(g for g, b in branch_of_group.items() if b == branch)
        listed_notices = await get(client, "/v1/notices", token=token)
        assert [(i["id"], i["counts"]["recipients"]) for i in listed_notices["items"]] == [(nid, len(mine))]
        counts = (await get(client, f"/v1/notices/{nid}", token=token))["counts"]
        assert (counts["recipients"], counts["read"]) == (len(mine), len([m for m in mine if m in readers]))
        rollup = await get(client, f"/v1/notices/{nid}/units", token=token)
        assert sorted(u["unit_id"] for u in rollup["units"]) == sorted([*groups, branch])
        assert sum(u["recipients"] for u in rollup["units"]) == len(mine)
        for other in ("b0", "b1", "b2"):
            if other != branch:  # nothing of a sibling: not its units, not its members
                assert (
                    await client.get(f"/v1/notices/{nid}/units?parent={other}", headers=auth(token))
                ).status == 404
        page = await get(client, f"/v1/notices/{nid}/roll-call?limit=1000", token=token)
        listed = {(g["unit_id"], r["member_id"]) for g in page["groups"] for r in g["recipients"]}
        assert listed == {(group_of[m], m) for m in unread if branch_of_group[group_of[m]] == branch}
        assert {r["reason"] for g in page["groups"] for r in g["recipients"]} == {"delivered"}  # in-app
        assert {g["unit_id"] for g in page["groups"]} <= {
            g for g, b in branch_of_group.items() if b == branch
        }
    everyone = await get(client, f"/v1/notices/{nid}/roll-call?limit=1000", token=committee)
    branches = await get(client, f"/v1/notices/{nid}/units", token=committee)
    assert [(u["unit_id"], u["recipients"]) for u in branches["units"] if not u["direct"]] == [
        (b, 30) for b in ("b0", "b1", "b2")
    ]
    assert sum(len(g["recipients"]) for g in everyone["groups"]) == len(unread)
    pressed = await post(
        client, f"/v1/notices/{nid}/remind", {"channels": ["inapp"]}, token=desks["b1"], status=202
    )
    reminded = [
        r["member_id"]
        for r in await db.fetch(
            "SELECT member_id FROM deliveries WHERE notice_id = $1 AND step > 0 ORDER BY member_id", nid
        )
    ]
    assert reminded == sorted(m for m in unread if branch_of_group[group_of[m]] == "b1")
    assert pressed["reminded"] == {"inapp": len(reminded)}
    resp = await client.get(
        f"/v1/notices/{nid}/roll-call", headers={**auth(desks["b2"]), "Accept": "text/csv"}
    )
    assert resp.status == 200
    rows = list(csv.DictReader((await resp.read()).decode("utf-8-sig").splitlines()))
    assert {(r["unit_id"], r["member_id"]) for r in rows} == {
        (group_of[m], m) for m in unread if branch_of_group[group_of[m]] == "b2"
    }
