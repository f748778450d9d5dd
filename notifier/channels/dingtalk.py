"""DingTalk work notifications (工作通知) through an internal app (``oapi``).

One ``asyncsend_v2`` call is one *task* to at most 100 user ids: DingTalk can only report who
read a task of that size, so the task id is each item's ``provider_ref`` and the read import
(``notifier.workers.dingtalk``) polls ``getsendresult`` with it.

The access token comes from ``gettoken`` (app key + secret), is cached, refreshed a few minutes
before it expires, and refetched once when a call says it is invalid or expired.

The message is an ``action_card`` whose button is the member's signed read link when the task
has one member. With the read poll on (the default) tasks carry up to 100 members and one
message cannot carry 100 personal links, so a task of several is a ``markdown`` message and the
read comes back from DingTalk itself; with the poll off every member gets a task of their own,
with their link.

With ``robot_messages`` on, the same channel sends robot one-to-one messages instead
(``notifier.channels.dingtalk_robotmsg``: new-style token, at most 20 user ids a call): each
member's provider ref is ``{processQueryKey}/{userId}``, reads arrive as ``robot_msg_read`` events
at the callback route (``notifier.channels.dingtalk_events``), and the read poll asks
``oToMessages/readStatus`` as the backstop. Invalid staff ids fail (contact disabled);
flow-controlled ones are retried after THROTTLE_WAIT.

Error mapping (DingTalk answers HTTP 200 with ``{errcode, errmsg}``):

    143103 app / 143104 corp per-minute limit, 90002 API limit, -1 busy
                                        -> TransientError, retry after THROTTLE_WAIT
    143105 per-user daily cap, 143106 same content already sent today
                                        -> PermanentError with the reason (never 'sent')
    40014 / 42001 / 40001 token invalid or expired -> refetch once, then PermanentError
    33012 / 40003 invalid user id in a one-member task -> InvalidTarget
    other errcodes, 4xx                 -> PermanentError
    5xx, 403 / 429 (egress ban), unreadable answer -> TransientError
    connection dropped after sending    -> AmbiguousError, resent: no member gets it twice,
                                           as DingTalk refuses the same content to the same user
                                           the same day (if the first call did arrive, the
                                           resend is then recorded as failed with 143106)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from notifier.channels.base import (
    CallbackReply,
    Capabilities,
    ChannelError,
    InvalidTarget,
    NoticeContent,
    Outcome,
    Outgoing,
    PermanentError,
    Result,
    TransientError,
    provider_text,
)
from notifier.channels.dingtalk_api import USER_ID, DingTalkApi
from notifier.channels.dingtalk_events import DingTalkEvents, robot_ref
from notifier.channels.dingtalk_robotmsg import MAX_USERS_PER_CALL, RobotMessages, RobotSend
from notifier.channels.http import transport_error
from notifier.clock import Clock, SystemClock
from notifier.settings import Settings

MAX_USERS_PER_TASK = 100  # the largest task whose send result (reads) DingTalk reports
MAX_MSG_BYTES = 2048
THROTTLE_WAIT = 60.0  # the per-minute limits reset within a minute
TOKEN_REFRESH_MARGIN = 300.0  # refresh a token this long before DingTalk says it expires
PARALLEL_CALLS = 4
REQUEST_TIMEOUT = 10.0
SEND_PATH = "/topapi/message/corpconversation/asyncsend_v2"
RESULT_PATH = "/topapi/message/corpconversation/getsendresult"
RECALL_PATH = "/topapi/message/corpconversation/recall"

THROTTLED = {
    143103: "app per-minute limit",
    143104: "corp per-minute limit",
    90002: "API call limit",
    -1: "busy",
}
REFUSED = {
    143105: "the member's daily cap of work notifications from this app is reached",
    143106: "the same content was already sent to the member today",
}
TOKEN_ERRORS = {40001, 40014, 42001}
INVALID_USER = {33012, 40003}


class TokenRejected(PermanentError):
    """DingTalk says our token is invalid or expired."""


def dingtalk_error(errcode: int, errmsg: str, status: int = 200) -> ChannelError:
    """Map one failed call to the channel error tree (pure)."""
    label = provider_text(f"DingTalk {errcode}: {errmsg[:200]}") or ""
    if errcode in THROTTLED:
        return TransientError(f"throttled ({THROTTLED[errcode]}): {label}", THROTTLE_WAIT)
    if errcode in REFUSED:
        return PermanentError(f"not sent: {REFUSED[errcode]} ({label})")
    if errcode in TOKEN_ERRORS:
        return TokenRejected(label)
    if errcode in INVALID_USER:
        return InvalidTarget(label)
    if status >= 500 or status in (403, 429):
        return TransientError(label)
    return PermanentError(label)


def _fit(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[: max(limit - 3, 0)].decode(errors="ignore") + "…"


def _size(msg: dict[str, Any]) -> int:
    return len(json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode())


def build_message(notice: NoticeContent, read_link: str | None) -> dict[str, Any]:
    """The ``msg`` object (pure), within DingTalk's 2,048 bytes: an action card whose button is
    the read link, or markdown when there is no link to carry."""
    title = _fit(("【DING】" if notice.urgent else "") + notice.title, 120)
    text = f"### {notice.title}\n\n{notice.body}"
    if read_link:
        card = {"title": title, "markdown": "", "single_title": "查看并确认", "single_url": read_link}
        msg: dict[str, Any] = {"msgtype": "action_card", "action_card": card}
        key, inner = "markdown", card
    else:
        inner = {"title": title, "text": ""}
        msg = {"msgtype": "markdown", "markdown": inner}
        key = "text"
    room = MAX_MSG_BYTES - _size(msg)
    inner[key] = _fit(text, room)
    while _size(msg) > MAX_MSG_BYTES and room > 0:  # JSON escapes (quotes, newlines) took the rest
        room -= max(room // 10, 1)
        inner[key] = _fit(text, room)
    return msg


def build_send(agent_id: int, user_ids: list[str], msg: dict[str, Any]) -> bytes:
    body = {"agent_id": agent_id, "userid_list": ",".join(user_ids), "msg": msg}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Task:
    notice: NoticeContent
    read_link: str | None
    users: dict[str, list[Outgoing]] = field(default_factory=dict)


def plan_tasks(batch: list[Outgoing], personal_links: bool, size: int = MAX_USERS_PER_TASK) -> list[Task]:
    """Group items into tasks: one notice (and, with personal links, one member) each, at most
    ``size`` (100) distinct user ids each."""
    tasks: list[Task] = []
    open_task: dict[tuple[NoticeContent, str | None], Task] = {}
    for item in batch:
        key = (item.notice, item.read_link if personal_links else None)
        task = open_task.get(key)
        if task is None or (item.target not in task.users and len(task.users) >= size):
            task = open_task[key] = Task(item.notice, key[1])
            tasks.append(task)
        task.users.setdefault(item.target, []).append(item)
    return tasks


@dataclass(frozen=True, slots=True)
class SendResult:
    """What ``getsendresult`` says about one task: who read it, who has not yet, and who will
    never get it (user id -> the platform's reason)."""

    read: list[str]
    unread: list[str]
    failed: dict[str, str]
    invalid: list[str] = field(default_factory=list)  # among ``failed``: not in the organisation


def _ids(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and USER_ID.fullmatch(v)]


def parse_send_result(payload: Any) -> SendResult:
    """``send_result`` made safe (pure): only well-formed user ids, reasons cleaned."""
    result = payload.get("send_result") if isinstance(payload, dict) else None
    if not isinstance(result, dict):
        raise TransientError("DingTalk getsendresult answered without send_result")
    failed: dict[str, str] = {}
    invalid = _ids(result.get("invalid_user_id_list"))
    for user in invalid:
        failed[user] = "DingTalk: invalid user id (not in the organisation, or not visible to the app)"
    codes: dict[str, str] = {}
    for entry in result.get("forbidden_list") or []:
        if isinstance(entry, dict) and isinstance(entry.get("userid"), str):
            codes[entry["userid"]] = str(entry.get("code"))[:16]
    for user in _ids(result.get("forbidden_user_id_list")):
        code = codes.get(user, "")
        reason = REFUSED.get(int(code)) if code.isdigit() else None
        failed[user] = (
            f"DingTalk {code}: {reason}" if reason else f"DingTalk: forbidden ({code or 'no code'})"
        )
    for user in _ids(result.get("failed_user_id_list")):
        failed.setdefault(user, "DingTalk: delivery failed")
    read = [u for u in _ids(result.get("read_user_id_list")) if u not in failed]
    unread = [u for u in _ids(result.get("unread_user_id_list")) if u not in failed]
    return SendResult(read, unread, {u: provider_text(r) or "" for u, r in failed.items()}, invalid)


class DingTalkChannel:
    id = "dingtalk"

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        config = settings.dingtalk
        if not configured(settings) or config.app_secret is None or config.agent_id is None:
            raise ValueError("dingtalk.app_key, dingtalk.app_secret and dingtalk.agent_id must be set")
        self._app_key = config.app_key
        self._app_secret = config.app_secret.get_secret_value()
        self._agent_id = config.agent_id
        self._base_url = config.oapi_url.rstrip("/")
        self.read_poll = config.read_poll
        self.robot_messages = config.robot_messages
        if self.robot_messages and not config.robot_code:
            raise ValueError("dingtalk.robot_messages needs dingtalk.robot_code")
        self._clock = clock or SystemClock()
        self._api = DingTalkApi(config, self._clock)
        self._robot = RobotMessages(self._api, config.robot_code)
        self._events = DingTalkEvents(config, self._clock)
        self.capabilities = Capabilities(
            max_batch=5 * MAX_USERS_PER_TASK,
            needs_contact=True,
            supports_read_confirmation=config.read_poll or self.robot_messages,
            supports_recall=True,
            max_attempts=settings.push_max_attempts,
            resend_when_ambiguous=True,
            circuit_breaker=True,  # one app behind every call
            read_link=True,
        )
        self._session: aiohttp.ClientSession | None = None
        self._limit: asyncio.Semaphore | None = None
        self._token: tuple[str, float] | None = None  # token, refresh after (clock time)
        self._token_lock: asyncio.Lock | None = None

    def validate_target(self, target: Any) -> Any:
        if not isinstance(target, str) or not USER_ID.fullmatch(target.strip()):
            raise InvalidTarget("target must be the member's DingTalk userid: 1..64 letters, digits or _-.@$")
        return target.strip()

    def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore, asyncio.Lock]:
        if self._session is None or self._limit is None or self._token_lock is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=PARALLEL_CALLS),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            )
            self._limit = asyncio.Semaphore(PARALLEL_CALLS)
            self._token_lock = asyncio.Lock()
        return self._session, self._limit, self._token_lock

    async def _read(self, response: aiohttp.ClientResponse) -> tuple[int, str, Any]:
        raw = await response.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise TransientError(f"DingTalk HTTP {response.status}: not a JSON answer")
        code = payload.get("errcode", -1)
        return (code if isinstance(code, int) else -1), str(payload.get("errmsg") or ""), payload

    async def _access_token(self, stale: str | None = None) -> str:
        session, _, lock = self._ensure_session()
        async with lock:
            now = self._clock.time()
            if self._token is not None and self._token[0] != stale and self._token[1] > now:
                return self._token[0]
            params = {"appkey": self._app_key, "appsecret": self._app_secret}
            try:
                async with session.get(f"{self._base_url}/gettoken", params=params) as resp:
                    status = resp.status
                    code, msg, payload = await self._read(resp)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TransientError(str(transport_error(exc))) from None
            token, expires = payload.get("access_token"), payload.get("expires_in")
            if code != 0 or not isinstance(token, str) or not token:
                error = dingtalk_error(code, msg, status)
                if isinstance(error, TransientError):
                    raise error  # busy or throttled: the key and secret may well be right
                raise PermanentError(f"DingTalk token refused: {error}")
            lifetime = float(expires) if isinstance(expires, int | float) else 7200.0
            self._token = (token, now + max(lifetime - TOKEN_REFRESH_MARGIN, lifetime / 2))
            return token

    async def _call(self, path: str, body: bytes) -> dict[str, Any]:
        """One ``oapi`` POST with the token, refetched once if DingTalk rejects it; raises the
        mapped ``ChannelError`` for any errcode but 0."""
        session, limit, _ = self._ensure_session()
        stale: str | None = None
        for _attempt in range(2):
            token = await self._access_token(stale)
            async with limit:
                try:
                    async with session.post(
                        f"{self._base_url}{path}",
                        params={"access_token": token},
                        data=body,
                        headers={"content-type": "application/json"},
                        allow_redirects=False,
                    ) as resp:
                        status = resp.status
                        code, msg, payload = await self._read(resp)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise transport_error(exc) from None
            if code == 0:
                return dict(payload)
            error = dingtalk_error(code, msg, status)
            if not isinstance(error, TokenRejected) or stale is not None:
                raise error
            stale = token
        raise AssertionError("unreachable")

    async def _send_task(self, task: Task) -> str | ChannelError:
        link = task.read_link
        if link is None and len(task.users) == 1:  # a task of one can carry that member's own link
            link = next(iter(task.users.values()))[0].read_link
        body = build_send(self._agent_id, list(task.users), build_message(task.notice, link))
        try:
            payload = await self._call(SEND_PATH, body)
        except ChannelError as exc:
            if isinstance(exc, InvalidTarget) and len(task.users) > 1:
                return PermanentError(str(exc))  # which of them is unknown is not said
            return exc
        task_id = payload.get("task_id")
        if not isinstance(task_id, int | str) or isinstance(task_id, bool) or not str(task_id):
            return PermanentError("DingTalk accepted the send without a task_id")
        return str(task_id)

    async def send(self, batch: list[Outgoing]) -> list[Result]:
        results: list[Result] = []
        valid: list[Outgoing] = []
        for item in batch:
            try:
                target = self.validate_target(item.target)
            except InvalidTarget as exc:
                results.append(Result.from_error(item.delivery_id, exc))
            else:
                valid.append(item if target == item.target else _with_target(item, target))
        if not valid:
            return results
        if self.robot_messages:
            return results + await self._send_robot(valid)
        tasks = plan_tasks(valid, personal_links=not self.read_poll)
        answers = await asyncio.gather(*(self._send_task(t) for t in tasks))
        for task, answer in zip(tasks, answers, strict=True):
            for items in task.users.values():
                for item in items:
                    if isinstance(answer, ChannelError):
                        results.append(Result.from_error(item.delivery_id, answer))
                    else:
                        results.append(Result(item.delivery_id, Outcome.SENT, provider_ref=answer))
        return results

    async def _send_robot(self, valid: list[Outgoing]) -> list[Result]:
        tasks = plan_tasks(valid, personal_links=False, size=MAX_USERS_PER_CALL)

        async def one(task: Task) -> RobotSend | ChannelError:
            link = next(iter(task.users.values()))[0].read_link if len(task.users) == 1 else None
            return await self._robot.send(list(task.users), build_message(task.notice, link))

        answers = await asyncio.gather(*(one(t) for t in tasks))
        results: list[Result] = []
        for task, answer in zip(tasks, answers, strict=True):
            for user, items in task.users.items():
                error = answer if isinstance(answer, ChannelError) else answer.refusal(user)
                ref = None if isinstance(answer, ChannelError) else robot_ref(answer.process_query_key, user)
                for item in items:
                    if error is not None:
                        results.append(Result.from_error(item.delivery_id, error))
                    else:
                        results.append(Result(item.delivery_id, Outcome.SENT, provider_ref=ref))
        return results

    async def read_status(self, process_query_key: str) -> dict[str, bool]:
        """Who read a robot message so far (``readStatus``): user id -> read; raises ``ChannelError``."""
        return await self._robot.read_status(process_query_key)

    def handle_callback(self, url: str, headers: dict[str, str], body: bytes) -> CallbackReply:
        """DingTalk's encrypted event push (``notifier.channels.dingtalk_events``)."""
        return self._events.handle(url, body)

    async def oapi(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Any other ``oapi`` call with the app's token (the contacts API of the organisation
        import); raises the mapped ``ChannelError``."""
        return await self._call(path, json.dumps(body, ensure_ascii=False).encode())

    async def send_result(self, task_id: str) -> SendResult:
        """Who read a task so far (``getsendresult``); raises ``ChannelError``."""
        if not task_id.isdigit():
            raise PermanentError("not a DingTalk task id")
        body = json.dumps({"agent_id": self._agent_id, "task_id": int(task_id)}).encode()
        return parse_send_result(await self._call(RESULT_PATH, body))

    async def recall(self, task_id: str) -> None:
        """Withdraw a task's message from every recipient (within 24 hours); raises ``ChannelError``."""
        if self.robot_messages:
            await self._robot.recall(task_id)
            return
        if not task_id.isdigit():
            raise PermanentError("not a DingTalk task id")
        body = json.dumps({"agent_id": self._agent_id, "msg_task_id": int(task_id)}).encode()
        await self._call(RECALL_PATH, body)

    async def close(self) -> None:
        await self._api.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _with_target(item: Outgoing, target: str) -> Outgoing:
    return Outgoing(item.delivery_id, item.member_id, target, item.notice, item.attempt, item.read_link)


def configured(settings: Settings) -> bool:
    config = settings.dingtalk
    return bool(config.app_key) and config.app_secret is not None and config.agent_id is not None
