"""The organisation as DingTalk's contacts API has it (for ``notifier import dingtalk``): the
department tree (``topapi/v2/department/listsub``, breadth first from the root department 1) and
each department's users (``topapi/v2/user/list``, 100 a page by cursor). A user in several
departments is one user with every department in ``dept_id_list``. The app needs the contacts
read permission (通讯录只读权限) for the departments it is to import."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from notifier.channels.base import PermanentError
from notifier.channels.dingtalk import DingTalkChannel

LISTSUB_PATH = "/topapi/v2/department/listsub"
USER_LIST_PATH = "/topapi/v2/user/list"
PAGE_SIZE = 100
MAX_DEPARTMENTS = 100_000
MAX_PAGES_PER_DEPARTMENT = 10_000

Progress = Callable[[str], None]


async def departments(channel: DingTalkChannel, progress: Progress) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    seen: set[int] = {1}
    level = [1]
    while level:
        answers = await asyncio.gather(*(channel.oapi(LISTSUB_PATH, {"dept_id": d}) for d in level))
        level = []
        for answer in answers:
            for dept in answer.get("result") or []:
                dept_id = dept.get("dept_id") if isinstance(dept, dict) else None
                if isinstance(dept_id, int) and not isinstance(dept_id, bool) and dept_id not in seen:
                    seen.add(dept_id)
                    found.append(dept)
                    level.append(dept_id)
        if len(found) > MAX_DEPARTMENTS:
            raise PermanentError(f"more than {MAX_DEPARTMENTS} departments")
        progress(f"departments: {len(found)}")
    return found


async def users(channel: DingTalkChannel, dept_ids: list[int], progress: Progress) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    done = 0

    async def one(dept_id: int) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = []
        cursor: Any = 0
        for _page in range(MAX_PAGES_PER_DEPARTMENT):
            body = {"dept_id": dept_id, "cursor": cursor, "size": PAGE_SIZE}
            result = (await channel.oapi(USER_LIST_PATH, body)).get("result") or {}
            listed += [u for u in result.get("list") or [] if isinstance(u, dict)]
            if not result.get("has_more"):
                return listed
            cursor = result.get("next_cursor")
        raise PermanentError(f"department {dept_id}: the user list does not end")

    for start in range(0, len(dept_ids), 16):
        chunk = dept_ids[start : start + 16]
        for dept_id, listed in zip(chunk, await asyncio.gather(*(one(d) for d in chunk)), strict=True):
            for user in listed:
                userid = user.get("userid")
                if not isinstance(userid, str):
                    continue
                merged = by_id.setdefault(userid, {**user, "dept_id_list": []})
                for dept in [*(user.get("dept_id_list") or []), dept_id]:
                    if dept not in merged["dept_id_list"]:
                        merged["dept_id_list"].append(dept)
        done += len(chunk)
        progress(f"users: {len(by_id)} from {done}/{len(dept_ids)} departments")
    return list(by_id.values())


Rows = list[dict[str, Any]]


async def fetch_org(channel: DingTalkChannel, progress: Progress) -> tuple[Rows, Rows]:
    tree = await departments(channel, progress)
    return tree, await users(channel, [1, *(d["dept_id"] for d in tree)], progress)
