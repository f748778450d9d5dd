"""domain/checkin.py: the verdict rule, table-tested (the order of the checks, both window ends, the
grey zone, Wi-Fi and the mock flag), and BSSID normalisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from notifier.domain import geo
from notifier.domain.checkin import Attempt, Fence, judge, normalise_bssid

OPENS = datetime(2030, 3, 1, 8, 30, tzinfo=UTC)
CLOSES = OPENS + timedelta(minutes=45)
VENUE = (31.2304, 121.4737)  # Shanghai, in GCJ-02 (the venue as AMap gives it)
FENCE = Fence(VENUE[0], VENUE[1], "gcj02", 300, OPENS, CLOSES, 100, frozenset({"aa:bb:cc:dd:ee:ff"}))
WIFI = "aa:bb:cc:dd:ee:ff"


def attempt(distance: float, accuracy: float, **kw: object) -> Attempt:
    lat, lng = geo.destination(*VENUE, 45.0, distance)
    return Attempt(lat, lng, "gcj02", accuracy, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("distance", "accuracy", "kw", "now", "verdict", "flagged"),
    [
        (100, 10, {}, OPENS, "ok", False),  # the window opens inclusive
        (100, 10, {}, CLOSES, "ok", False),  # and closes inclusive
        (100, 10, {}, OPENS - timedelta(seconds=1), "too_early", False),
        (100, 10, {}, CLOSES + timedelta(seconds=1), "too_late", False),
        (299.99, 10, {}, OPENS, "ok", False),  # just inside the radius
        (349.99, 50, {}, OPENS, "ok", True),  # grey zone: beyond the radius by less than the accuracy
        (351, 50, {}, OPENS, "outside", False),
        (100, 101, {}, OPENS, "low_accuracy", False),
        (5000, 1000, {}, OPENS, "outside", False),  # coarse but certainly elsewhere
        (5000, 1000, {"bssid": WIFI}, OPENS, "ok", False),  # on the venue's Wi-Fi
        (5000, 10, {"bssid": "00:00:00:00:00:01"}, OPENS, "outside", False),
        (10, 5, {"mock": True}, OPENS, "mock_location", False),
        (10, 5, {"mock": True, "bssid": WIFI}, OPENS, "mock_location", False),  # Wi-Fi does not excuse it
        (10, 5, {"bssid": WIFI}, CLOSES + timedelta(seconds=1), "too_late", False),  # nor lateness
    ],
)
def test_verdicts(
    distance: float, accuracy: float, kw: dict[str, object], now: datetime, verdict: str, flagged: bool
) -> None:
    j = judge(FENCE, attempt(distance, accuracy, **kw), now)
    assert (j.verdict, j.flagged, j.accepted) == (verdict, flagged, verdict == "ok")
    assert j.distance_m == pytest.approx(distance, abs=0.01)
    assert j.bssid_matched == (kw.get("bssid") == WIFI)


def test_the_attempt_is_converted_into_the_venue_datum() -> None:
    lat, lng = geo.destination(*VENUE, 0.0, 200.0)  # 200 m north, in GCJ-02
    wlat, wlng = geo.to_datum(lat, lng, "gcj02", "wgs84")
    as_wgs = judge(FENCE, Attempt(wlat, wlng, "wgs84", 10), OPENS)
    assert as_wgs.verdict == "ok" and as_wgs.distance_m == pytest.approx(200.0, abs=0.5)
    # the same WGS-84 numbers taken as GCJ-02: the datum's offset (~ 500 m in Shanghai) lands outside
    assert judge(FENCE, Attempt(wlat, wlng, "gcj02", 10), OPENS).verdict == "outside"


@pytest.mark.parametrize(
    "text",
    ["AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "aabb.ccdd.eeff", "AABBCCDDEEFF", " aa bb cc dd ee ff "],
)
def test_bssids_are_normalised(text: str) -> None:
    assert normalise_bssid(text) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    "text", ["", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "gg:bb:cc:dd:ee:ff", "office"]
)
def test_bad_bssids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="BSSID"):
        normalise_bssid(text)
