"""Robot one-to-one messages (``/v1.0/robot/oToMessages``), for the ``dingtalk`` channel with
``robot_messages`` on: send to at most 20 user ids a call (the docs give 20 and 100: the
smaller), read who has read a send (``readStatus``, the backstop for ``robot_msg_read`` events),
recall a send. A send's ``processQueryKey`` with each member's userid is their provider ref
(``notifier.channels.dingtalk_events.robot_ref``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from notifier.channels.base import ChannelError, InvalidTarget, PermanentError, TransientError
from notifier.channels.dingtalk_api import THROTTLE_WAIT, USER_ID, DingTalkApi

SEND_PATH = "/v1.0/robot/oToMessages/batchSend"
READ_PATH = "/v1.0/robot/oToMessages/readStatus"
RECALL_PATH = "/v1.0/robot/otoMessages/batchRecall"
MAX_USERS_PER_CALL = 20


def _ids(value: object) -> set[str]:
    return (
        {v for v in value if isinstance(v, str) and USER_ID.fullmatch(v)}
        if isinstance(value, list)
        else set()
    )


@dataclass(frozen=True, slots=True)
class RobotSend:
    """What batchSend answered: the send's key, and who DingTalk would not or not yet reach."""

    process_query_key: str
    invalid: set[str]
    flow_controlled: set[str]

    def refusal(self, user: str) -> ChannelError | None:
        if user in self.invalid:
            return InvalidTarget("DingTalk: invalid staff id (not in the organisation)")
        if user in self.flow_controlled:
            return TransientError("throttled (DingTalk flow control)", THROTTLE_WAIT)
        return None


def robot_message(msg: dict[str, Any]) -> dict[str, str]:
    """A work-notification ``msg`` as a robot message's ``msgKey`` / ``msgParam`` (pure)."""
    if msg["msgtype"] == "action_card":
        card = msg["action_card"]
        param = {
            "title": card["title"],
            "text": card["markdown"],
            "singleTitle": card["single_title"],
            "singleURL": card["single_url"],
        }
        key = "sampleActionCard"
    else:
        param, key = {"title": msg["markdown"]["title"], "text": msg["markdown"]["text"]}, "sampleMarkdown"
    return {"msgKey": key, "msgParam": json.dumps(param, ensure_ascii=False, separators=(",", ":"))}


def parse_read_status(payload: Any) -> dict[str, bool]:
    """``readStatus`` as user id -> read (pure); only well-formed user ids."""
    entries = payload.get("messageReadInfoList") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise TransientError("DingTalk readStatus answered without messageReadInfoList")
    status: dict[str, bool] = {}
    for entry in entries:
        user = entry.get("userId") if isinstance(entry, dict) else None
        if isinstance(user, str) and USER_ID.fullmatch(user):
            status[user] = entry.get("readStatus") == "READ"
    return status


class RobotMessages:
    def __init__(self, api: DingTalkApi, robot_code: str) -> None:
        self._api = api
        self._robot_code = robot_code

    async def send(self, users: list[str], msg: dict[str, Any]) -> RobotSend | ChannelError:
        """One batchSend of a work-notification ``msg`` (as a robot message) to ``users``."""
        body = {"robotCode": self._robot_code, "userIds": users, **robot_message(msg)}
        try:
            payload = await self._api.call("POST", SEND_PATH, body)
        except ChannelError as exc:
            return exc
        key = payload.get("processQueryKey")
        if not isinstance(key, str) or not key:
            return PermanentError("DingTalk accepted the robot message without a processQueryKey")
        return RobotSend(
            key, _ids(payload.get("invalidStaffIdList")), _ids(payload.get("flowControlledStaffIdList"))
        )

    async def read_status(self, process_query_key: str) -> dict[str, bool]:
        query = urlencode({"robotCode": self._robot_code, "processQueryKey": process_query_key})
        return parse_read_status(await self._api.call("GET", f"{READ_PATH}?{query}"))

    async def recall(self, process_query_key: str) -> None:
        await self._api.call(
            "POST", RECALL_PATH, {"robotCode": self._robot_code, "processQueryKeys": [process_query_key]}
        )
