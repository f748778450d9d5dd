"""The API's own models, re-exported for client users (one import place; they are not copies)."""

from notifier.api.contacts import ContactIn, ContactList, ContactOut
from notifier.api.members import MemberBatchItem, MemberBatchOut, MemberIn, MemberOut
from notifier.api.notices import Audience, Counts, NoticeIn, NoticeOut
from notifier.api.receipts import ReceiptOut
from notifier.api.rollcall import RollCallEntry, RollCallGroup, RollCallPage
from notifier.api.stream import StreamEvent
from notifier.api.unit_counts import NoticeListItem, NoticeListPage, Rollup, SliceCounts, UnitRow
from notifier.api.units import UnitIn, UnitList, UnitOut

__all__ = [
    "Audience",
    "ContactIn",
    "ContactList",
    "ContactOut",
    "Counts",
    "MemberBatchItem",
    "MemberBatchOut",
    "MemberIn",
    "MemberOut",
    "NoticeIn",
    "NoticeListItem",
    "NoticeListPage",
    "NoticeOut",
    "ReceiptOut",
    "RollCallEntry",
    "RollCallGroup",
    "RollCallPage",
    "Rollup",
    "SliceCounts",
    "StreamEvent",
    "UnitIn",
    "UnitList",
    "UnitOut",
    "UnitRow",
]
