"""Coordinates in China: WGS-84, GCJ-02 and BD-09, converted both ways, and distances.

- GPS and the W3C Geolocation API report **WGS-84**; AMap (高德) and DingTalk report **GCJ-02**
  (WGS-84 shifted by an obfuscating function, tens to hundreds of metres); Baidu reports **BD-09**
  (GCJ-02 transformed once more). Outside mainland China GCJ-02 is WGS-84 (and BD-09 is still
  GCJ-02 plus Baidu's transform, as Baidu's own maps do).
- The forward transforms are the published formulas (the Krasovsky 1940 ellipsoid, as in
  eviltransform and prcoords); the inverses are iterated on the forward transform until the
  round trip lands within about a millimetre, not the one-step approximations that are off by
  metres.
- ``distance_m`` is the haversine great-circle distance on a sphere of the mean Earth radius: a
  couple of metres from the ellipsoidal geodesic at fence distances, which is fine for a fence.

Pure functions, table-tested in tests/domain/test_geo.py. (lat, lng) order everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

Datum = Literal["wgs84", "gcj02", "bd09"]
DATUMS: tuple[str, ...] = get_args(Datum)

_A = 6378245.0  # Krasovsky 1940 semi-major axis, the GCJ-02 formula's
_EE = 0.00669342162296594323  # its first eccentricity squared
_X_PI = math.pi * 3000.0 / 180.0  # Baidu's constant
EARTH_RADIUS_M = 6371008.8  # mean Earth radius (IUGG)
# An inverse is iterated until the forward image of the guess is this close to the input (degrees:
# about 1 mm), or for at most this many steps (it converges in 2-4 steps in practice).
_TOLERANCE = 1e-8
_MAX_STEPS = 30


def in_china(lat: float, lng: float) -> bool:
    """The rough box where the GCJ-02 offset applies (the one the published implementations use)."""
    return 72.004 <= lng <= 137.8347 and 0.8293 <= lat <= 55.8271


def _offset(lat: float, lng: float) -> tuple[float, float]:
    """The GCJ-02 shift (dlat, dlng) in degrees at a WGS-84 point inside China."""
    x, y = lng - 105.0, lat - 35.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlng = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    common = (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    dlat += common
    dlng += common
    dlat += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    dlng += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    dlat += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    dlng += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    rad = lat / 180.0 * math.pi
    magic = 1.0 - _EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1.0 - _EE)) / (magic * sqrt_magic) * math.pi)
    dlng = (dlng * 180.0) / (_A / sqrt_magic * math.cos(rad) * math.pi)
    return dlat, dlng


def wgs84_to_gcj02(lat: float, lng: float) -> tuple[float, float]:
    if not in_china(lat, lng):
        return lat, lng
    dlat, dlng = _offset(lat, lng)
    return lat + dlat, lng + dlng


def gcj02_to_bd09(lat: float, lng: float) -> tuple[float, float]:
    z = math.hypot(lng, lat) + 0.00002 * math.sin(lat * _X_PI)
    theta = math.atan2(lat, lng) + 0.000003 * math.cos(lng * _X_PI)
    return z * math.sin(theta) + 0.006, z * math.cos(theta) + 0.0065


def _bd09_to_gcj02_approx(lat: float, lng: float) -> tuple[float, float]:
    x, y = lng - 0.0065, lat - 0.006
    z = math.hypot(x, y) - 0.00002 * math.sin(y * _X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _X_PI)
    return z * math.sin(theta), z * math.cos(theta)


def _invert(
    forward: Callable[[float, float], tuple[float, float]], lat: float, lng: float, guess: tuple[float, float]
) -> tuple[float, float]:
    """The point whose ``forward`` image is (lat, lng), by fixed-point iteration from ``guess``:
    each step moves the guess by the error of its image (the transforms are near-translations)."""
    g_lat, g_lng = guess
    for _ in range(_MAX_STEPS):
        f_lat, f_lng = forward(g_lat, g_lng)
        e_lat, e_lng = f_lat - lat, f_lng - lng
        if abs(e_lat) < _TOLERANCE and abs(e_lng) < _TOLERANCE:
            break
        g_lat, g_lng = g_lat - e_lat, g_lng - e_lng
    return g_lat, g_lng


def gcj02_to_wgs84(lat: float, lng: float) -> tuple[float, float]:
    if not in_china(lat, lng):
        return lat, lng
    dlat, dlng = _offset(lat, lng)
    return _invert(wgs84_to_gcj02, lat, lng, (lat - dlat, lng - dlng))


def bd09_to_gcj02(lat: float, lng: float) -> tuple[float, float]:
    return _invert(gcj02_to_bd09, lat, lng, _bd09_to_gcj02_approx(lat, lng))


def to_datum(lat: float, lng: float, from_datum: str, to: str) -> tuple[float, float]:
    """(lat, lng) given in ``from_datum`` expressed in ``to`` (each one of ``DATUMS``)."""
    if from_datum not in DATUMS or to not in DATUMS:
        raise ValueError(f"unknown datum: one of {', '.join(DATUMS)}")
    if from_datum == to:
        return lat, lng
    # Through GCJ-02, which both others are defined from.
    if from_datum == "wgs84":
        lat, lng = wgs84_to_gcj02(lat, lng)
    elif from_datum == "bd09":
        lat, lng = bd09_to_gcj02(lat, lng)
    if to == "wgs84":
        return gcj02_to_wgs84(lat, lng)
    if to == "bd09":
        return gcj02_to_bd09(lat, lng)
    return lat, lng


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Haversine distance in metres between two points (both in the same datum)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def destination(lat: float, lng: float, bearing_deg: float, meters: float) -> tuple[float, float]:
    """The point ``meters`` from (lat, lng) along ``bearing_deg`` (0 north, 90 east), on the same
    sphere as ``distance_m`` (tests and demos place points with it)."""
    d = meters / EARTH_RADIUS_M
    b = math.radians(bearing_deg)
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0
