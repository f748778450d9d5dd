"""domain/scoring.py: every question type and partial mode, table-driven (pure, no database)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from notifier.domain import scoring

OPTS = [{"id": i, "text": i.upper()} for i in ("a", "b", "c", "d")]
SINGLE = {"id": "s", "type": "single", "points": 2, "options": OPTS, "answer": "b"}
TF = {"id": "t", "type": "true_false", "points": 1, "answer": False}
FILL = {"id": "f", "type": "fill_in", "points": 3, "answer": ["Yan'an Spirit", "延安精神"]}


def multiple(mode: str) -> dict[str, Any]:
    return {
        "id": "m",
        "type": "multiple",
        "points": 4,
        "options": OPTS,
        "answer": ["a", "b", "c"],
        "partial": mode,
    }


CASES: list[tuple[str, dict[str, Any], Any, str]] = [
    ("single right", SINGLE, "b", "2"),
    ("single wrong", SINGLE, "a", "0"),
    ("single empty", SINGLE, "", "0"),
    ("single unanswered", SINGLE, None, "0"),
    ("single given as a list", SINGLE, ["b"], "0"),
    ("true/false right", TF, False, "1"),
    ("true/false wrong", TF, True, "0"),
    ("true/false given as 0", TF, 0, "0"),
    ("fill-in exact", FILL, "延安精神", "3"),
    ("fill-in case and spaces", FILL, "  yan'an   SPIRIT ", "3"),
    ("fill-in full-width letters and ideographic space", FILL, "Ｙａｎ'ａｎ\u3000Ｓｐｉｒｉｔ", "3"),
    ("fill-in wrong", FILL, "井冈山精神", "0"),
    ("fill-in empty", FILL, "", "0"),
    ("fill-in only spaces", FILL, " \u3000 ", "0"),
    # all_or_nothing
    ("aon exact (any order)", multiple("all_or_nothing"), ["c", "a", "b"], "4"),
    ("aon one missing", multiple("all_or_nothing"), ["a", "b"], "0"),
    ("aon all ticked", multiple("all_or_nothing"), ["a", "b", "c", "d"], "0"),
    ("aon empty", multiple("all_or_nothing"), [], "0"),
    # right_minus_wrong: points * max(0, right - wrong) / |right options|
    ("rmw exact", multiple("right_minus_wrong"), ["a", "b", "c"], "4"),
    ("rmw two of three", multiple("right_minus_wrong"), ["a", "b"], "2.67"),
    ("rmw one of three", multiple("right_minus_wrong"), ["a"], "1.33"),
    ("rmw all ticked: 3 right, 1 wrong", multiple("right_minus_wrong"), ["a", "b", "c", "d"], "2.67"),
    ("rmw one right one wrong", multiple("right_minus_wrong"), ["a", "d"], "0"),
    ("rmw only wrong: floor 0", multiple("right_minus_wrong"), ["d"], "0"),
    ("rmw empty", multiple("right_minus_wrong"), [], "0"),
    # half_if_missing (少选得一半分)
    ("half exact", multiple("half_if_missing"), ["b", "a", "c"], "4"),
    ("half one missing", multiple("half_if_missing"), ["a", "c"], "2"),
    ("half only one right", multiple("half_if_missing"), ["b"], "2"),
    ("half a wrong pick", multiple("half_if_missing"), ["a", "b", "d"], "0"),
    ("half all ticked", multiple("half_if_missing"), ["a", "b", "c", "d"], "0"),
    ("half empty", multiple("half_if_missing"), [], "0"),
]


@pytest.mark.parametrize(
    ("question", "answer", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_score_question(question: dict[str, Any], answer: Any, expected: str) -> None:
    assert scoring.score_question(question, answer) == Decimal(expected)


def test_all_ticked_with_two_right_of_four_scores_nothing_in_every_mode() -> None:
    for mode in ("all_or_nothing", "right_minus_wrong", "half_if_missing"):
        q = {**multiple(mode), "answer": ["a", "b"]}
        assert scoring.score_question(q, ["a", "b", "c", "d"]) == 0, mode


def test_score_attempt_totals_and_per_question() -> None:
    total, per = scoring.score_attempt([SINGLE, TF, FILL], {"s": "b", "f": "yan'an spirit", "x": "ignored"})
    assert total == Decimal(5)
    assert per == {"s": Decimal(2), "t": Decimal(0), "f": Decimal(3)}
    assert scoring.max_score([SINGLE, TF, FILL]) == Decimal(6)


CHECKS: list[tuple[dict[str, Any], Any, str | None]] = [
    (SINGLE, "b", None),
    (SINGLE, "", None),
    (SINGLE, "z", "unknown option 'z'"),
    (SINGLE, 3, "must be one option id"),
    (multiple("all_or_nothing"), ["a", "z"], "unknown option 'z'"),
    (multiple("all_or_nothing"), ["a", "a"], "an option is picked twice"),
    (multiple("all_or_nothing"), "a", "must be a list of option ids"),
    (TF, "true", "must be true or false"),
    (FILL, ["x"], "must be a text"),
    (FILL, None, None),
]


@pytest.mark.parametrize(("question", "answer", "expected"), CHECKS)
def test_check_answer(question: dict[str, Any], answer: Any, expected: str | None) -> None:
    assert scoring.check_answer(question, answer) == expected


def test_shuffles_are_stable_per_seed_and_differ_between_seeds() -> None:
    ids = [f"q{i}" for i in range(12)]
    first = scoring.question_order(42, ids)
    assert first == scoring.question_order(42, ids)
    assert sorted(first) == sorted(ids)
    assert first != ids
    assert scoring.question_order(43, ids) != first
    assert scoring.question_order(42, ids, shuffle=False) == ids
    opts = [o["id"] for o in OPTS] * 1
    assert scoring.option_order(7, "q1", opts) == scoring.option_order(7, "q1", opts)
    assert {tuple(scoring.option_order(7, q, opts)) for q in ids} != {tuple(opts)}
