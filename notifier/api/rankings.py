"""GET /v1/quizzes/{id}/ranking: a test's results ranked per member and per branch, and its CSV
for appraisal (评优评先); /v1/units/{id}/ranking-settings: whether members see names.

Who sees what: an admin every recipient; a unit-bound key the recipients in its subtree (or in
``unit``'s, inside its reach) -- the same slice as the notice's roll-call (api/slices.py). The
branches are the children of that unit (an admin naming none: the organisations). A member sees
their own result and rank among every taker, and -- only when their organisation has turned
``show_names`` on -- the leaderboard of their own units' members; by default nobody's name.

The rule that orders branches is domain/ranking.py's: the Wilson lower bound of participation,
then the mean score of participants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, StrictBool

from notifier.api import audit
from notifier.api.auth import require_unit
from notifier.api.cursors import decode_cursor, encode_cursor
from notifier.api.keys import DEPS, principal
from notifier.api.principal import Principal
from notifier.api.problems import Problem, invalid, not_found
from notifier.api.rollcall import CSV_TYPE, csv_cell, csv_text, wants_csv
from notifier.api.routing import Call, Router, json_response
from notifier.api.slices import load_notice_slice
from notifier.api.types import Id, Strict, parse_uuid
from notifier.db import exams, rankings, recipients, units
from notifier.db.pool import Connection, Pool, Record
from notifier.domain.ranking import BranchCounts, branch_row, rank_branches

routes = Router()

RULE = (
    "branches by the Wilson lower bound (95%) of participants / expected takers, then by the mean "
    "score of participants; equal on both: the same rank (1, 2, 2, 4)"
)
CSV_COLUMNS = (
    "rank",
    "member_id",
    "name",
    "units",
    "taken",
    "score",
    "max_score",
    "percent",
    "passed",
    "seconds_taken",
    "submitted_at",
)
CSV_PAGE = 1000


class RankingQuery(Strict):
    unit: Id | None = Field(
        default=None, description="this unit's subtree, its children as the branches (inside your reach)"
    )
    limit: int = Field(default=100, ge=1, le=1000, description="members per page")
    cursor: str | None = Field(default=None, max_length=100)


class MemberRank(BaseModel):
    member_id: str
    name: str
    taken: bool
    rank: int | None = Field(description="competition rank among the takers (1, 2, 2, 4); None: not taken")
    score: float | None
    max_score: float | None
    passed: bool | None = Field(description="None: not taken, or the test has no pass mark")
    seconds_taken: float | None
    submitted_at: datetime | None


class MyRank(BaseModel):
    taken: bool
    rank: int | None
    takers: int = Field(description="how many have taken it (the rank is among them)")
    score: float | None
    max_score: float | None
    passed: bool | None
    seconds_taken: float | None
    submitted_at: datetime | None


class BranchOut(BaseModel):
    unit_id: str
    name: str
    rank: int | None = Field(description="None: nobody in it was expected to take the test")
    expected: int = Field(description="recipients of the test's notice in its subtree, excused members out")
    participants: int
    participation_rate: float | None
    participation_lower_bound: float = Field(description="Wilson lower bound (95%) of participation")
    mean_score: float | None = Field(description="mean score of participants")
    mean_score_all: float | None = Field(description="mean score with non-takers as 0")
    passed: int | None = Field(description="None: the test has no pass mark")
    pass_rate: float | None = Field(description="passed / participants")


class RankingOut(BaseModel):
    quiz_id: str
    notice_id: str
    title: str
    closed: bool = Field(description="the test has closed: its results are final")
    max_score: float
    pass_mark: float | None
    tie_break: Literal["none", "time"]
    rule: str = Field(description="how branches are ordered")
    unit_id: str | None = Field(description="whose subtree: its children are the branches")
    summary: BranchOut | None = Field(description="the whole slice as one row (None for a member)")
    branches: list[BranchOut]
    members: list[MemberRank] = Field(description="takers by rank, then non-takers; a page of them")
    next_cursor: str | None
    me: MyRank | None = Field(description="a member's own result (None for other callers)")


class RankingSettings(Strict):
    show_names: StrictBool = Field(
        default=False, description="members see their units' leaderboard with names (default: only their own)"
    )


class RankingSettingsOut(BaseModel):
    unit_id: str
    show_names: bool
    updated_at: datetime | None


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _passed(score: Decimal | None, pass_mark: Decimal | None) -> bool | None:
    return None if score is None or pass_mark is None else score >= pass_mark


def _member(row: Record, pass_mark: Decimal | None) -> dict[str, Any]:
    return {
        "member_id": row["member_id"],
        "name": row["name"],
        "taken": row["rank"] is not None,
        "rank": row["rank"],
        "score": _num(row["score"]),
        "max_score": _num(row["max_score"]),
        "passed": _passed(row["score"], pass_mark),
        "seconds_taken": _num(row["seconds_taken"]),
        "submitted_at": row["first_submitted_at"],
    }


async def load_rankable(conn: Connection, quiz_id: str) -> Record:
    qid = parse_uuid(quiz_id)
    quiz = None if qid is None else await exams.rankable(conn, str(qid))
    if quiz is None:
        raise not_found("quiz")
    return quiz


async def staff_slice(conn: Connection, p: Principal, quiz: Record, unit: str | None) -> list[str] | None:
    """The roots of the caller's slice of the test's takers; 404 (quiz) when it may not see it."""
    if quiz["notice_id"] is None:
        if p.is_admin or (p.scope_root and quiz["scope_unit_id"] and p.scope_root == quiz["scope_unit_id"]):
            raise Problem(409, "Conflict", "this quiz was not sent as a notice: it has no expected takers")
        raise not_found("quiz")
    try:
        _, roots = await load_notice_slice(conn, p, str(quiz["notice_id"]), unit)
    except Problem as problem:
        if problem.status == 404 and unit is None:
            raise not_found("quiz") from None
        raise
    return roots


def _cursor(value: str | None) -> int:
    raw = decode_cursor(value)
    if raw is None:
        return 0
    if not raw.isdigit() or len(raw) > 9:
        raise invalid("query.cursor", "not a cursor this API returned")
    return int(raw)


@routes.route(
    "GET",
    "/v1/quizzes/{quiz_id}/ranking",
    summary="A test's results ranked per member and per branch (Accept: text/csv for appraisal)",
    tag="quizzes",
    query=RankingQuery,
    response=RankingOut,
    responses={
        409: "the quiz was not sent as a notice, so nobody is expected to take it",
        422: "cursor is not a next_cursor this API returned",
    },
    alternatives={
        CSV_TYPE: {
            "type": "string",
            "description": "with Accept: text/csv -- every member of your slice, UTF-8 with a byte-order "
            "mark, columns " + ", ".join(CSV_COLUMNS),
        }
    },
)
async def get_ranking(request: web.Request, call: Call) -> web.StreamResponse:
    p = principal(request)
    p.require("admin", "service", "secretary", "member")
    q = call.query_as(RankingQuery)
    offset = _cursor(q.cursor)
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        quiz = await load_rankable(conn, request.match_info["quiz_id"])
        if p.role == "member":
            if q.unit is not None:
                raise not_found("unit")
            return json_response(await _member_view(conn, p, quiz, q.limit, offset))
        roots = await staff_slice(conn, p, quiz, q.unit)
        if wants_csv(request):
            csv_roots = roots
        else:
            data = await _staff_view(conn, p, quiz, roots, q.unit, q.limit, offset)
            return json_response(data)
    return await _stream_csv(request, deps.pool, quiz, csv_roots)


def _head(quiz: Record) -> dict[str, Any]:
    return {
        "quiz_id": str(quiz["id"]),
        "notice_id": str(quiz["notice_id"]),
        "title": quiz["title"],
        "closed": quiz["closed"],
        "max_score": float(quiz["max_score"]),
        "pass_mark": _num(quiz["pass_mark"]),
        "tie_break": quiz["tie_break"],
        "rule": RULE,
    }


async def _staff_view(
    conn: Connection,
    p: Principal,
    quiz: Record,
    roots: list[str] | None,
    unit: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    notice_id, quiz_id, pass_mark = str(quiz["notice_id"]), str(quiz["id"]), quiz["pass_mark"]
    parent = unit or p.scope_root
    has_pass = pass_mark is not None
    whole = await rankings.summary(conn, notice_id, quiz_id, roots, pass_mark)
    name = "" if parent is None else (await units.get(conn, parent) or {"name": ""})["name"]
    summary = BranchCounts(
        parent or "", name, whole["expected"], whole["participants"], whole["score_sum"], whole["passed"]
    )
    branch_counts = await rankings.branches(conn, notice_id, quiz_id, parent, pass_mark)
    if parent is None:  # an admin over every organisation: those the test reached
        branch_counts = [b for b in branch_counts if b.expected]
    rows = await rankings.members(
        conn, notice_id, quiz_id, roots, tie_break=quiz["tie_break"], limit=limit + 1, offset=offset
    )
    more = len(rows) > limit
    body = {
        **_head(quiz),
        "unit_id": parent,
        "summary": asdict(branch_row(summary, has_pass_mark=has_pass)),
        "branches": [asdict(b) for b in rank_branches(branch_counts, has_pass_mark=has_pass)],
        "members": [_member(r, pass_mark) for r in rows[:limit]],
        "next_cursor": encode_cursor(str(offset + limit)) if more else None,
        "me": None,
    }
    return RankingOut.model_validate(body).model_dump(mode="json")


async def _member_view(
    conn: Connection, p: Principal, quiz: Record, limit: int, offset: int
) -> dict[str, Any]:
    assert p.member_id is not None
    if quiz["notice_id"] is None or await recipients.get(conn, str(quiz["notice_id"]), p.member_id) is None:
        raise not_found("quiz")
    notice_id, quiz_id, pass_mark = str(quiz["notice_id"]), str(quiz["id"]), quiz["pass_mark"]
    mine = await rankings.member(conn, notice_id, quiz_id, p.member_id, tie_break=quiz["tie_break"])
    takers = await rankings.summary(conn, notice_id, quiz_id, None, None)
    me = {
        "taken": mine is not None,
        "rank": None if mine is None else mine["rank"],
        "takers": takers["participants"],
        "score": None if mine is None else _num(mine["score"]),
        "max_score": None if mine is None else _num(mine["max_score"]),
        "passed": None if mine is None else _passed(mine["score"], pass_mark),
        "seconds_taken": None if mine is None else _num(mine["seconds_taken"]),
        "submitted_at": None if mine is None else mine["first_submitted_at"],
    }
    rows: list[Record] = []
    if await exams.shows_names(conn, p.member_id):
        own = await exams.own_units(conn, notice_id, p.member_id)
        if own:
            rows = await rankings.members(
                conn, notice_id, quiz_id, own, tie_break=quiz["tie_break"], limit=limit + 1, offset=offset
            )
    more = len(rows) > limit
    body = {
        **_head(quiz),
        "unit_id": None,
        "summary": None,
        "branches": [],
        "members": [_member(r, pass_mark) for r in rows[:limit]],
        "next_cursor": encode_cursor(str(offset + limit)) if more else None,
        "me": me,
    }
    return RankingOut.model_validate(body).model_dump(mode="json")


async def _csv_pages(pool: Pool, quiz: Record, roots: list[str] | None) -> AsyncIterator[list[Record]]:
    """Pages of the slice's members; one connection per page, none held while the client reads."""
    offset = 0
    while True:
        async with pool.acquire() as conn:
            rows = await rankings.members(
                conn,
                str(quiz["notice_id"]),
                str(quiz["id"]),
                roots,
                tie_break=quiz["tie_break"],
                limit=CSV_PAGE,
                offset=offset,
            )
        if rows:
            yield rows
        if len(rows) < CSV_PAGE:
            return
        offset += CSV_PAGE


