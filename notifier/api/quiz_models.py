"""The bodies and answers of /v1/quizzes (api/quizzes.py), and the rules across their fields.

A question's key is its ``answer``: QuestionIn takes it, QuestionOut shows it only in an owner's
view (api/quiz_views.py leaves it out of every other)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictStr, model_validator

from notifier.api.notices import Audience
from notifier.api.problems import invalid_many
from notifier.api.types import Channels, Id, Name, Strict, Timestamp
from notifier.domain import scoring
from notifier.domain.escalation import PolicyRules
from notifier.domain.scoring import PartialMode, QuestionType

MAX_QUESTIONS = 200
MAX_OPTIONS = 26
MAX_ACCEPTED = 20

# Strict: 1 is not true, nor 2 an option id.
Answer = StrictStr | StrictBool | list[StrictStr]


# --- request bodies -----------------------------------------------------------------------------


class OptionIn(Strict):
    id: Id
    text: str = Field(min_length=1, max_length=1000)


class QuestionIn(Strict):
    id: Id = Field(description="unique in the quiz; answers name questions by it")
    type: QuestionType
    text: str = Field(min_length=1, max_length=5000)
    points: int = Field(ge=1, le=1000)
    options: list[OptionIn] = Field(
        default_factory=list, max_length=MAX_OPTIONS, description="single and multiple choice: 2 or more"
    )
    answer: Answer = Field(
        description="the key, never shown to members: single -- the right option's id; multiple -- the "
        "right options' ids; true_false -- true or false; fill_in -- the accepted answers (compared "
        "after NFKC normalisation, case folding and collapsing whitespace)"
    )
    partial: PartialMode | None = Field(
        default=None,
        description="multiple choice only (default all_or_nothing): right_minus_wrong = points x "
        "max(0, right picks - wrong picks) / right options; half_if_missing = half when a right option "
        "is missing and nothing wrong is picked (少选得一半分), 0 for any wrong pick",
    )


class QuizNoticeIn(Strict):
    """Send the quiz now, as a notice of kind ``notice``."""

    body: str = Field(min_length=1, max_length=20_000)
    audience: Audience
    channels: Channels = Field(default_factory=lambda: ["inapp"], min_length=1, max_length=16)
    fallback: bool = False
    escalation: Name | PolicyRules | None = None
    send_at: Timestamp | None = None
    expires_at: Timestamp | None = None

    @model_validator(mode="after")
    def _times(self) -> QuizNoticeIn:
        if self.expires_at is not None and self.send_at is not None and self.expires_at <= self.send_at:
            raise ValueError("expires_at must be after send_at")
        return self


class QuizIn(Strict):
    title: str = Field(min_length=1, max_length=200)
    kind: Literal["quiz", "exam"] = Field(
        default="quiz",
        description="quiz; exam is refused here (422): a monthly test is made with POST /v1/exams",
    )
    questions: list[QuestionIn] = Field(min_length=1, max_length=MAX_QUESTIONS)
    shuffle_questions: bool = False
    shuffle_options: bool = False
    attempts_allowed: int | None = Field(default=None, ge=1, le=100, description="null: unlimited")
    grading: Literal["highest", "last", "first", "average"] = "highest"
    time_limit_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)
    opens_at: Timestamp | None = None
    closes_at: Timestamp | None = None
    review: Literal["score", "answers", "after_close"] = "score"
    pass_mark: float | None = Field(default=None, ge=0, le=200_000)
    notice: QuizNoticeIn | None = Field(default=None, description="send it now to an audience")


class AnswersIn(Strict):
    answers: dict[str, Answer | None] = Field(
        default_factory=dict,
        max_length=MAX_QUESTIONS,
        description="{question id: answer}; a question given replaces its saved answer, null clears it",
    )


# --- responses ----------------------------------------------------------------------------------


class OptionOut(BaseModel):
    id: str
    text: str


class QuestionOut(BaseModel):
    id: str
    type: QuestionType
    text: str
    points: int
    options: list[OptionOut]
    partial: PartialMode | None = None
    answer: Answer | None = Field(default=None, description="the key: only in an owner's view")


class ResultOut(BaseModel):
    score: float
    max_score: float
    passed: bool | None = Field(description="score >= pass_mark (null: no pass mark)")
    attempts: int
    first_submitted_at: datetime
    seconds_taken: float | None
    final: bool = Field(description="it can no longer change")


class AttemptBrief(BaseModel):
    id: str
    n: int
    state: Literal["open", "submitted"]
    started_at: datetime
    deadline: datetime | None
    submitted_at: datetime | None
    auto_submitted: bool
    score: float | None = Field(description="as the review setting allows")


class Mine(BaseModel):
    attempts: list[AttemptBrief]
    attempts_left: int | None = Field(description="null: unlimited")
    result: ResultOut | None = Field(description="the graded result, as the review setting allows")


class QuizOut(BaseModel):
    id: str
    title: str
    kind: Literal["quiz", "exam"]
    view: Literal["owner", "reader", "member"]
    scope_unit_id: str | None
    question_count: int
    max_score: float
    shuffle_questions: bool
    shuffle_options: bool
    attempts_allowed: int | None
    grading: Literal["highest", "last", "first", "average"]
    time_limit_seconds: int | None
    opens_at: datetime | None
    closes_at: datetime | None
    review: Literal["score", "answers", "after_close"]
    pass_mark: float | None
    notice_id: str | None
    created_at: datetime
    updated_at: datetime
    questions: list[QuestionOut] | None = Field(
        description="owners and readers; members see them in an attempt"
    )
    mine: Mine | None = Field(description="a member's own attempts and result")


class ReviewItem(BaseModel):
    question_id: str
    points: float = Field(description="points earned")
    answer: Answer = Field(description="the right answer")


class AttemptOut(BaseModel):
    id: str
    quiz_id: str
    member_id: str
    n: int
    state: Literal["open", "submitted"]
    started_at: datetime
    deadline: datetime | None = Field(
        description="answers saved after it are refused; it submits itself then"
    )
    submitted_at: datetime | None
    auto_submitted: bool
    questions: list[QuestionOut] = Field(description="in this attempt's order (stable on reload)")
    answers: dict[str, Answer]
    max_score: float
    score: float | None = Field(description="as the review setting allows")
    review: list[ReviewItem] | None = Field(description="review 'answers' (or after close): per question")
    result: ResultOut | None = Field(description="the member's graded result, as the review setting allows")


# --- checks -------------------------------------------------------------------------------------


def _check_question(i: int, q: QuestionIn) -> list[tuple[str, str]]:
    at = f"questions[{i}]"
    errors: list[tuple[str, str]] = []
    ids = [o.id for o in q.options]
    for j, oid in enumerate(ids):
        if oid in ids[:j]:
            errors.append((f"{at}.options[{j}].id", "duplicate option id"))
    choice = q.type in ("single", "multiple")
    if choice and len(ids) < 2:
        errors.append((f"{at}.options", "a choice question needs at least 2 options"))
    if not choice and ids:
        errors.append((f"{at}.options", f"a {q.type} question has no options"))
    if q.partial is not None and q.type != "multiple":
        errors.append((f"{at}.partial", "only multiple choice has a partial mode"))
    a = q.answer
    if q.type == "single" and not (isinstance(a, str) and a in ids):
        errors.append((f"{at}.answer", "must be the id of one of its options"))
    elif q.type == "multiple":
        if not (isinstance(a, list) and a and all(x in ids for x in a)):
            errors.append((f"{at}.answer", "must list one or more of its option ids"))
        elif len(set(a)) != len(a):
            errors.append((f"{at}.answer", "an option is listed twice"))
    elif q.type == "true_false" and not isinstance(a, bool):
        errors.append((f"{at}.answer", "must be true or false"))
    elif q.type == "fill_in":
        if not (isinstance(a, list) and 1 <= len(a) <= MAX_ACCEPTED and all(scoring.normalise(x) for x in a)):
            errors.append((f"{at}.answer", f"must list 1 to {MAX_ACCEPTED} accepted answers, none empty"))
        elif any(len(x) > 1000 for x in a):
            errors.append((f"{at}.answer", "an accepted answer is longer than 1000 characters"))
    return errors


def check_quiz(body: QuizIn) -> None:
    """The rules across fields (422 naming each field as written)."""
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, q in enumerate(body.questions):
        if q.id in seen:
            errors.append((f"questions[{i}].id", "duplicate question id"))
        seen.add(q.id)
        errors += _check_question(i, q)
    if body.opens_at is not None and body.closes_at is not None and body.closes_at <= body.opens_at:
        errors.append(("closes_at", "must be after opens_at"))
    if body.review == "after_close" and body.closes_at is None:
        errors.append(("review", "after_close needs closes_at"))
    total = sum(q.points for q in body.questions)
    if body.pass_mark is not None and body.pass_mark > total:
        errors.append(("pass_mark", f"must not exceed the quiz's {total} points"))
    if errors:
        raise invalid_many(errors[:100])


def check_answers(questions: list[dict[str, Any]], answers: dict[str, Any]) -> None:
    """Every answer names a question of the quiz and fits it (422 ``answers.<id>``)."""
    by_id = {q["id"]: q for q in questions}
    errors: list[tuple[str, str]] = []
    for qid, value in answers.items():
        q = by_id.get(qid)
        why = "unknown question" if q is None else scoring.check_answer(q, value)
        if why is not None:
            errors.append((f"answers.{qid}", why))
    if errors:
        raise invalid_many(errors[:100])
