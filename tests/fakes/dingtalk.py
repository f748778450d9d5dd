"""A fake DingTalk open platform (``oapi``) for work notifications, on 127.0.0.1.

What it checks and does, as DingTalk does:

* ``GET /gettoken?appkey=&appsecret=`` answers ``{errcode, access_token, expires_in}``; asking
  again while the token is valid returns the same token. A wrong key or secret is 40096
  (40089 when either is missing). A token past its expiry answers 42001; one never issued 40014.
* ``POST /topapi/message/corpconversation/asyncsend_v2?access_token=`` with ``agent_id``,
  ``userid_list`` (comma-separated, at most ``max_recipients`` per task, default 100: the send
  result can only be read back for that many) and ``msg`` (``action_card``, ``oa``, ``text``,
  ``markdown`` or ``link``, at most 2,048 bytes) answers ``{errcode: 0, task_id}``.
  Limits: ``app_minute_limit`` recipients per minute per app (143103, nothing sent);
  a scripted corp limit (143104). Per user: ``daily_cap`` messages a day (143105) and the same
  content once a day (143106). A user over a per-user limit is listed in the task's
  ``forbidden_list`` with that code and gets nothing; a call where every user is forbidden is
  answered with the code itself.
* ``POST …/getsendresult {agent_id, task_id}`` answers ``send_result`` with read / unread /
  invalid / forbidden / failed user id lists; ``mark_read`` moves users to the read list over
  time. After 24 hours a task is gone (errcode 40035).
* ``POST …/recall {agent_id, msg_task_id}`` within 24 hours.

* New-style API (``api.dingtalk.com``, served on the same port): ``POST /v1.0/oauth2/accessToken
  {appKey, appSecret}`` -> ``{accessToken, expireIn}`` (tokens of their own, with their own
  expiry); calls take it in ``x-acs-dingtalk-access-token`` (missing, unknown or expired: 401
  ``InvalidAuthentication``). ``POST /v1.0/robot/ding/send {robotCode, remindType 1|2|3,
  receiverUserIdList, content}`` -> ``{openDingId, failedList}``: at most 200 receivers in the
  app and 20 by SMS or phone (400 otherwise, nothing sent), ``ding_minute_limit`` receivers a
  minute per robot (403 ``QpsLimitForAppkeyAndApi``); ``ding_failed_users`` come back in
  ``failedList``. ``POST /v1.0/robot/ding/recall {robotCode, openDingId}``.

* Robot one-to-one messages: ``POST /v1.0/robot/oToMessages/batchSend {robotCode, userIds (<= 20),
  msgKey, msgParam (a JSON string)}`` -> ``{processQueryKey, invalidStaffIdList,
  flowControlledStaffIdList}``; ``GET /v1.0/robot/oToMessages/readStatus?robotCode=&processQueryKey=``
  -> ``{sendStatus, messageReadInfoList[{userId, name, readStatus READ|UNREAD}]}``;
  ``POST /v1.0/robot/otoMessages/batchRecall {robotCode, processQueryKeys}``.
* Event push, as DingTalk's HTTP subscription does it (its own implementation of the envelope, so
  a mistake in ours shows): ``push_event(url, event)`` encrypts (AES-256-CBC, key from the
  EncodingAESKey, IV its first 16 bytes, PKCS#7 to 32 bytes, random16 + length + message + app
  key), signs (SHA-1 of sorted token, timestamp, nonce, encrypt) and POSTs; the answer must be
  the encrypted ``success``, correctly signed, or the push counts as failed (as DingTalk would
  retry it). ``push_reads(url)`` sends ``robot_msg_read`` for every robot read not pushed yet.

* Contacts API (old-style token): ``POST /topapi/v2/department/listsub {dept_id}`` -> the child
  departments ``{dept_id, name, parent_id}``; ``POST /topapi/v2/user/list {dept_id, cursor, size
  <= 100}`` -> ``{has_more, next_cursor, list[{userid, name, mobile, dept_id_list}]}``, from
  ``departments`` and ``org_users`` (test controls: add, move and remove them).

* Custom group robots: ``POST /robot/send?access_token=&timestamp=&sign=`` checks the robot
  (``robots``: token -> secret, keywords, blocked IP), the timestamp (within an hour of the
  fake's now) and ``sign`` (base64 HMAC-SHA256 with key = secret over "timestamp\nsecret"; a
  bad one is 310000 "sign not match"), a keyword in the message when the robot has keywords
  (310000 "keywords not in content"), the IP rule (310000 "ip ... not in whitelist"), and 20
  posts a minute per robot (410100, then muted for 10 minutes). Posts land in ``group_posts``.

Every delivered message is recorded in ``messages`` (one per user per task), so a test can
assert exactly one. Time is the fake's own ``now()`` (wall time plus ``offset``): ``advance``
jumps it, e.g. past a token's expiry or into the next day.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import SecretStr

from notifier.settings import DingTalkSettings
from tests.fakes.server import serve_local

MSG_TYPES = {"text", "link", "oa", "markdown", "action_card", "image", "voice", "file"}
MAX_MSG_BYTES = 2048
TASK_WINDOW = 24 * 3600.0
ERRORS: dict[int, str] = {
    40014: "不合法的access_token",
    40035: "不合法的参数",
    40089: "不合法的corpid或corpsecret",
    40096: "不合法的appKey或appSecret",
    42001: "access_token超时",
    90002: "服务器繁忙,请稍后重试",
    143103: "应用每分钟发送消息数超过限制",
    143104: "企业每分钟发送消息数超过限制",
    143105: "企业自建应用每日推送给用户的消息超过上限",
    143106: "企业自建应用给用户推送消息重复",
}


def _error(code: int, message: str | None = None) -> web.Response:
    return web.json_response(
        {"errcode": code, "errmsg": message or ERRORS.get(code, "error"), "request_id": "x"}
    )


@dataclass
class DingMessage:
    user_id: str
    task_id: int
    msg: dict[str, Any]


@dataclass
class Task:
    task_id: int
    user_ids: list[str]
    msg: dict[str, Any]
    sent_at: float
    invalid: list[str] = field(default_factory=list)
    forbidden: dict[str, int] = field(default_factory=dict)  # user id -> code
    failed: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    recalled: bool = False

    @property
    def delivered(self) -> list[str]:
        gone = set(self.invalid) | set(self.forbidden) | set(self.failed)
        return [u for u in self.user_ids if u not in gone]


@dataclass
class Ding:
    open_ding_id: str
    remind_type: int
    user_ids: list[str]
    content: str
    recalled: bool = False


@dataclass
class RobotSend:
    process_query_key: str
    user_ids: list[str]
    msg_key: str
    msg_param: dict[str, Any]
    read: list[str] = field(default_factory=list)
    pushed: set[str] = field(default_factory=set)  # reads already pushed as events
    recalled: bool = False


def _sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()  # noqa: S324


def _seal(aes_key: str, app_key: str, message: str) -> str:
    key = base64.b64decode(aes_key + "=")
    data = message.encode()
    plain = secrets.token_bytes(16) + len(data).to_bytes(4, "big") + data + app_key.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def _open(aes_key: str, app_key: str, sealed: str) -> str | None:
    key = base64.b64decode(aes_key + "=")
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = dec.update(base64.b64decode(sealed)) + dec.finalize()
    plain = plain[: -plain[-1]]
    length = int.from_bytes(plain[16:20], "big")
    if plain[20 + length :] != app_key.encode():
        return None
    return plain[20 : 20 + length].decode()


def _api_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "requestid": "x"}, status=status)


DING_LIMITS = {1: 200, 2: 20, 3: 20}


@dataclass
class FakeDingTalk:
    app_key: str = field(default_factory=lambda: "ding" + secrets.token_hex(8))
    app_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    agent_id: int = 2_917_000_001
    max_recipients: int = 100
    app_minute_limit: int = 5000  # recipients per minute per app
    daily_cap: int = 500  # messages per user per day
    token_lifetime: int = 7200
    invalid_users: set[str] = field(default_factory=set)  # not in the organisation
    failed_users: set[str] = field(default_factory=set)  # the platform could not deliver
    responses: list[int] = field(default_factory=list)  # scripted errcodes for the next sends
    token_responses: list[int] = field(default_factory=list)  # ... and for the next token requests
    offset: float = 0.0
    messages: list[DingMessage] = field(default_factory=list)
    tasks: dict[int, Task] = field(default_factory=dict)
    token_requests: int = 0
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # path -> authorised calls
    rejected: int = 0  # calls refused for a bad token
    _tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    _task_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(600_000_000_001))
    _minute: list[tuple[float, int]] = field(default_factory=list)
    _day: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    robot_code: str = field(default_factory=lambda: "dingrobot" + secrets.token_hex(6))
    ding_minute_limit: int = 6000  # DING receivers per minute per robot
    ding_failed_users: set[str] = field(default_factory=set)  # DING could not reach them
    ding_failed_list: Any = None  # when set, answered as failedList verbatim (an undocumented shape)
    dings: list[Ding] = field(default_factory=list)
    api_token_requests: int = 0
    api_rejected: int = 0  # new-style calls refused for a bad token
    api_responses: list[tuple[int, str]] = field(default_factory=list)  # scripted (status, code) for DINGs
    departments: dict[int, tuple[str, int]] = field(default_factory=dict)  # id -> (name, parent)
    org_users: dict[str, dict[str, Any]] = field(default_factory=dict)  # userid -> {name, mobile, depts}
    robot_sends: list[RobotSend] = field(default_factory=list)
    robots: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> {secret, keywords, ip_blocked}
    group_posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (robot token, message)
    robot_rejected: int = 0
    _robot_minute: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _robot_muted: dict[str, float] = field(default_factory=dict)
    robot_max_users: int = 20
    robot_flow_controlled: set[str] = field(default_factory=set)  # batchSend lists them as limited
    callback_token: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    callback_aes_key: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    )
    pushes: list[tuple[int, bool]] = field(default_factory=list)  # (HTTP status, reply was a valid success)
    _api_tokens: dict[str, float] = field(default_factory=dict)
    _ding_minute: list[tuple[float, int]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    # --- test controls -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def settings_overrides(self, app_secret: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "dingtalk": DingTalkSettings(
                app_key=self.app_key,
                app_secret=SecretStr(app_secret or self.app_secret),
                agent_id=self.agent_id,
                oapi_url=self.base_url,
                api_url=self.base_url,
                robot_code=self.robot_code,
                callback_token=SecretStr(self.callback_token),
                callback_aes_key=SecretStr(self.callback_aes_key),
                **{"group_robots": True, **extra},
            )
        }

    def good_target(self) -> str:
        return "manager" + secrets.token_hex(3)

    def revoke_tokens(self) -> None:
        """The platform invalidates every token early (an app secret reset, say)."""
        self._tokens.clear()
        self._api_tokens.clear()

    def new_robot(self, keywords: list[str] | None = None) -> dict[str, str]:
        """A group's custom robot; returns the unit-level contact target for it."""
        token = secrets.token_hex(32)
        secret = "SEC" + secrets.token_hex(32)
        self.robots[token] = {"secret": secret, "keywords": keywords or [], "ip_blocked": False}
        return {"webhook": f"{self.base_url}/robot/send?access_token={token}", "secret": secret}

    def posts_to(self, target: dict[str, str]) -> list[dict[str, Any]]:
        token = target["webhook"].split("access_token=")[1]
        return [m for t, m in self.group_posts if t == token]

    def dinged(self, remind_type: int | None = None) -> dict[str, int]:
        """How many DINGs each user got (of one remind type, or all)."""
        counts: dict[str, int] = defaultdict(int)
        for ding in self.dings:
            if remind_type is None or ding.remind_type == remind_type:
                for user in ding.user_ids:
                    counts[user] += 1
        return dict(counts)

    def mark_read(self, user_ids: list[str] | set[str]) -> int:
        """These users open the message (in every task they received it in); returns how many
        (task, user) reads are new."""
        wanted, n = set(user_ids), 0
        for task in self.tasks.values():
            for user in task.delivered:
                if user in wanted and user not in task.read and not task.recalled:
                    task.read.append(user)
                    n += 1
        for send in self.robot_sends:
            for user in send.user_ids:
                if user in wanted and user not in send.read and not send.recalled:
                    send.read.append(user)
                    n += 1
        return n

    def envelope(
        self, event: dict[str, Any], timestamp_ms: int | None = None, token: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """An event as DingTalk pushes it: the query parameters and the JSON body."""
        sealed = _seal(self.callback_aes_key, self.app_key, json.dumps(event, ensure_ascii=False))
        timestamp = str(timestamp_ms if timestamp_ms is not None else int(self.now() * 1000))
        nonce = secrets.token_hex(6)
        query = {
            "msg_signature": _sign(token or self.callback_token, timestamp, nonce, sealed),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        return query, json.dumps({"encrypt": sealed}).encode()

    def reply_is_success(self, body: bytes) -> bool:
        """Whether an answer to a push is DingTalk's expected encrypted, signed ``success``."""
        try:
            reply = json.loads(body)
            sealed = reply["encrypt"]
            signed = _sign(self.callback_token, str(reply["timeStamp"]), str(reply["nonce"]), sealed)
            return bool(reply["msg_signature"] == signed) and (
                _open(self.callback_aes_key, self.app_key, sealed) == "success"
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return False

    async def push_event(self, url: str, event: dict[str, Any]) -> tuple[int, bool]:
        """POST one event to our callback URL; returns (status, answered with a valid success)."""
        query, body = self.envelope(event)
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, params=query, data=body, headers={"content-type": "application/json"}) as resp,
        ):
            outcome = (resp.status, resp.status == 200 and self.reply_is_success(await resp.read()))
        self.pushes.append(outcome)
        return outcome

    def read_event(self, send: RobotSend, user: str) -> dict[str, Any]:
        return {
            "EventType": "robot_msg_read",
            "userId": user,
            "unionId": "union" + user,
            "robotCode": self.robot_code,
            "processQueryKey": send.process_query_key,
            "operatTime": int(self.now() * 1000),
        }

    async def push_reads(self, url: str) -> int:
        """Push ``robot_msg_read`` for every robot read not pushed yet; returns how many."""
        n = 0
        for send in self.robot_sends:
            for user in send.read:
                if user not in send.pushed:
                    status, ok = await self.push_event(url, self.read_event(send, user))
                    if status == 200 and ok:
                        send.pushed.add(user)
                    n += 1
        return n

    def per_user(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for m in self.messages:
            counts[m.user_id] += 1
        return dict(counts)

    # --- the API -------------------------------------------------------------------------

    async def gettoken(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if self.token_responses:
            return _error(self.token_responses.pop(0))
        key, secret = request.query.get("appkey"), request.query.get("appsecret")
        if not key or not secret:
            return _error(40089)
        if not (hmac.compare_digest(key, self.app_key) and hmac.compare_digest(secret, self.app_secret)):
            return _error(40096)
        now = self.now()
        live = [(t, exp) for t, exp in self._tokens.items() if exp > now]
        if live:
            token, expiry = max(live, key=lambda te: te[1])
        else:
            token, expiry = secrets.token_hex(16), now + self.token_lifetime
            self._tokens[token] = expiry
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": int(expiry - now)}
        )

    def _token_error(self, request: web.Request) -> web.Response | None:
        token = request.query.get("access_token", "")
        expiry = self._tokens.get(token)
        if expiry is None:
            self.rejected += 1
            return _error(40014)
        if expiry <= self.now():
            self.rejected += 1
            return _error(42001)
        return None

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def asyncsend(self, request: web.Request) -> web.Response:
        if (refused := self._token_error(request)) is not None:
            return refused
        body = await self._body(request)
        if body is None or body.get("agent_id") != self.agent_id:
            return _error(40035, "agent_id is missing or not this app's")
        self.calls["asyncsend_v2"] += 1
        users = [u for u in str(body.get("userid_list") or "").split(",") if u]
        if not users or len(users) > self.max_recipients:
            return _error(40035, f"userid_list must hold 1..{self.max_recipients} user ids")
        msg = body.get("msg")
        if not isinstance(msg, dict) or msg.get("msgtype") not in MSG_TYPES or msg["msgtype"] not in msg:
            return _error(40035, "msg must carry a known msgtype and its object")
        content = json.dumps(msg, ensure_ascii=False, sort_keys=True).encode()
        if len(content) > MAX_MSG_BYTES:
            return _error(40035, f"msg is over {MAX_MSG_BYTES} bytes")
        if self.responses:
            return _error(self.responses.pop(0))
        now = self.now()
        self._minute = [(t, n) for t, n in self._minute if t > now - 60]
        if sum(n for _, n in self._minute) + len(users) > self.app_minute_limit:
            return _error(143103)
        digest, day = hashlib.sha256(content).hexdigest(), int(now // 86400)
        task = Task(next(self._task_ids), list(dict.fromkeys(users)), msg, now)
        for user in task.user_ids:
            sent_today = self._day[(user, day)]
            if user in self.invalid_users:
                task.invalid.append(user)
            elif digest in sent_today:
                task.forbidden[user] = 143106
            elif len(sent_today) >= self.daily_cap:
                task.forbidden[user] = 143105
            elif user in self.failed_users:
                task.failed.append(user)
        if task.forbidden and len(task.forbidden) == len(task.user_ids):
            return _error(next(iter(task.forbidden.values())))
        self._minute.append((now, len(task.user_ids)))
        for user in task.delivered:
            self._day[(user, day)].append(digest)
            self.messages.append(DingMessage(user, task.task_id, msg))
        self.tasks[task.task_id] = task
        return web.json_response({"errcode": 0, "errmsg": "ok", "task_id": task.task_id, "request_id": "x"})

    def _task(self, body: dict[str, Any] | None, key: str) -> Task | web.Response:
        if body is None or body.get("agent_id") != self.agent_id:
            return _error(40035, "agent_id is missing or not this app's")
        task = self.tasks.get(body.get(key))  # type: ignore[arg-type]
        if task is None or task.sent_at < self.now() - TASK_WINDOW:
            return _error(40035, "task not found, or older than 24 hours")
        return task

    async def getsendresult(self, request: web.Request) -> web.Response:
        if (refused := self._token_error(request)) is not None:
            return refused
        self.calls["getsendresult"] += 1
        task = self._task(await self._body(request), "task_id")
        if isinstance(task, web.Response):
            return task
        read = set(task.read)
        result = {
            "invalid_user_id_list": task.invalid,
            "forbidden_user_id_list": list(task.forbidden),
            "failed_user_id_list": task.failed,
            "read_user_id_list": task.read,
            "unread_user_id_list": [u for u in task.delivered if u not in read],
            "invalid_dept_id_list": [],
            "forbidden_list": [{"code": str(c), "count": 1, "userid": u} for u, c in task.forbidden.items()],
        }
        return web.json_response({"errcode": 0, "errmsg": "ok", "send_result": result, "request_id": "x"})

    async def recall(self, request: web.Request) -> web.Response:
        if (refused := self._token_error(request)) is not None:
            return refused
        self.calls["recall"] += 1
        task = self._task(await self._body(request), "msg_task_id")
        if isinstance(task, web.Response):
            return task
        task.recalled = True
        return web.json_response({"errcode": 0, "errmsg": "ok", "request_id": "x"})

    # --- the new-style API ------------------------------------------------------------------

    async def api_token(self, request: web.Request) -> web.Response:
        self.api_token_requests += 1
        body = await self._body(request)
        key = str((body or {}).get("appKey") or "")
        secret = str((body or {}).get("appSecret") or "")
        if not key or not secret:
            return _api_error(400, "MissingappKey", "appKey and appSecret are required")
        if not (hmac.compare_digest(key, self.app_key) and hmac.compare_digest(secret, self.app_secret)):
            return _api_error(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret")
        now = self.now()
        live = [(t, exp) for t, exp in self._api_tokens.items() if exp > now]
        if live:
            token, expiry = max(live, key=lambda te: te[1])
        else:
            token, expiry = secrets.token_hex(16), now + self.token_lifetime
            self._api_tokens[token] = expiry
        return web.json_response({"accessToken": token, "expireIn": int(expiry - now)})

    def _api_token_error(self, request: web.Request) -> web.Response | None:
        expiry = self._api_tokens.get(request.headers.get("x-acs-dingtalk-access-token", ""))
        if expiry is None or expiry <= self.now():
            self.api_rejected += 1
            return _api_error(401, "InvalidAuthentication", "不合法的access_token")
        return None

    async def ding_send(self, request: web.Request) -> web.Response:
        if (refused := self._api_token_error(request)) is not None:
            return refused
        body = await self._body(request)
        self.calls["ding/send"] += 1
        if body is None or body.get("robotCode") != self.robot_code:
            return _api_error(400, "invalidParameter.robotCode", "robotCode is missing or not this app's")
        kind, users = body.get("remindType"), body.get("receiverUserIdList")
        if kind not in DING_LIMITS:
            return _api_error(400, "invalidParameter.remindType", "remindType must be 1, 2 or 3")
        if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
            return _api_error(400, "invalidParameter.receiverUserIdList", "receivers are required")
        if len(users) > DING_LIMITS[kind]:
            return _api_error(400, "invalidParameter.receiverUserIdList", f"at most {DING_LIMITS[kind]}")
        content = body.get("content")
        if not isinstance(content, str) or not content:
            return _api_error(400, "invalidParameter.content", "content is required")
        if self.api_responses:
            status, code = self.api_responses.pop(0)
            return _api_error(status, code, "scripted")
        now = self.now()
        self._ding_minute = [(t, n) for t, n in self._ding_minute if t > now - 60]
        if sum(n for _, n in self._ding_minute) + len(users) > self.ding_minute_limit:
            return _api_error(403, "QpsLimitForAppkeyAndApi", "调用频率超限")
        self._ding_minute.append((now, len(users)))
        failed = sorted({u for u in users if u in self.ding_failed_users})
        reached = [u for u in dict.fromkeys(users) if u not in failed]
        ding = Ding("ding" + secrets.token_hex(12), int(kind), reached, content)
        self.dings.append(ding)
        failed_list = {"userNotFound": failed} if failed else {}
        if self.ding_failed_list is not None:
            failed_list = self.ding_failed_list
        return web.json_response({"openDingId": ding.open_ding_id, "failedList": failed_list})

    async def ding_recall(self, request: web.Request) -> web.Response:
        if (refused := self._api_token_error(request)) is not None:
            return refused
        body = await self._body(request)
        self.calls["ding/recall"] += 1
        if body is None or body.get("robotCode") != self.robot_code:
            return _api_error(400, "invalidParameter.robotCode", "robotCode is missing or not this app's")
        ding = next((d for d in self.dings if d.open_ding_id == body.get("openDingId")), None)
        if ding is None:
            return _api_error(400, "invalidParameter.openDingId", "no such DING")
        ding.recalled = True
        return web.json_response({})

    async def robot_send(self, request: web.Request) -> web.Response:
        if (refused := self._api_token_error(request)) is not None:
            return refused
        body = await self._body(request)
        self.calls["oToMessages/batchSend"] += 1
        if body is None or body.get("robotCode") != self.robot_code:
            return _api_error(400, "invalidParameter.robotCode", "robotCode is missing or not this app's")
        users = body.get("userIds")
        if not isinstance(users, list) or not users or len(users) > self.robot_max_users:
            return _api_error(400, "invalidParameter.userIds", f"1..{self.robot_max_users} userIds")
        try:
            param = json.loads(body.get("msgParam") or "")
        except (TypeError, ValueError):
            return _api_error(400, "invalidParameter.msgParam", "msgParam must be a JSON string")
        if body.get("msgKey") not in ("sampleText", "sampleMarkdown", "sampleActionCard", "sampleLink"):
            return _api_error(400, "invalidParameter.msgKey", "unknown msgKey")
        invalid = [u for u in users if u in self.invalid_users]
        limited = [u for u in users if u in self.robot_flow_controlled and u not in invalid]
        reached = [u for u in dict.fromkeys(users) if u not in invalid and u not in limited]
        send = RobotSend(secrets.token_urlsafe(18), reached, str(body["msgKey"]), param)
        self.robot_sends.append(send)
        for user in reached:
            self.messages.append(DingMessage(user, 0, {"msgKey": send.msg_key, **param}))
        return web.json_response(
            {
                "processQueryKey": send.process_query_key,
                "invalidStaffIdList": invalid,
                "flowControlledStaffIdList": limited,
            }
        )

    def _robot_send(self, key: object) -> RobotSend | None:
        return next((r for r in self.robot_sends if r.process_query_key == key), None)

    async def robot_read_status(self, request: web.Request) -> web.Response:
        if (refused := self._api_token_error(request)) is not None:
            return refused
        self.calls["oToMessages/readStatus"] += 1
        send = self._robot_send(request.query.get("processQueryKey"))
        if request.query.get("robotCode") != self.robot_code or send is None:
            return _api_error(400, "invalidParameter.processQueryKey", "no such message")
        read = set(send.read)
        info = [
            {"userId": u, "name": u, "readStatus": "READ" if u in read else "UNREAD"} for u in send.user_ids
        ]
        return web.json_response({"sendStatus": "SUCCESS", "messageReadInfoList": info})

    async def robot_recall(self, request: web.Request) -> web.Response:
        if (refused := self._api_token_error(request)) is not None:
            return refused
        body = await self._body(request) or {}
        self.calls["otoMessages/batchRecall"] += 1
        keys = body.get("processQueryKeys")
        if body.get("robotCode") != self.robot_code or not isinstance(keys, list):
            return _api_error(400, "invalidParameter", "robotCode and processQueryKeys are required")
        ok, failed = [], []
        for key in keys:
            send = self._robot_send(key)
            if send is None:
                failed.append(key)
            else:
                send.recalled = True
                ok.append(key)
        return web.json_response({"successResult": ok, "failedResult": {k: "not found" for k in failed}})

    # --- the contacts API --------------------------------------------------------------------

    async def listsub(self, request: web.Request) -> web.Response:
        if (refused := self._token_error(request)) is not None:
            return refused
        self.calls["department/listsub"] += 1
        body = await self._body(request) or {}
        parent = body.get("dept_id", 1)
        if parent != 1 and parent not in self.departments:
            return _error(60003, "部门不存在")
        result = [
            {"dept_id": d, "name": name, "parent_id": p}
            for d, (name, p) in sorted(self.departments.items())
            if p == parent
        ]
        return web.json_response({"errcode": 0, "errmsg": "ok", "result": result, "request_id": "x"})

    async def user_list(self, request: web.Request) -> web.Response:
        if (refused := self._token_error(request)) is not None:
            return refused
        self.calls["user/list"] += 1
        body = await self._body(request) or {}
        dept, cursor, size = body.get("dept_id"), body.get("cursor", 0), body.get("size")
        if not isinstance(size, int) or not 1 <= size <= 100 or not isinstance(cursor, int):
            return _error(40035, "size must be 1..100 and cursor a number")
        if dept != 1 and dept not in self.departments:
            return _error(60003, "部门不存在")
        members = [u for u, info in sorted(self.org_users.items()) if dept in info["depts"]]
        page = members[cursor : cursor + size]
        more = cursor + size < len(members)
        listed = [
            {
                "userid": u,
                "name": self.org_users[u]["name"],
                "mobile": self.org_users[u].get("mobile", ""),
                "dept_id_list": list(self.org_users[u]["depts"]),
            }
            for u in page
        ]
        result: dict[str, Any] = {"has_more": more, "list": listed}
        if more:
            result["next_cursor"] = cursor + size
        return web.json_response({"errcode": 0, "errmsg": "ok", "result": result, "request_id": "x"})

    async def robot_post(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        robot = self.robots.get(token)
        if robot is None:
            self.robot_rejected += 1
            return _error(300001, "token is not exist")
        timestamp, given = request.query.get("timestamp", ""), request.query.get("sign", "")
        now = self.now()
        if not timestamp.isdigit() or abs(now - int(timestamp) / 1000) > 3600:
            self.robot_rejected += 1
            return _error(310000, "invalid timestamp")
        mac = hmac.new(robot["secret"].encode(), f"{timestamp}\n{robot['secret']}".encode(), hashlib.sha256)
        if not hmac.compare_digest(base64.b64encode(mac.digest()).decode(), given):
            self.robot_rejected += 1
            return _error(310000, "sign not match")
        if robot["ip_blocked"]:
            self.robot_rejected += 1
            return _error(310000, "ip 127.0.0.1 not in whitelist")
        body = await self._body(request)
        kind = body.get("msgtype") if body else None
        if (
            body is None
            or kind not in ("text", "link", "markdown", "actionCard", "feedCard")
            or kind not in body
        ):
            return _error(40035, "msgtype and its object are required")
        content = json.dumps(body[kind], ensure_ascii=False)
        if robot["keywords"] and not any(k in content for k in robot["keywords"]):
            self.robot_rejected += 1
            return _error(310000, "keywords not in content")
        if self._robot_muted.get(token, 0.0) > now:
            return _error(410100, "send too fast, exceed 20 times per minute")
        window = self._robot_minute[token] = [t for t in self._robot_minute[token] if t > now - 60]
        if len(window) >= 20:
            self._robot_muted[token] = now + 600
            return _error(410100, "send too fast, exceed 20 times per minute")
        window.append(now)
        self.group_posts.append((token, body))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def start(self) -> FakeDingTalk:
        app = web.Application()
        app.router.add_get("/gettoken", self.gettoken)
        base = "/topapi/message/corpconversation"
        app.router.add_post(f"{base}/asyncsend_v2", self.asyncsend)
        app.router.add_post(f"{base}/getsendresult", self.getsendresult)
        app.router.add_post(f"{base}/recall", self.recall)
        app.router.add_post("/robot/send", self.robot_post)
        app.router.add_post("/topapi/v2/department/listsub", self.listsub)
        app.router.add_post("/topapi/v2/user/list", self.user_list)
        app.router.add_post("/v1.0/oauth2/accessToken", self.api_token)
        app.router.add_post("/v1.0/robot/ding/send", self.ding_send)
        app.router.add_post("/v1.0/robot/ding/recall", self.ding_recall)
        app.router.add_post("/v1.0/robot/oToMessages/batchSend", self.robot_send)
        app.router.add_get("/v1.0/robot/oToMessages/readStatus", self.robot_read_status)
        app.router.add_post("/v1.0/robot/otoMessages/batchRecall", self.robot_recall)
        self._runner, self.port = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
