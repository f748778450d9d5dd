"""The ranking rules, table-tested: competition ranks, the Wilson bound, and branch order."""

from __future__ import annotations

from decimal import Decimal

import pytest

from notifier.domain.ranking import BranchCounts, competition_ranks, rank_branches, wilson_lower


@pytest.mark.parametrize(
    ("keys", "ranks"),
    [
        ([], []),
        ([9], [1]),
        ([9, 8, 8, 7], [1, 2, 2, 4]),
        ([5, 5, 5], [1, 1, 1]),
        ([(9, 10), (9, 12), (9, 12), (8, 1)], [1, 2, 2, 4]),
    ],
)
def test_competition_ranks(keys: list[object], ranks: list[int]) -> None:
    assert competition_ranks(keys) == ranks


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 0, 0.0, 0.0), (0, 10, 0.0, 0.0), (3, 3, 0.43, 0.44), (38, 40, 0.83, 0.84), (3, 40, 0.02, 0.03)],
)
def test_wilson_lower_bound(k: int, n: int, low: float, high: float) -> None:
    assert low <= wilson_lower(k, n) <= high


def counts(unit: str, expected: int, participants: int, total: int, passed: int = 0) -> BranchCounts:
    return BranchCounts(unit, unit, expected, participants, Decimal(total), passed)


def test_participation_beats_a_few_high_scores() -> None:
    # 3 of 40 took it and scored full marks; 38 of 40 took it and scored 60 on average.
    rows = rank_branches(
        [counts("few", 40, 3, 300, 3), counts("most", 40, 38, 38 * 60, 20)], has_pass_mark=True
    )
    assert [(r.unit_id, r.rank) for r in rows] == [("most", 1), ("few", 2)]
    few = rows[1]
    assert few.participation_rate == 0.075 and few.mean_score == 100.0 and few.mean_score_all == 7.5
    assert few.pass_rate == 1.0 and rows[0].pass_rate == round(20 / 38, 4)


def test_a_small_full_branch_does_not_top_a_large_nearly_full_one_by_luck() -> None:
    rows = rank_branches([counts("tiny", 3, 3, 300), counts("big", 40, 38, 38 * 90)], has_pass_mark=False)
    assert [r.unit_id for r in rows] == ["big", "tiny"]
    assert rows[0].passed is None and rows[0].pass_rate is None


def test_equal_participation_then_mean_decides_and_full_ties_share_a_rank() -> None:
    rows = rank_branches(
        [
            counts("a", 10, 8, 640),
            counts("b", 10, 8, 720),
            counts("c", 10, 8, 640),
            counts("d", 10, 2, 200),
            counts("empty", 0, 0, 0),
        ],
        has_pass_mark=False,
    )
    assert [(r.unit_id, r.rank) for r in rows] == [("b", 1), ("a", 2), ("c", 2), ("d", 4), ("empty", None)]
    assert rows[-1].participation_rate is None and rows[-1].mean_score is None
