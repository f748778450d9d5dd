"""The sliced validation of POST /v1/receipts:batch (api/routing.py validate_body) answers as the
one call it stands for, on every shape of body, and does no more item validations than it."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest
from pydantic import Field, ValidationError, model_validator

from notifier.api.receipts import BATCH_MAX, BatchIn, BatchReceiptIn
from notifier.api.routing import validate_body
from notifier.api.types import Strict

SEEN = [0]


class CountedItem(BatchReceiptIn):
    @model_validator(mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        SEEN[0] += 1
        return value


class CountedBatch(Strict):
    """BatchIn, its items counted as they are validated."""

    SLICED: ClassVar[str] = "receipts"
    receipts: list[CountedItem] = Field(min_length=1, max_length=BATCH_MAX)


def _items(n: int) -> list[dict[str, Any]]:
    return [{"notice_id": str(uuid.UUID(int=i)), "member_id": f"m{i}", "type": "read"} for i in range(n)]


async def test_a_batch_over_the_limit_is_not_validated_past_it() -> None:
    """One call stops at item BATCH_MAX + 1 (too_long); the sliced path validated every item of
    the body (up to the 16 MB body limit: ~180,000) and then the whole limit again."""
    data = {"receipts": _items(3 * BATCH_MAX)}
    SEEN[0] = 0
    try:
        CountedBatch.model_validate(data)
    except ValidationError as exc:
        one = exc.errors(include_url=False)
    one_count = SEEN[0]
    SEEN[0] = 0
    try:
        await validate_body(CountedBatch, data)
    except ValidationError as exc:
        sliced = exc.errors(include_url=False)
    assert sliced == one
    assert SEEN[0] <= one_count, (SEEN[0], one_count)


def _bad(items: list[dict[str, Any]], i: int, **fields: Any) -> list[Any]:
    out: list[Any] = list(items)
    out[i] = {**out[i], **fields}
    return out


CASES: dict[str, Any] = {
    "250": {"receipts": _items(250)},
    "251": {"receipts": _items(251)},
    "500": {"receipts": _items(500)},
    "501-bad-last": {"receipts": _bad(_items(501), 500, type="x")},
    "251-bad-250": {"receipts": _bad(_items(251), 250, member_id="")},
    "10000": {"receipts": _items(BATCH_MAX)},
    "10001": {"receipts": _items(BATCH_MAX + 1)},
    "10001-bad-0": {"receipts": _bad(_items(BATCH_MAX + 1), 0, type="x")},
    "empty": {"receipts": []},
    "missing": {},
    "not-a-list": {"receipts": "x"},
    "an-object": {"receipts": {"0": _items(1)[0]}},
    "null": {"receipts": None},
    "non-dict-items": {"receipts": [*_items(300), 5, "x", None]},
    "extra-top": {"receipts": _items(300), "more": 1},
    "at-naive-in-slice-2": {"receipts": _bad(_items(600), 520, at="2026-01-01T00:00:00")},
    "same-dict-shared": {"receipts": [_items(1)[0]] * 600},
}


@pytest.mark.parametrize("case", list(CASES))
async def test_sliced_answers_as_one_call(case: str) -> None:
    data = CASES[case]
    results = []
    for run in ("one", "sliced"):
        try:
            got: Any = BatchIn.model_validate(data) if run == "one" else await validate_body(BatchIn, data)
        except ValidationError as exc:
            got = exc.errors(include_url=False)
        results.append(got)
    assert results[0] == results[1]
