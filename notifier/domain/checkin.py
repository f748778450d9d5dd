"""The check-in rule: is this member at the meeting's venue, in its check-in window?

Pure, table-tested in tests/domain/test_checkin.py. The caller reads the time from the engine
clock (the server's; a phone's clock is never judged) and passes it in.

The verdict, checked in this order (the first that applies):

1. ``mock_location`` -- the phone says the position came from a mock provider (Android's flag; a
   virtual-location app). Refused whatever else is true, a listed Wi-Fi included.
2. ``too_early`` / ``too_late`` -- the server's clock is before ``checkin_opens_at`` or after
   ``checkin_closes_at`` (both ends inclusive).
3. ``ok`` by Wi-Fi -- the BSSID the phone is connected to is one of the venue's: at the venue,
   whatever the coordinates say (indoors a fix is often hundreds of metres off).
4. ``outside`` -- ``distance - accuracy > radius``: even the most favourable reading of the fix's
   error circle lies outside the fence. (This comes before the accuracy check: a fix too coarse
   to place the member inside can still prove they are elsewhere.)
5. ``low_accuracy`` -- the reported accuracy is worse (larger) than the meeting's
   ``max_accuracy_m``: the phone cannot tell; retry with a better fix (outdoors, GPS on).
6. ``ok`` -- ``distance <= radius``.
7. The grey zone -- ``distance > radius`` but ``distance - accuracy <= radius`` with an accuracy
   within the setting: the member may well be inside. **Accepted** (``ok``) and **flagged** for
   the secretary's review, as DingTalk records an off-site check-in as such rather than refusing
   it. ``max_accuracy_m`` bounds the zone: it reaches at most that far beyond the radius.

Distances are measured in the venue's datum after converting the phone's coordinates into it
(domain/geo.py): mixing WGS-84 and GCJ-02 would move a point by hundreds of metres.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from notifier.domain import geo

Verdict = Literal["ok", "outside", "too_early", "too_late", "low_accuracy", "mock_location"]

_HEX12 = re.compile(r"^[0-9a-f]{12}$")
# What normalise_bssid takes, as a pattern (JSON Schema's too): 12 hex digits, any separators.
BSSID_PATTERN = r"^[ :.-]*([0-9A-Fa-f][ :.-]*){12}$"


def normalise_bssid(text: str) -> str:
    """A Wi-Fi BSSID (a MAC address) as ``aa:bb:cc:dd:ee:ff``: case and the separators (``:``,
    ``-``, ``.``, spaces) as phones and routers write it do not matter."""
    digits = re.sub(r"[ :.\-]", "", text).lower()
    if not _HEX12.fullmatch(digits):
        raise ValueError("must be a BSSID (MAC address) such as aa:bb:cc:dd:ee:ff")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


@dataclass(frozen=True, slots=True)
class Fence:
    """What a meeting says about where and when members check in."""

    lat: float
    lng: float
    datum: str
    radius_m: int
    opens_at: datetime
    closes_at: datetime
    max_accuracy_m: int
    bssids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Attempt:
    lat: float
    lng: float
    datum: str
    accuracy_m: float
    mock: bool = False
    bssid: str | None = None  # normalised


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    distance_m: float  # from the venue, in the venue's datum
    bssid_matched: bool
    flagged: bool  # accepted in the grey zone: for review

    @property
    def accepted(self) -> bool:
        return self.verdict == "ok"


def judge(fence: Fence, attempt: Attempt, now: datetime) -> Judgement:
    lat, lng = geo.to_datum(attempt.lat, attempt.lng, attempt.datum, fence.datum)
    distance = geo.distance_m(lat, lng, fence.lat, fence.lng)
    matched = attempt.bssid is not None and attempt.bssid in fence.bssids

    def verdict(v: Verdict, *, flagged: bool = False) -> Judgement:
        return Judgement(v, distance, matched, flagged)

    if attempt.mock:
        return verdict("mock_location")
    if now < fence.opens_at:
        return verdict("too_early")
    if now > fence.closes_at:
        return verdict("too_late")
    if matched:
        return verdict("ok")
    if distance - attempt.accuracy_m > fence.radius_m:
        return verdict("outside")
    if attempt.accuracy_m > fence.max_accuracy_m:
        return verdict("low_accuracy")
    return verdict("ok", flagged=distance > fence.radius_m)
