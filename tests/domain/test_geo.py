"""domain/geo.py against published coordinate pairs, and round trips that must land within 0.5 m.

Vectors: WGS-84 -> GCJ-02 for Shanghai, Shenzhen and Beijing from googollee/eviltransform's test
suite (MIT), and the Tiananmen point (116.404, 39.915) of wandergis/coordtransform's README for
WGS-84 -> GCJ-02 and GCJ-02 -> BD-09 (Baidu's published constants). coordtransform's BD-09 ->
GCJ-02 value is the one-step approximation; the iterated inverse here lies within 0.1 m of it and
its forward image lands back on the input. (eviltransform's own BD-09 pairs use pi where Baidu's
formula uses pi*3000/180, so they are not Baidu's and are not used.)
"""

from __future__ import annotations

import itertools
import random

import pytest

from notifier.domain import geo

# wgs lat, wgs lng, gcj lat, gcj lng
WGS_GCJ = [
    (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215),  # Shanghai
    (22.543847, 113.912316, 22.540796131694766, 113.9171764808363),  # Shenzhen
    (39.911954, 116.377817, 39.91334545536069, 116.38404722455657),  # Beijing
    (39.915, 116.404, 39.91640428150164, 116.41024449916938),  # Tiananmen (coordtransform)
]
# gcj lat, gcj lng, bd lat, bd lng
GCJ_BD = [(39.915, 116.404, 39.92133699351021, 116.41036949371029)]


@pytest.mark.parametrize(("wlat", "wlng", "glat", "glng"), WGS_GCJ)
def test_wgs84_to_gcj02_matches_published_pairs(wlat: float, wlng: float, glat: float, glng: float) -> None:
    lat, lng = geo.to_datum(wlat, wlng, "wgs84", "gcj02")
    assert lat == pytest.approx(glat, abs=1e-9)
    assert lng == pytest.approx(glng, abs=1e-9)
    # the precise inverse lands on the WGS-84 point (eviltransform's exact inverse: < 0.5 m)
    back = geo.to_datum(glat, glng, "gcj02", "wgs84")
    assert geo.distance_m(*back, wlat, wlng) < 0.01


@pytest.mark.parametrize(("glat", "glng", "blat", "blng"), GCJ_BD)
def test_gcj02_to_bd09_matches_published_pairs(glat: float, glng: float, blat: float, blng: float) -> None:
    lat, lng = geo.to_datum(glat, glng, "gcj02", "bd09")
    assert lat == pytest.approx(blat, abs=1e-9)
    assert lng == pytest.approx(blng, abs=1e-9)
    back = geo.to_datum(blat, blng, "bd09", "gcj02")
    assert geo.distance_m(*back, glat, glng) < 0.01


def test_bd09_inverse_is_within_decimetres_of_the_published_approximation() -> None:
    lat, lng = geo.to_datum(39.915, 116.404, "bd09", "gcj02")
    assert geo.distance_m(lat, lng, 39.90865673957631, 116.39762729119315) < 0.1
    assert geo.distance_m(*geo.to_datum(lat, lng, "gcj02", "bd09"), 39.915, 116.404) < 0.01


def test_the_datum_offset_is_hundreds_of_metres_in_china() -> None:
    for wlat, wlng, glat, glng in WGS_GCJ:
        assert 300 < geo.distance_m(wlat, wlng, glat, glng) < 700
    # BD-09 is a further ~ 1 km from GCJ-02 in Beijing
    assert 700 < geo.distance_m(*GCJ_BD[0]) < 1500


def test_round_trips_between_every_pair_of_datums_stay_under_half_a_metre() -> None:
    rnd = random.Random(20261201)
    points = [(rnd.uniform(18.0, 53.0), rnd.uniform(74.0, 134.0)) for _ in range(300)]
    points += [(39.9042, 116.4074), (31.2304, 121.4737), (22.3193, 114.1694), (53.5, 123.0)]
    worst = 0.0
    for (lat, lng), (a, b) in itertools.product(points, itertools.permutations(geo.DATUMS, 2)):
        there = geo.to_datum(lat, lng, a, b)
        back = geo.to_datum(*there, b, a)
        worst = max(worst, geo.distance_m(lat, lng, *back))
    assert worst < 0.5


@pytest.mark.parametrize(
    ("lat", "lng"), [(48.8566, 2.3522), (40.7128, -74.006), (-33.8688, 151.2093), (1.3521, 103.8198 - 40)]
)
def test_outside_china_gcj02_is_wgs84(lat: float, lng: float) -> None:
    assert geo.to_datum(lat, lng, "wgs84", "gcj02") == (lat, lng)
    assert geo.to_datum(lat, lng, "gcj02", "wgs84") == (lat, lng)


def test_same_datum_is_unchanged_and_unknown_datums_are_refused() -> None:
    assert geo.to_datum(39.9, 116.4, "bd09", "bd09") == (39.9, 116.4)
    with pytest.raises(ValueError, match="unknown datum"):
        geo.to_datum(39.9, 116.4, "wgs72", "wgs84")


@pytest.mark.parametrize(
    ("a", "b", "meters"),
    [
        ((0.0, 0.0), (0.0, 1.0), 111_195.08),  # one degree of the equator on the mean sphere
        ((39.9042, 116.4074), (31.2304, 121.4737), 1_067_300.0),  # Beijing - Shanghai
        ((39.9, 116.4), (39.9, 116.4), 0.0),
    ],
)
def test_haversine_distance(a: tuple[float, float], b: tuple[float, float], meters: float) -> None:
    assert geo.distance_m(*a, *b) == pytest.approx(meters, rel=2e-3, abs=0.01)


@pytest.mark.parametrize("bearing", [0.0, 45.0, 90.0, 180.0, 270.0])
def test_destination_is_the_distance_away(bearing: float) -> None:
    there = geo.destination(39.9, 116.4, bearing, 250.0)
    assert geo.distance_m(39.9, 116.4, *there) == pytest.approx(250.0, abs=1e-6)
