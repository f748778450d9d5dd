"""DingTalk DINGs proper (robot DING): ``POST /v1.0/robot/ding/send`` through the app's robot.

A DING is the platform's strongest nudge: in the app (remindType 1), by SMS (2) or by a phone
call (3). It is an escalation step's reminder -- ``remind: ["dingtalk_ding"], mode: "phone"`` --
and the mode comes with each item (``Outgoing.mode``; app when none). One call carries at most
200 receivers in the app, 20 by SMS or phone, one notice and one mode; its ``openDingId`` is
each item's ``provider_ref``, and a recalled notice's DINGs are withdrawn with
``/v1.0/robot/ding/recall`` (``notifier.workers.dingtalk``). DingTalk reports no read for a
DING: the member's read comes from the work notification or the read link.

The target is the member's DingTalk ``userid``, the same as for ``dingtalk`` work notifications
(the contact lookup uses their ``dingtalk`` contact: ``contact_channel`` in schemas/0017).

Errors: the new-style mapping of ``notifier.channels.dingtalk_api``; receivers DingTalk lists
in ``failedList`` fail with its reason; a ``failedList`` of another shape fails every receiver of
the call for good, saying so (the DING keeps its id, so a recall still withdraws it). A dropped
connection is ambiguous and not resent (a second phone call is not harmless): the delivery is
recorded as ``unknown``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from notifier.channels.base import (
    Capabilities,
    ChannelError,
    InvalidTarget,
    NoticeContent,
    Outcome,
    Outgoing,
    PermanentError,
    Result,
    provider_ref,
    provider_text,
)
from notifier.channels.dingtalk_api import USER_ID, DingTalkApi
from notifier.clock import Clock
from notifier.settings import Settings

SEND_PATH = "/v1.0/robot/ding/send"
RECALL_PATH = "/v1.0/robot/ding/recall"
REMIND_TYPES = {"app": 1, "sms": 2, "phone": 3}
MAX_RECEIVERS = {"app": 200, "sms": 20, "phone": 20}  # per call
MAX_CONTENT_CHARS = 500


def build_content(notice: NoticeContent) -> str:
    """The DING's text (pure): the title, then as much of the body as fits."""
    text = f"【DING】{notice.title}\n{notice.body}"
    return text if len(text) <= MAX_CONTENT_CHARS else text[: MAX_CONTENT_CHARS - 1] + "…"


def build_send(robot_code: str, mode: str, users: list[str], notice: NoticeContent) -> dict[str, Any]:
    return {
        "robotCode": robot_code,
        "remindType": REMIND_TYPES[mode],
        "receiverUserIdList": users,
        "content": build_content(notice),
    }


@dataclass
class Call:
    notice: NoticeContent
    mode: str
    users: dict[str, list[Outgoing]] = field(default_factory=dict)


def plan_calls(batch: list[Outgoing]) -> list[Call]:
    """Group items into calls: one notice and one mode each, within the mode's receiver limit."""
    calls: list[Call] = []
    open_call: dict[tuple[NoticeContent, str], Call] = {}
    for item in batch:
        mode = item.mode if item.mode in REMIND_TYPES else "app"
        key = (item.notice, mode)
        call = open_call.get(key)
        if call is None or (item.target not in call.users and len(call.users) >= MAX_RECEIVERS[mode]):
            call = open_call[key] = Call(item.notice, mode)
            calls.append(call)
        call.users.setdefault(item.target, []).append(item)
    return calls


def parse_failed(value: object) -> dict[str, str]:
    """``failedList`` as user id -> reason (pure). Its documented shape is an object of reason ->
    list of user ids (``{"userNotFound": ["u1", "u2"]}``; absent, null or ``{}``: none failed).
    Any other shape raises ``PermanentError``: guessing would report a member as DINGed who was not."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PermanentError(
            f"DingTalk answered failedList as {type(value).__name__}, not an object of reason -> user ids: "
            "who was not DINGed is unknown"
        )
    failed: dict[str, str] = {}
    for reason, users in value.items():
        if not isinstance(users, list) or not all(isinstance(u, str) and USER_ID.fullmatch(u) for u in users):
            raise PermanentError(
                "DingTalk answered a failedList entry that is not a list of user ids: "
                "who was not DINGed is unknown"
            )
        for user in users:
            failed[user] = provider_text(f"DingTalk: {reason}") or "DingTalk did not DING this member"
    return failed


class DingTalkDingChannel:
    id = "dingtalk_ding"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        config = settings.dingtalk
        if not configured(settings):
            raise ValueError("dingtalk.app_key, dingtalk.app_secret and dingtalk.robot_code must be set")
        self._robot_code = config.robot_code
        self._api = DingTalkApi(config, clock)
        self.capabilities = Capabilities(
            max_batch=500,
            needs_contact=True,
            supports_recall=True,
            max_attempts=settings.push_max_attempts,
            resend_when_ambiguous=False,  # a second phone call is not harmless
            rate_per_second=config.ding_per_minute / 60.0,  # receivers per minute per robot
            circuit_breaker=True,
            paid_modes=frozenset(
                {"sms", "phone"}
            ),  # DingTalk bills a DING by SMS or phone; in the app it is free
        )

    def validate_target(self, target: Any) -> Any:
        if not isinstance(target, str) or not USER_ID.fullmatch(target.strip()):
            raise InvalidTarget("target must be the member's DingTalk userid: 1..64 letters, digits or _-.@$")
        return target.strip()

    async def _send_call(self, call: Call) -> tuple[str, dict[str, str] | PermanentError] | ChannelError:
        body = build_send(self._robot_code, call.mode, list(call.users), call.notice)
        try:
            payload = await self._api.call("POST", SEND_PATH, body)
        except ChannelError as exc:
            return exc
        ref = provider_ref(payload.get("openDingId") if isinstance(payload.get("openDingId"), str) else None)
        if ref is None:
            return PermanentError("DingTalk accepted the DING without an openDingId")
        try:
            return ref, parse_failed(payload.get("failedList"))
        except PermanentError as exc:
            return ref, exc  # sent, but to whom is unknown: every receiver fails, the DING stays recallable

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        results: list[Result] = []
        valid: list[Outgoing] = []
        for item in batch:
            try:
                target = self.validate_target(item.target)
            except InvalidTarget as exc:
                results.append(Result.from_error(item.delivery_id, exc))
                continue
            valid.append(item if target == item.target else dataclasses.replace(item, target=target))
        calls = plan_calls(valid)
        answers = await asyncio.gather(*(self._send_call(c) for c in calls))
        for call, answer in zip(calls, answers, strict=True):
            for user, items in call.users.items():
                for item in items:
                    if isinstance(answer, ChannelError):
                        results.append(Result.from_error(item.delivery_id, answer))
                        continue
                    ref, failed = answer
                    if isinstance(failed, PermanentError):
                        results.append(
                            Result(item.delivery_id, Outcome.FAILED, str(failed), provider_ref=ref)
                        )
                        continue
                    outcome = Outcome.FAILED if user in failed else Outcome.SENT
                    results.append(Result(item.delivery_id, outcome, failed.get(user), provider_ref=ref))
        return results

    async def recall(self, open_ding_id: str) -> None:
        """Withdraw a DING from its receivers; raises ``ChannelError``."""
        await self._api.call("POST", RECALL_PATH, {"robotCode": self._robot_code, "openDingId": open_ding_id})

    async def close(self) -> None:
        await self._api.close()


def configured(settings: Settings) -> bool:
    config = settings.dingtalk
    return bool(config.app_key) and config.app_secret is not None and bool(config.robot_code)
