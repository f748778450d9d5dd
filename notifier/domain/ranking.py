"""Ranking a test's results: members by score, branches by participation and score (pure).

Members: competition ranking (1, 2, 2, 4 -- SQL ``RANK()``) by score, highest first; when the test
says ``tie_break = "time"``, an equal score goes to whoever took less time, and only a tie in both
shares a rank. Non-takers are listed after every taker, unranked.

Branches (the rule, as documented in the README and the API): every member the test's notice
reached counts as an expected taker of each branch they belong to (excused members do not count).
Branches are ordered by

1. the **Wilson score lower bound** (95 %, z = 1.96) of their participation rate
   ``participants / expected``, highest first -- participation matters most, and a small branch
   cannot top a large one by luck (3 of 3 scores 0.44, 38 of 40 scores 0.83, 3 of 40 scores 0.03);
2. then the **mean score of participants**, highest first;

and ranked 1, 2, 2, 4 when both are equal. A branch nobody was expected in comes last, unranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

Z_95 = 1.959963984540054


def wilson_lower(k: int, n: int, z: float = Z_95) -> float:
    """The lower bound of the Wilson score interval for ``k`` successes of ``n`` (0 when n = 0)."""
    if n <= 0:
        return 0.0
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def competition_ranks(keys: Sequence[object]) -> list[int]:
    """Ranks 1, 2, 2, 4 for ``keys`` already sorted best first (equal keys share a rank)."""
    ranks: list[int] = []
    for i, key in enumerate(keys):
        ranks.append(ranks[-1] if i and key == keys[i - 1] else i + 1)
    return ranks


@dataclass(frozen=True, slots=True)
class BranchCounts:
    """What SQL counts for one branch (db/rankings.py)."""

    unit_id: str
    name: str
    expected: int
    participants: int
    score_sum: Decimal
    passed: int


@dataclass(frozen=True, slots=True)
class BranchRow:
    unit_id: str
    name: str
    rank: int | None
    expected: int
    participants: int
    participation_rate: float | None
    participation_lower_bound: float
    mean_score: float | None  # of participants
    mean_score_all: float | None  # non-takers count as 0
    passed: int | None
    pass_rate: float | None  # passed / participants


def _ratio(a: float, b: int) -> float | None:
    return None if b == 0 else round(a / b, 4)


def branch_row(c: BranchCounts, *, has_pass_mark: bool, rank: int | None = None) -> BranchRow:
    total = float(c.score_sum)
    return BranchRow(
        unit_id=c.unit_id,
        name=c.name,
        rank=rank,
        expected=c.expected,
        participants=c.participants,
        participation_rate=_ratio(c.participants, c.expected),
        participation_lower_bound=round(wilson_lower(c.participants, c.expected), 4),
        mean_score=_ratio(total, c.participants),
        mean_score_all=_ratio(total, c.expected),
        passed=c.passed if has_pass_mark else None,
        pass_rate=_ratio(c.passed, c.participants) if has_pass_mark else None,
    )


def rank_branches(counts: Sequence[BranchCounts], *, has_pass_mark: bool) -> list[BranchRow]:
    """The branches in ranking order, each with its rank (the rule in the module docstring)."""

    def key(c: BranchCounts) -> tuple[float, float]:
        mean = float(c.score_sum) / c.participants if c.participants else 0.0
        return (wilson_lower(c.participants, c.expected), mean)

    ranked = sorted(
        (c for c in counts if c.expected > 0), key=lambda c: (tuple(-x for x in key(c)), c.unit_id)
    )
    ranks = competition_ranks([key(c) for c in ranked])
    rows = [branch_row(c, has_pass_mark=has_pass_mark, rank=r) for c, r in zip(ranked, ranks, strict=True)]
    empty = sorted((c for c in counts if c.expected == 0), key=lambda c: c.unit_id)
    return rows + [branch_row(c, has_pass_mark=has_pass_mark) for c in empty]
