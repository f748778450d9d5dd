"""A scored test over a real fan-out: an organisation of branches, a notice that reached them,
and graded results written as the quiz's submit writes them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.db import quizzes
from notifier.settings import Settings
from notifier.workers.context import WorkerDeps
from notifier.workers.fanout import fanout_notice
from tests.api.conftest import org  # noqa: F401 - the scoped organisation, for these tests too
from tests.helpers import post, put, worker_deps

QUESTIONS: list[dict[str, Any]] = [
    {"id": "q1", "type": "true_false", "text": "党的最高理想是实现共产主义", "points": 50, "answer": True},
    {
        "id": "q2",
        "type": "single",
        "text": "三会一课中的“一课”指",
        "points": 50,
        "options": [{"id": "a", "text": "党课"}, {"id": "b", "text": "团课"}],
        "answer": "a",
    },
]


@pytest.fixture
async def deps(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[WorkerDeps]:
    async with worker_deps(settings) as d:
        yield d


async def build_branches(client: TestClient[Any, Any], sizes: dict[str, int]) -> dict[str, list[str]]:
    """c -> one branch per entry of ``sizes`` with that many members: {branch: member ids}."""
    await put(client, "/v1/units/c", {"name": "市委"})
    out: dict[str, list[str]] = {}
    for branch, n in sizes.items():
        await put(client, f"/v1/units/{branch}", {"name": f"支部{branch}", "parent_id": "c"})
        out[branch] = [f"{branch}-{i:02d}" for i in range(n)]
    batch = [{"id": m, "name": f"党员{m}", "units": [b]} for b, ms in out.items() for m in ms]
    await post(client, "/v1/members:batch", {"members": batch}, status=200)
    return out


async def sent_quiz(
    client: TestClient[Any, Any],
    db: asyncpg.Connection,
    deps: WorkerDeps,
    units: list[str],
    *,
    pass_mark: int | None = 60,
    tie_break: str = "none",
) -> str:
    """A quiz of kind exam whose notice reached ``units`` (fanned out): its id."""
    notice = await post(
        client,
        "/v1/notices",
        {"kind": "notice", "title": "十一月测试", "body": "请完成本月测试", "audience": {"units": units}},
        status=202,
    )
    await fanout_notice(deps, notice["id"])
    async with deps.pool.acquire() as conn:  # the app's JSON codecs
        quiz = await quizzes.insert(
            conn,
            scope_unit_id=None,
            created_by=None,
            title="十一月测试",
            questions=QUESTIONS,
            max_score=100,
            kind="exam",
            attempts_allowed=1,
            pass_mark=pass_mark,
            notice_id=notice["id"],
        )
    await db.execute(
        "INSERT INTO exams (quiz_id, notice_id, tie_break) VALUES ($1, $2, $3)",
        quiz["id"],
        notice["id"],
        tie_break,
    )
    return str(quiz["id"])


async def graded(db: asyncpg.Connection, quiz_id: str, results: dict[str, tuple[int, int]]) -> None:
    """Results as the submit writes them: {member: (score, seconds taken)}."""
    await db.executemany(
        "INSERT INTO quiz_results (quiz_id, member_id, score, max_score, attempts, first_submitted_at,"
        " seconds_taken, final) VALUES ($1, $2, $3, 100, 1, now(), $4, true)",
        [(quiz_id, m, Decimal(s), Decimal(t)) for m, (s, t) in results.items()],
    )
