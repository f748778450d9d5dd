"""Whether a meeting record may be written from where and when the secretary's device is.

The rule of the study: a record (minutes or a photo) is taken at the venue on the meeting's day.

- Place: the device's position is converted into the venue's datum (domain/geo.py) and refused
  when ``distance - accuracy > radius`` (even the most favourable reading of the fix lies outside
  the fence), or when its accuracy is worse than the meeting's ``max_accuracy_m`` (a fix that
  vague proves nothing).
- Day: the server's clock (never the device's), read in the meeting unit's time zone, must fall
  on a local day from the meeting's start day to its end day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from notifier.domain import geo
from notifier.domain.geo import Datum


@dataclass(frozen=True, slots=True)
class Venue:
    lat: float
    lng: float
    datum: Datum
    radius_m: int
    max_accuracy_m: int | None
    starts_at: datetime
    ends_at: datetime
    timezone: str


@dataclass(frozen=True, slots=True)
class Device:
    lat: float
    lng: float
    datum: Datum
    accuracy_m: float


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: Literal["outside-venue", "low-accuracy", "outside-day"]
    field: str  # the input it is about: lat or accuracy_m (place), or the time (day)
    detail: str


def distance_to(venue: Venue, device: Device) -> float:
    """Metres from the venue to the device's position, converted into the venue's datum."""
    lat, lng = geo.to_datum(device.lat, device.lng, device.datum, venue.datum)
    return geo.distance_m(venue.lat, venue.lng, lat, lng)


def meeting_days(venue: Venue) -> tuple[date, date]:
    tz = ZoneInfo(venue.timezone)
    return venue.starts_at.astimezone(tz).date(), venue.ends_at.astimezone(tz).date()


def judge(venue: Venue, device: Device, now: datetime) -> tuple[float, Refusal | None]:
    """(distance in metres, why the upload is refused -- None: it may be stored)."""
    distance = distance_to(venue, device)
    first, last = meeting_days(venue)
    today = now.astimezone(ZoneInfo(venue.timezone)).date()
    if not first <= today <= last:
        day = first.isoformat() if first == last else f"{first.isoformat()}..{last.isoformat()}"
        return distance, Refusal(
            "outside-day",
            "time",
            f"a record is taken on the meeting's day ({day}, {venue.timezone}); "
            f"the server's date there is {today.isoformat()}",
        )
    if venue.max_accuracy_m is not None and device.accuracy_m > venue.max_accuracy_m:
        return distance, Refusal(
            "low-accuracy",
            "accuracy_m",
            f"the position is accurate to {device.accuracy_m:.0f} m; "
            f"at most {venue.max_accuracy_m} m is accepted",
        )
    if distance - device.accuracy_m > venue.radius_m:
        return distance, Refusal(
            "outside-venue",
            "lat",
            f"the device is {distance:.0f} m from the venue (accuracy {device.accuracy_m:.0f} m), "
            f"outside its {venue.radius_m} m radius",
        )
    return distance, None
