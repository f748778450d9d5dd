"""An organisation to import (pure): units, people and where they sit, from DingTalk's contacts
API or from a plain CSV table; applied by ``notifier.db.imports``.

The snapshot is the whole truth about the units it names (its *scope*): a person in a scoped unit
who is not in the snapshot any more is detached from it (the import never deletes a member: their
history stays); a person listed elsewhere is moved. Units and memberships outside the scope are
not touched.

* DingTalk: department ``d`` is unit ``dt-{d}``; the root department (1) is the unit named by
  ``root_unit``. A person is the member who already holds their DingTalk userid as a ``dingtalk``
  contact, else a new member whose id is the userid.
* CSV (header ``unit_path,member_id,name,phone,dingtalk_userid``): ``unit_path`` is the unit ids
  from the top, ``c/b1/g3``; one row per (member, unit); phone and userid may be empty.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

from notifier.channels.dingtalk_api import USER_ID
from notifier.channels.phone import E164

ID = re.compile(r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff/]{1,128}")
CSV_COLUMNS = ("unit_path", "member_id", "name", "phone", "dingtalk_userid")
MAX_NAME = 200
MAX_ROWS = 500_000


class ImportError_(ValueError):  # noqa: N801 - not the builtin
    """The source cannot be imported; ``where`` names the row or field."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


@dataclass
class Person:
    member_id: str
    name: str
    phone: str | None
    userid: str | None
    units: list[str] = field(default_factory=list)


@dataclass
class OrgSnapshot:
    units: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # id -> (name, parent)
    people: dict[str, Person] = field(default_factory=dict)  # member id -> person
    root: str | None = None  # a unit created if missing, never renamed or moved
    source: str = "csv"


def phone_e164(mobile: object) -> str | None:
    """A DingTalk / HR mobile as E.164 (mainland numbers get +86); None when unusable."""
    if not isinstance(mobile, str) or not mobile.strip():
        return None
    text = re.sub(r"[\s\-()]", "", mobile.strip())
    if text.startswith("+86-"):
        text = "+86" + text[4:]
    if re.fullmatch(r"1[3-9]\d{9}", text):
        text = "+86" + text
    return text if E164.fullmatch(text) else None


def _name(value: object, fallback: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    return (text or fallback)[:MAX_NAME]


def from_dingtalk(
    departments: list[dict[str, Any]],
    users: list[dict[str, Any]],
    known: dict[str, str],
    root_unit: str,
) -> OrgSnapshot:
    """The snapshot of DingTalk's departments and users. ``known`` maps a userid to the member
    who holds it already."""
    if not ID.fullmatch(root_unit):
        raise ImportError_("root_unit", "not a valid unit id")
    snap = OrgSnapshot(root=root_unit, source="dingtalk")
    snap.units[root_unit] = ("DingTalk", None)

    def unit_of(dept: object) -> str | None:
        if isinstance(dept, bool) or not isinstance(dept, int):
            return None
        return root_unit if dept == 1 else f"dt-{dept}"

    for dept in departments:
        unit, parent = unit_of(dept.get("dept_id")), unit_of(dept.get("parent_id"))
        if unit is None or unit == root_unit:
            continue
        snap.units[unit] = (_name(dept.get("name"), unit), parent or root_unit)
    for user in users:
        userid = user.get("userid")
        if not isinstance(userid, str) or not USER_ID.fullmatch(userid):
            continue
        member_id = known.get(userid, userid)
        name, phone = _name(user.get("name"), userid), phone_e164(user.get("mobile"))
        person = snap.people.setdefault(member_id, Person(member_id, name, phone, userid))
        for dept in user.get("dept_id_list") or []:
            unit = unit_of(dept)
            if unit is not None and unit in snap.units and unit not in person.units:
                person.units.append(unit)
    return snap


def from_csv(text: str) -> OrgSnapshot:
    """The snapshot of a CSV table; raises ``ImportError_`` naming the first bad row."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if tuple(c.strip() for c in reader.fieldnames or ()) != CSV_COLUMNS:
        raise ImportError_("header", f"must be {','.join(CSV_COLUMNS)}")
    snap = OrgSnapshot(source="csv")
    for n, row in enumerate(reader, start=2):
        if n > MAX_ROWS:
            raise ImportError_(f"row {n}", f"at most {MAX_ROWS} rows")
        where = f"row {n}"
        path = [p.strip() for p in (row.get("unit_path") or "").split("/") if p.strip()]
        if not path or not all(ID.fullmatch(p) for p in path):
            raise ImportError_(f"{where} unit_path", "unit ids separated by '/', e.g. c/b1/g3")
        for depth, unit in enumerate(path):
            parent = path[depth - 1] if depth else None
            known = snap.units.get(unit)
            if known is not None and known[1] != parent:
                raise ImportError_(f"{where} unit_path", f"unit {unit} sits under two parents")
            snap.units[unit] = (unit, parent)
        member_id = (row.get("member_id") or "").strip()
        if not ID.fullmatch(member_id):
            raise ImportError_(f"{where} member_id", "a member id: 1..128 characters, no spaces or '/'")
        raw_phone = (row.get("phone") or "").strip()
        phone = phone_e164(raw_phone) if raw_phone else None
        if raw_phone and phone is None:
            raise ImportError_(f"{where} phone", "an E.164 number such as +8613800138000")
        userid = (row.get("dingtalk_userid") or "").strip() or None
        if userid is not None and not USER_ID.fullmatch(userid):
            raise ImportError_(f"{where} dingtalk_userid", "a DingTalk userid: letters, digits or _-.@$")
        person = snap.people.get(member_id)
        if person is None:
            name = _name(row.get("name"), member_id)
            person = snap.people[member_id] = Person(member_id, name, phone, userid)
        elif (person.phone, person.userid) != (phone, userid) and (phone or userid):
            raise ImportError_(where, f"member {member_id} is listed with two different phones or userids")
        if path[-1] not in person.units:
            person.units.append(path[-1])
    return snap