def _plain(value: Decimal | None) -> str:
    """A score as people write it: 100, 62.5 (never 100.00 or 1E+2)."""
    return "" if value is None else f"{value.normalize():f}"


def _csv_row(row: Record, quiz: Record) -> list[str]:
    score, max_score = row["score"], row["max_score"]
    passed = _passed(score, quiz["pass_mark"])
    values = [
        "" if row["rank"] is None else str(row["rank"]),
        row["member_id"],
        row["name"],
        " ".join(row["direct_units"] or ()),
        "yes" if row["rank"] is not None else "no",
        _plain(score),
        _plain(max_score),
        "" if score is None or not max_score else f"{100 * score / max_score:.1f}",
        "" if passed is None else ("yes" if passed else "no"),
        "" if row["seconds_taken"] is None else f"{row['seconds_taken']:.0f}",
        "" if row["first_submitted_at"] is None else row["first_submitted_at"].isoformat(),
    ]
    return [csv_cell(v) for v in values]


async def _stream_csv(
    request: web.Request, pool: Pool, quiz: Record, roots: list[str] | None
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": f"{CSV_TYPE}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="ranking-{quiz["id"]}.csv"',
        }
    )
    await resp.prepare(request)
    await resp.write("\ufeff".encode() + csv_text([list(CSV_COLUMNS)]))
    async for rows in _csv_pages(pool, quiz, roots):
        await resp.write(csv_text([_csv_row(r, quiz) for r in rows]))
    await resp.write_eof()
    return resp


