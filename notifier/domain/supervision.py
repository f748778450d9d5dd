"""Supervision of 三会一课: which periods of a quarter a unit owed meetings for, and what counts.

Pure rules, used by db/supervision.py's report and table-tested:

- A quarter is written ``2026Q4``; it is read in the reporting unit's time zone (its own or
  inherited), and so are the months inside it.
- A requirement says a unit type holds ``times`` meetings of a type every ``month`` or ``quarter``.
  Over a quarter it owes ``times`` per month (three periods) or ``times`` once (one period).
- A meeting counts for the period its start falls in, and counts as **held** once its end has
  passed and it left evidence: at least one accepted check-in, or a record (minutes or a photo).
- A period is **overdue** when it has ended (by the server clock) and fewer meetings than required
  were held in it. A period still running is never overdue, however little happened so far, and
  a period that ended before the unit existed is not owed at all.
- Attendance rate = present / (expected - excused) over the held meetings: members on leave (请假)
  are out of the denominator; a member who was excused and checked in anyway counts as present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

Every = Literal["month", "quarter"]
QUARTER_PATTERN = r"^[0-9]{4}Q[1-4]$"


@dataclass(frozen=True, slots=True)
class Period:
    label: str  # 2026-10 for a month, 2026Q4 for a quarter
    start: date  # first local day
    end: date  # first local day after it


@dataclass(frozen=True, slots=True)
class Quarter:
    year: int
    q: int

    @classmethod
    def parse(cls, text: str) -> Quarter:
        if not re.fullmatch(QUARTER_PATTERN, text):
            raise ValueError("a quarter is written YYYYQn, e.g. 2026Q4")
        year = int(text[:4])
        if year < 1970:
            raise ValueError("a quarter is written YYYYQn, e.g. 2026Q4")
        return cls(year, int(text[5]))

    @classmethod
    def of(cls, day: date) -> Quarter:
        return cls(day.year, (day.month - 1) // 3 + 1)

    def __str__(self) -> str:
        return f"{self.year}Q{self.q}"

    @property
    def start(self) -> date:
        return date(self.year, 3 * self.q - 2, 1)

    @property
    def end(self) -> date:
        return date(self.year + 1, 1, 1) if self.q == 4 else date(self.year, 3 * self.q + 1, 1)

    def months(self) -> list[Period]:
        out = []
        for month in range(3 * self.q - 2, 3 * self.q + 1):
            start = date(self.year, month, 1)
            end = date(self.year + 1, 1, 1) if month == 12 else date(self.year, month + 1, 1)
            out.append(Period(f"{self.year}-{month:02d}", start, end))
        return out

    def periods(self, every: Every) -> list[Period]:
        if every == "month":
            return self.months()
        return [Period(str(self), self.start, self.end)]


@dataclass(frozen=True, slots=True)
class PeriodCount:
    period: Period
    required: int
    held: int
    ended: bool

    @property
    def overdue(self) -> bool:
        return self.ended and self.held < self.required


def period_counts(
    quarter: Quarter,
    every: Every,
    times: int,
    held_starts: list[date],
    today: date,
    since: date | None = None,
) -> list[PeriodCount]:
    """Each period of the quarter with what was required, what was held (meetings by local start
    day) and whether it has ended by ``today`` (the local day of the server clock). ``since``: the
    unit's first local day; a period that ended before it requires nothing."""
    return [
        PeriodCount(
            p,
            0 if since is not None and p.end <= since else times,
            sum(1 for d in held_starts if p.start <= d < p.end),
            today >= p.end,
        )
        for p in quarter.periods(every)
    ]


def attendance_rate(present: int, expected: int, excused: int) -> float | None:
    """Present over those expected who were not excused; None when nobody was left to expect."""
    denominator = expected - excused
    return None if denominator <= 0 else round(min(present, denominator) / denominator, 4)
