"""The pure rules of meeting records: photo types by magic bytes, the upload's place and day, and
the supervision periods (held, overdue, attendance rate)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from notifier.domain import geo, photos
from notifier.domain.records import Device, Venue, judge
from notifier.domain.supervision import Quarter, attendance_rate, period_counts

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 32


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (JPEG, "image/jpeg"),
        (PNG, "image/png"),
        (b"GIF89a" + b"\x00" * 32, None),
        (b"<html><script>alert(1)</script></html>", None),
        (b"\xff\xd8\xff", None),  # the magic alone is no image
        (b"", None),
        (b"\x89PNG\r\n\x1a", None),  # a truncated signature
    ],
)
def test_a_photo_is_what_its_magic_bytes_say(data: bytes, expected: str | None) -> None:
    assert photos.sniff(data) == expected


def test_the_etag_is_the_content_hash() -> None:
    assert photos.etag(photos.digest(JPEG)) == '"' + photos.digest(JPEG).hex() + '"'
    assert photos.digest(JPEG) != photos.digest(PNG)


VENUE_AT = (39.9087, 116.3975)  # WGS-84, central Beijing
START = datetime(2026, 10, 14, 6, 0, tzinfo=UTC)  # 14:00 in Shanghai


def venue(**kw: object) -> Venue:
    values: dict[str, object] = {
        "lat": VENUE_AT[0],
        "lng": VENUE_AT[1],
        "datum": "wgs84",
        "radius_m": 300,
        "max_accuracy_m": 150,
        "starts_at": START,
        "ends_at": START + timedelta(hours=2),
        "timezone": "Asia/Shanghai",
    }
    values.update(kw)
    return Venue(**values)  # type: ignore[arg-type]


def at(metres: float, accuracy: float = 20, datum: geo.Datum = "wgs84", raw: bool = False) -> Device:
    lat, lng = geo.destination(*VENUE_AT, 45, metres)
    if datum != "wgs84" and not raw:
        lat, lng = geo.to_datum(lat, lng, "wgs84", datum)
    return Device(lat, lng, datum, accuracy)


@pytest.mark.parametrize(
    ("device", "refused"),
    [
        (at(100), None),
        (at(290), None),
        (at(310, accuracy=20), None),  # distance - accuracy = 290 <= 300: could be inside
        (at(330, accuracy=20), "outside-venue"),
        (at(1000), "outside-venue"),
        (at(250, datum="gcj02"), None),  # converted into the venue's datum: inside
        (at(250, datum="bd09"), None),
        (
            at(250, datum="gcj02", raw=True),
            "outside-venue",
        ),  # WGS-84 numbers labelled GCJ-02: hundreds of m off
        (at(50, accuracy=200), "low-accuracy"),
    ],
)
def test_an_upload_is_refused_outside_the_fence(device: Device, refused: str | None) -> None:
    _, refusal = judge(venue(), device, START + timedelta(minutes=30))
    assert (refusal.kind if refusal else None) == refused


@pytest.mark.parametrize(
    ("now", "refused"),
    [
        (START + timedelta(hours=1), False),
        (datetime(2026, 10, 13, 16, 0, tzinfo=UTC), False),  # 00:00 in Shanghai on the day
        (datetime(2026, 10, 14, 15, 59, tzinfo=UTC), False),  # 23:59 there
        (datetime(2026, 10, 14, 16, 0, tzinfo=UTC), True),  # the next local day (still the 14th in UTC)
        (datetime(2026, 10, 13, 15, 59, tzinfo=UTC), True),  # the day before
    ],
)
def test_an_upload_is_refused_outside_the_meetings_local_day(now: datetime, refused: bool) -> None:
    _, refusal = judge(venue(), at(10), now)
    assert (refusal is not None and refusal.kind == "outside-day") is refused


def test_a_meeting_over_midnight_takes_records_on_both_days() -> None:
    late = venue(
        starts_at=datetime(2026, 10, 14, 15, 0, tzinfo=UTC), ends_at=datetime(2026, 10, 14, 17, 0, tzinfo=UTC)
    )
    assert judge(late, at(10), datetime(2026, 10, 14, 16, 30, tzinfo=UTC))[1] is None


def test_quarters_parse_and_split_into_months() -> None:
    q = Quarter.parse("2026Q4")
    assert (q.start, q.end) == (date(2026, 10, 1), date(2027, 1, 1))
    assert [p.label for p in q.periods("month")] == ["2026-10", "2026-11", "2026-12"]
    assert [p.label for p in q.periods("quarter")] == ["2026Q4"]
    assert Quarter.of(date(2026, 2, 28)) == Quarter(2026, 1)
    for bad in ("2026Q5", "2026-Q4", "26Q1", "0999Q1"):
        with pytest.raises(ValueError):
            Quarter.parse(bad)


def test_only_ended_periods_short_of_meetings_are_overdue() -> None:
    q = Quarter.parse("2026Q4")
    held = [date(2026, 10, 20), date(2026, 12, 2)]
    counts = period_counts(q, "month", 1, held, today=date(2026, 12, 15))
    assert [(c.period.label, c.held, c.ended, c.overdue) for c in counts] == [
        ("2026-10", 1, True, False),
        ("2026-11", 0, True, True),
        ("2026-12", 1, False, False),
    ]
    # A unit created in November owed nothing for October.
    since = period_counts(q, "month", 1, [], today=date(2026, 12, 15), since=date(2026, 11, 3))
    assert [(c.required, c.overdue) for c in since] == [(0, False), (1, True), (1, False)]
    # A quarterly requirement is judged when the quarter ends, not before.
    assert not period_counts(q, "quarter", 1, [], today=date(2026, 12, 31))[0].overdue
    assert period_counts(q, "quarter", 1, [], today=date(2027, 1, 1))[0].overdue
    assert period_counts(q, "quarter", 2, held, today=date(2027, 1, 1))[0].held == 2


@pytest.mark.parametrize(
    ("present", "expected", "excused", "rate"),
    [(8, 10, 0, 0.8), (8, 10, 2, 1.0), (0, 3, 3, None), (0, 0, 0, None), (1, 3, 0, 0.3333)],
)
def test_the_excused_are_out_of_the_denominator(
    present: int, expected: int, excused: int, rate: float | None
) -> None:
    assert attendance_rate(present, expected, excused) == rate
