"""A validation error names the field as the caller wrote it -- ``escalation.steps[0].remind`` --
never pydantic's own labels for union members and validators (``function-after[_ordered(),
PolicyRules]``, ``constrained-str``), and says nothing about a union member the caller did not mean."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, ValidationError

from notifier.api.notices import NoticeIn
from notifier.api.problems import caller_loc, from_validation_error
from tests.api.conftest import problem, snapshot
from tests.conftest import auth
from tests.helpers import put

NOTICE = {"kind": "ding", "title": "Fire drill", "body": "Assemble at gate 2", "audience": {"units": ["c"]}}
PYDANTIC_LABELS = ("function-", "constrained-", "[key]", "str]", "list[")


def _errors(model: type[BaseModel], data: dict[str, Any]) -> list[dict[str, str]]:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        problem = from_validation_error(exc, data=data)
        assert problem.errors is not None
        return problem.errors
    raise AssertionError("the input was valid")


@pytest.mark.parametrize(
    ("escalation", "errors"),
    [
        (
            {"steps": [{"after": "PT1M", "remind": [1]}]},
            [{"field": "escalation.steps[0].remind[0]", "message": "Input should be a valid string"}],
        ),
        (
            {"steps": [{"after": "soon", "remind": ["sms"]}]},
            [
                {
                    "field": "escalation.steps[0].after",
                    "message": "Value error, an ISO 8601 duration such as PT5M or PT30S",
                }
            ],
        ),
        (
            {"steps": [{"after": "PT1M", "remind": ["sms", "sms"]}]},
            [{"field": "escalation.steps[0]", "message": "Value error, channels and roles must not repeat"}],
        ),
        (
            {"stepz": []},
            [
                {"field": "escalation.steps", "message": "Field required"},
                {"field": "escalation.stepz", "message": "unknown field"},
            ],
        ),
        (
            {"steps": [{"after": "PT5M", "remind": ["sms"]}, {"after": "PT1M", "remind": ["sms"]}]},
            [
                {
                    "field": "escalation",
                    "message": "Value error, steps must be in order of their 'after' delay",
                }
            ],
        ),
        ("", [{"field": "escalation", "message": "String should have at least 1 character"}]),
        (
            7,
            [
                {"field": "escalation", "message": "Input should be a valid string"},
                {
                    "field": "escalation",
                    "message": "Input should be a valid dictionary or instance of PolicyRules",
                },
            ],
        ),
    ],
)
def test_inline_escalation_errors_name_the_callers_fields(
    escalation: Any, errors: list[dict[str, str]]
) -> None:
    assert _errors(NoticeIn, {**NOTICE, "escalation": escalation}) == errors


def test_a_missing_or_unknown_field_keeps_its_name() -> None:
    assert caller_loc(("audience", "units"), {"audience": {}}, missing=True) == (("audience", "units"), False)
    assert caller_loc(("audience", "everyone"), {"audience": {"everyone": 1}}) == (
        ("audience", "everyone"),
        False,
    )
    # A label at the end: the field it belongs to, marked as a union member's mismatch.
    assert caller_loc(("escalation", "constrained-str"), {"escalation": {}}) == (("escalation",), True)


async def test_the_api_names_fields_as_written(client: TestClient[Any, Any], db: asyncpg.Connection) -> None:
    await put(client, "/v1/units/c", {"name": "Committee"})
    before = await snapshot(db)
    body = {**NOTICE, "escalation": {"steps": [{"after": "PT1M", "remind": ["sms"], "notify": [3]}]}}
    resp = await client.post("/v1/notices", json=body, headers=auth())
    answer = await problem(resp, 422)
    assert [e["field"] for e in answer["errors"]] == ["escalation.steps[0].notify[0]"]
    assert not any(label in answer["detail"] for label in PYDANTIC_LABELS), answer["detail"]

    policy = {"name": "p", "steps": [{"after": "PT1M", "remind": "sms"}]}
    resp = await client.post("/v1/escalation-policies", json=policy, headers=auth())
    answer = await problem(resp, 422)
    assert [e["field"] for e in answer["errors"]] == ["steps[0].remind"]

    resp = await client.get("/v1/units", params={"limit": "many"}, headers=auth())
    await problem(
        resp,
        422,
        [
            {
                "field": "query.limit",
                "message": "Input should be a valid integer, unable to parse string as an integer",
            }
        ],
    )
    assert await snapshot(db) == before
