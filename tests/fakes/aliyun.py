"""A fake Aliyun RPC gateway for ``SendSms`` (under ``/dysmsapi/``) and ``SingleCallByTts`` (under
``/dyvmsapi/``), verifying requests the way Aliyun's POP gateway does.

The signature is recomputed from the received parameters with the secret the fake knows (RPC
signature v1, Aliyun's own Java recipe: URLEncoder, then ``+``→``%20``, ``*``→``%2A``, ``%7E``→``~``),
the ``Timestamp`` must be within 15 minutes of the fake's clock, and a ``SignatureNonce`` may be used
once. Failures answer Aliyun's error JSON (``SignatureDoesNotMatch``, ``InvalidTimeStamp.Expired``,
``SignatureNonceUsed``, ``InvalidAccessKeyId.NotFound`` …) and are counted in ``rejected``.

``responses[e164]`` scripts answers per number, consumed in turn: ``"drop"`` closes the connection
after reading the request, an ``int`` answers that HTTP status, a ``str`` answers that ``Code``
(``isv.*`` / ``isp.*`` with HTTP 200 as Aliyun does, others with 400).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import uuid
from calendar import timegm
from collections import defaultdict
from dataclasses import dataclass, field
from time import strptime
from typing import Any
from urllib.parse import parse_qsl, quote_plus

from aiohttp import web

from notifier.clock import Clock, SystemClock
from tests.fakes.server import serve_local

ACCESS_KEY_ID = "LTAI5tFakeAccessKeyId01"
ACCESS_KEY_SECRET = "fake-aliyun-access-key-secret-01"
SIGN_NAME = "通知平台"
SMS_TEMPLATE = "SMS_460001"
TTS_TEMPLATE = "TTS_460002"
SHOW_NUMBER = "057188773344"
PUBLIC_URL = "https://notifier.example.org"
MAINLAND = re.compile(r"^1[3-9]\d{9}$")
INTERNATIONAL = re.compile(r"^[2-9]\d{6,14}$")
COMMON = (
    "AccessKeyId",
    "Action",
    "Format",
    "SignatureMethod",
    "SignatureNonce",
    "SignatureVersion",
    "Timestamp",
    "Version",
    "Signature",
)


def pop_encode(value: str) -> str:
    return quote_plus(value, encoding="utf-8").replace("+", "%20").replace("*", "%2A").replace("%7E", "~")


def expected_signature(secret: str, params: dict[str, str]) -> tuple[str, str]:
    query = "&".join(
        f"{pop_encode(k)}={pop_encode(v)}" for k, v in sorted(params.items()) if k != "Signature"
    )
    to_sign = "POST&" + pop_encode("/") + "&" + pop_encode(query)
    mac = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode(), to_sign


@dataclass
class Accepted:
    action: str
    phone: str  # E.164
    params: dict[str, str]
    ref: str  # BizId or CallId


@dataclass
class FakeAliyun:
    clock: Clock = field(default_factory=SystemClock)
    access_key_id: str = ACCESS_KEY_ID
    access_key_secret: str = ACCESS_KEY_SECRET
    tolerance_seconds: float = 900.0
    messages: list[Accepted] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)  # the Code of each rejection
    responses: dict[str, list[int | str]] = field(default_factory=lambda: defaultdict(list))
    nonces: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100001))
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings_overrides(self) -> dict[str, Any]:
        return {
            "sms_provider": "aliyun",
            "voice_provider": "aliyun",
            "public_url": PUBLIC_URL,
            "aliyun": {
                "access_key_id": self.access_key_id,
                "access_key_secret": self.access_key_secret,
                "sms_sign_name": SIGN_NAME,
                "sms_template_code": SMS_TEMPLATE,
                "sms_base_url": f"{self.base_url}/dysmsapi",
                "voice_show_number": SHOW_NUMBER,
                "voice_tts_code": TTS_TEMPLATE,
                "voice_base_url": f"{self.base_url}/dyvmsapi",
            },
        }

    def good_target(self) -> str:
        return "+8613800138000"

    # --- what Aliyun pushes to us -----------------------------------------------------------------

    @staticmethod
    def sms_report(sent: Accepted, success: bool = True, err_code: str = "DELIVERED") -> bytes:
        report = {
            "phone_number": sent.params["PhoneNumbers"],
            "send_time": "2024-05-01 10:00:00",
            "report_time": "2024-05-01 10:00:03",
            "success": success,
            "err_code": err_code,
            "err_msg": "用户接收成功" if success else "失败",
            "sms_size": "1",
            "biz_id": sent.ref,
            "out_id": sent.params.get("OutId", ""),
        }
        return json.dumps([report], ensure_ascii=False).encode()

    @staticmethod
    def voice_report(sent: Accepted, status_code: str = "200000") -> bytes:
        report = {
            "call_id": sent.ref,
            "status_code": status_code,
            "status_msg": "用户听完语音" if status_code == "200000" else "失败",
            "callee": sent.params["CalledNumber"],
            "duration": "12",
            "out_id": sent.params.get("OutId", ""),
        }
        return json.dumps([report], ensure_ascii=False).encode()

    # --- the gateway ------------------------------------------------------------------------------

    def _error(self, status: int, code: str, message: str, host: str) -> web.Response:
        self.rejected += 1
        self.rejections.append(code)
        body = {
            "RequestId": str(uuid.uuid4()).upper(),
            "HostId": host,
            "Code": code,
            "Message": message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}",
        }
        return web.json_response(body, status=status)

    def _business(self, code: str, message: str) -> web.Response:
        return web.json_response({"RequestId": str(uuid.uuid4()).upper(), "Code": code, "Message": message})

    def _authenticate(self, params: dict[str, str], host: str) -> web.Response | None:
        for name in COMMON:
            if not params.get(name):
                return self._error(400, f"Missing{name}", f"{name} is mandatory for this action.", host)
        if params["AccessKeyId"] != self.access_key_id:
            return self._error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.", host)
        if (params["SignatureMethod"], params["SignatureVersion"]) != ("HMAC-SHA1", "1.0"):
            return self._error(
                400, "InvalidSignatureMethod", "Specified signature method is not valid.", host
            )
        try:
            ts = timegm(strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            return self._error(
                400,
                "InvalidTimeStamp.Format",
                "Specified time stamp or date value is not well formatted.",
                host,
            )
        if abs(self.clock.time() - ts) > self.tolerance_seconds:
            return self._error(
                400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", host
            )
        signature, to_sign = expected_signature(self.access_key_secret, params)
        if not hmac.compare_digest(signature.encode(), params["Signature"].encode()):
            message = (
                f"Specified signature is not matched with our calculation. server string to sign is:{to_sign}"
            )
            return self._error(400, "SignatureDoesNotMatch", message, host)
        if params["SignatureNonce"] in self.nonces:
            return self._error(400, "SignatureNonceUsed", "Specified signature nonce was used already.", host)
        self.nonces.add(params["SignatureNonce"])
        if params["Version"] != "2017-05-25" or params["Format"] != "JSON":
            return self._error(400, "InvalidVersion", "Specified parameter Version is not valid.", host)
        return None

    def _scripted(self, request: web.Request, phone: str, params: dict[str, str]) -> web.Response | None:
        script = self.responses.get(phone)
        if not script:
            return None
        answer = script.pop(0)
        if answer == "drop":
            self.dropped.append(params)
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # the handler ends without a response
        if isinstance(answer, int):
            code = "ServiceUnavailable" if answer == 503 else "InternalError"
            return web.json_response(
                {"Code": code, "Message": "The request processing has failed."}, status=answer
            )
        if answer.startswith(("isv.", "isp.")):
            return self._business(answer, f"scripted {answer}")
        return web.json_response(
            {"Code": answer, "Message": "Request was denied due to user flow control."}, status=400
        )

    @staticmethod
    def _e164(number: str) -> str | None:
        if MAINLAND.fullmatch(number):
            return "+86" + number
        if INTERNATIONAL.fullmatch(number):
            return "+" + number
        return None

    def _check_json(self, value: str) -> bool:
        try:
            parsed = json.loads(value)
        except ValueError:
            return False
        return isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values())

    async def _handle(self, request: web.Request, action: str, host: str) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        params = {**dict(request.query), **form}
        failed = self._authenticate(params, host)
        if failed is not None:
            return failed
        if params["Action"] != action:
            return self._error(404, "InvalidAction.NotFound", "Specified api is not found.", host)
        if action == "SendSms":
            number = params.get("PhoneNumbers", "")
            if params.get("SignName") != SIGN_NAME:
                return self._business("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
            if params.get("TemplateCode") != SMS_TEMPLATE:
                return self._business("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
            if not self._check_json(params.get("TemplateParam", "")):
                return self._business("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        else:
            number = params.get("CalledNumber", "")
            if params.get("CalledShowNumber") != SHOW_NUMBER:
                return self._business("isv.DISPLAY_NUMBER_ILLEGAL", "号显不合法")
            if params.get("TtsCode") != TTS_TEMPLATE:
                return self._business("isv.TTS_TEMPLATE_ILLEGAL", "TTS模板不合法")
            if not self._check_json(params.get("TtsParam", "")):
                return self._business("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
            if not MAINLAND.fullmatch(number):
                return self._business("isv.MOBILE_NUMBER_ILLEGAL", f"号码格式非法 {number}")
        phone = self._e164(number)
        if phone is None:
            return self._business("isv.MOBILE_NUMBER_ILLEGAL", f"非法手机号 {number}")
        scripted = self._scripted(request, phone, params)
        if scripted is not None:
            return scripted
        n = next(self._ids)
        request_id = str(uuid.uuid4()).upper()
        if action == "SendSms":
            ref = f"{n}^0"
            self.messages.append(Accepted(action, phone, params, ref))
            return web.json_response({"RequestId": request_id, "Code": "OK", "Message": "OK", "BizId": ref})
        ref = f"{n}^{n + 7}"
        self.messages.append(Accepted(action, phone, params, ref))
        return web.json_response({"RequestId": request_id, "Code": "OK", "Message": "OK", "CallId": ref})

    async def _sms(self, request: web.Request) -> web.Response:
        return await self._handle(request, "SendSms", "dysmsapi.aliyuncs.com")

    async def _voice(self, request: web.Request) -> web.Response:
        return await self._handle(request, "SingleCallByTts", "dyvmsapi.aliyuncs.com")

    async def start(self) -> FakeAliyun:
        app = web.Application()
        app.router.add_post("/dysmsapi/", self._sms)
        app.router.add_post("/dyvmsapi/", self._voice)
        self._runner, self.port = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