async def _organisation(conn: Connection, p: Principal, unit_id: str) -> Record:
    unit = await require_unit(conn, p, unit_id)
    if unit["parent_id"] is not None:
        raise invalid("unit_id", "a setting of an organisation: name its root unit")
    return unit


@routes.route(
    "GET",
    "/v1/units/{unit_id}/ranking-settings",
    summary="Whether an organisation's members see names on their leaderboard",
    tag="quizzes",
    response=RankingSettingsOut,
    responses={422: "the unit is not an organisation's root unit"},
)
async def get_ranking_settings(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service", "secretary")
    unit_id = request.match_info["unit_id"]
    async with request.app[DEPS].pool.acquire() as conn:
        await _organisation(conn, p, unit_id)
        row = await exams.settings(conn, unit_id)
    data = {"unit_id": unit_id, "show_names": False, "updated_at": None} if row is None else dict(row)
    return json_response(RankingSettingsOut.model_validate(data).model_dump(mode="json"))


@routes.route(
    "PUT",
    "/v1/units/{unit_id}/ranking-settings",
    summary="Set whether an organisation's members see names on their leaderboard",
    tag="quizzes",
    body=RankingSettings,
    response=RankingSettingsOut,
    responses={422: "the unit is not an organisation's root unit"},
)
async def put_ranking_settings(request: web.Request, call: Call) -> web.Response:
    p = principal(request)
    p.require("admin", "service")
    body = call.body_as(RankingSettings)
    unit_id = request.match_info["unit_id"]
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        await _organisation(conn, p, unit_id)
        row = await exams.put_settings(conn, unit_id, body.show_names)
        await audit.record(
            conn, request, "ranking_settings.put", "unit", unit_id, [unit_id], {"show_names": body.show_names}
        )
    return json_response(RankingSettingsOut.model_validate(dict(row)).model_dump(mode="json"))
