"""Quiz scoring: pure functions over a question (with its answer key) and a member's answer.

Question types and what a stored question carries (the key is ``answer``; api/quizzes.py checks
the shape on creation and strips ``answer`` from every member view):

==============  ===========================================  ================================
type            key (``answer``)                              a member's answer
==============  ===========================================  ================================
``single``      the right option's id                         one option id
``multiple``    the right options' ids (at least one)         a list of option ids
``true_false``  true or false                                 true or false
``fill_in``     the accepted answers (at least one)           a text
==============  ===========================================  ================================

A question scores between 0 and its ``points``; an empty answer (no option, ``[]``, a text
that normalises to nothing) scores 0. Multiple choice declares its ``partial`` mode; with R the
right options, P the options picked, right = |P ∩ R| and wrong = |P \\ R|:

- ``all_or_nothing``: full points when P = R, else 0.
- ``right_minus_wrong``: points × max(0, right − wrong) / |R| -- each right pick earns its share,
  each wrong pick takes one share away, never below 0 (ticking every option of a question with
  2 right of 4 scores 0).
- ``half_if_missing`` (少选得一半分): full points when P = R; half when P is a non-empty proper
  subset of R (a right option missing, nothing wrong); 0 for any wrong pick.

Fill-in answers match when equal after :func:`normalise` (Unicode NFKC -- full-width letters,
digits, punctuation and the ideographic space become their half-width forms -- then case folding,
then whitespace trimmed and runs of it collapsed to one space).

Scores are Decimals rounded half-up to two places. Shuffling is a deterministic function of the
attempt's seed (:func:`question_order`, :func:`option_order`), so a reload shows the same order.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

QuestionType = Literal["single", "multiple", "true_false", "fill_in"]
PartialMode = Literal["all_or_nothing", "right_minus_wrong", "half_if_missing"]

CENT = Decimal("0.01")


def normalise(text: str) -> str:
    """A fill-in answer as compared: NFKC, case-folded, whitespace trimmed and collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _points(question: Mapping[str, Any]) -> Decimal:
    return Decimal(str(question["points"]))


def _round(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _multiple_fraction(mode: str, right_set: set[str], picked: set[str]) -> Decimal:
    right = len(picked & right_set)
    wrong = len(picked - right_set)
    if not picked:
        return Decimal(0)
    if mode == "all_or_nothing":
        return Decimal(1) if picked == right_set else Decimal(0)
    if mode == "right_minus_wrong":
        return Decimal(max(0, right - wrong)) / Decimal(len(right_set))
    if mode == "half_if_missing":
        if wrong:
            return Decimal(0)
        return Decimal(1) if right == len(right_set) else Decimal("0.5")
    raise ValueError(f"unknown partial mode {mode!r}")


def score_question(question: Mapping[str, Any], answer: Any) -> Decimal:
    """Points earned by ``answer`` (None: unanswered) on ``question`` (with its key)."""
    kind = question["type"]
    key = question["answer"]
    if answer is None:
        return Decimal(0)
    if kind == "single":
        fraction = Decimal(1) if isinstance(answer, str) and answer == key else Decimal(0)
    elif kind == "true_false":
        fraction = Decimal(1) if isinstance(answer, bool) and answer is key else Decimal(0)
    elif kind == "multiple":
        picked = set(answer) if isinstance(answer, list) else set()
        fraction = _multiple_fraction(question.get("partial", "all_or_nothing"), set(key), picked)
    elif kind == "fill_in":
        given = normalise(answer) if isinstance(answer, str) else ""
        fraction = Decimal(1) if given and given in {normalise(a) for a in key} else Decimal(0)
    else:
        raise ValueError(f"unknown question type {kind!r}")
    return _round(_points(question) * fraction)


def score_attempt(
    questions: Sequence[Mapping[str, Any]], answers: Mapping[str, Any]
) -> tuple[Decimal, dict[str, Decimal]]:
    """(total, points per question id) of ``answers`` ({question id: answer}) on ``questions``."""
    per = {q["id"]: score_question(q, answers.get(q["id"])) for q in questions}
    return _round(sum(per.values(), Decimal(0))), per


def max_score(questions: Iterable[Mapping[str, Any]]) -> Decimal:
    return _round(sum((_points(q) for q in questions), Decimal(0)))


def check_answer(question: Mapping[str, Any], answer: Any) -> str | None:
    """Why ``answer`` is not an answer to ``question`` (wrong shape, unknown option), or None."""
    if answer is None:
        return None
    kind = question["type"]
    options = {o["id"] for o in question.get("options", [])}
    if kind == "single":
        if not isinstance(answer, str):
            return "must be one option id"
        if answer and answer not in options:
            return f"unknown option {answer!r}"
    elif kind == "multiple":
        if not isinstance(answer, list) or not all(isinstance(a, str) for a in answer):
            return "must be a list of option ids"
        unknown = [a for a in answer if a not in options]
        if unknown:
            return f"unknown option {unknown[0]!r}"
        if len(set(answer)) != len(answer):
            return "an option is picked twice"
    elif kind == "true_false":
        if not isinstance(answer, bool):
            return "must be true or false"
    elif kind == "fill_in":
        if not isinstance(answer, str):
            return "must be a text"
        if len(answer) > 1000:
            return "at most 1000 characters"
    return None


def _shuffled(seed: int, salt: str, ids: Sequence[str]) -> list[str]:
    def rank(item: str) -> bytes:
        return hashlib.sha256(f"{seed}\x00{salt}\x00{item}".encode()).digest()

    return sorted(ids, key=rank)


def question_order(seed: int, question_ids: Sequence[str], shuffle: bool = True) -> list[str]:
    """The attempt's question order: as written, or shuffled by ``seed`` (same seed, same order)."""
    return _shuffled(seed, "", question_ids) if shuffle else list(question_ids)


def option_order(seed: int, question_id: str, option_ids: Sequence[str], shuffle: bool = True) -> list[str]:
    """A question's option order in the attempt: as written, or shuffled by ``seed`` and question."""
    return _shuffled(seed, "q:" + question_id, option_ids) if shuffle else list(option_ids)
