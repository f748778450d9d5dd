"""Channel send-rate benchmark: every channel against its fake provider, vs a plain-POST baseline.

Run::

    .venv/bin/python -m benchmarks.channels [--messages N] [--voice-messages M] [--rounds R]
                                            [--channels webhook,webpush,fcm,apns,jpush,sms,voice,
                                                        dingtalk,dingtalk_ding,dingtalk_robot]

Defaults: N = 2,000 per case, M = min(N, 2,000) for voice, R = 5 (the fastest round is reported).

``--channels`` takes channel ids (``sms`` and ``voice`` mean both providers) or single
``channel/provider`` cases (``sms/twilio``, ``voice/aliyun`` ...).

What it does, per case (webhook, webpush, fcm, apns, jpush, sms/aliyun, sms/twilio, voice/twilio,
voice/aliyun, dingtalk/work, dingtalk/robot, dingtalk_ding, dingtalk_robot):

* starts the fake provider from ``tests.fakes`` on 127.0.0.1 exactly as the contract suite does,
  and builds the channel with ``build_registry`` from settings made, as the contract suite's
  ``make_settings`` does, from the fake's ``settings_overrides()`` (no database or Redis is needed);
* prepares the ``Outgoing`` items (targets validated, signed read links) before the clock starts;
* sends two full warm-up batches (fill the connection pool, TLS / HTTP/2 setup, the FCM OAuth
  token: what a long-running worker has already paid), then times R rounds of N messages sent with
  ``channel.send(batch)`` in batches of ``capabilities.max_batch``, one batch after another, as one
  delivery job does: channel + provider-protocol cost (signing, encryption, HTTP), without the
  database, the queue or the dispatcher's limits (rate, per-target cap, breaker);
* checks that every item got exactly one SENT / DELIVERED result, that the fake recorded exactly
  warm-up + R x N messages and rejected none; any failure is listed and the exit status is 1.

The baseline, measured for each case in the same run, its rounds alternating with the case's: the
same JSON notice payload POSTed unsigned with aiohttp, one request per message, to a trivial local
aiohttp endpoint (reads the body, answers 204), in batches of the same size gathered under the same
in-flight limit as the channel. The fakes run in this process and event loop, so every figure
includes their cost too (the output says so). Every wait is bounded (a timeout per round) and
everything started is stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from benchmarks.harness.measure import against
from benchmarks.harness.servers import code_version
from notifier.channels import dingtalk as dingtalk_channel
from notifier.channels import dingtalk_api
from notifier.channels import dingtalk_robot as dingtalk_robot_channel
from notifier.channels import jpush as jpush_channel
from notifier.channels import sms as sms_channel
from notifier.channels import voice as voice_channel
from notifier.channels.base import Channel, NoticeContent, Outcome, Outgoing, Result
from notifier.channels.registry import build_registry
from notifier.links import read_link
from notifier.settings import Settings
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.apns import ApnsFake
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.fcm import FakeFcm
from tests.fakes.jpush import FakeJPush
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.fakes.webpush import FakePushService

CHANNELS = (
    "webhook",
    "webpush",
    "fcm",
    "apns",
    "jpush",
    "sms",
    "voice",
    "dingtalk",
    "dingtalk_ding",
    "dingtalk_robot",
)
# dingtalk/work: work notifications (tasks of 100); dingtalk/robot: robot one-to-one messages (20 a call)
PROVIDERS = {"sms": ("aliyun", "twilio"), "voice": ("twilio", "aliyun"), "dingtalk": ("work", "robot")}
DEFAULT_MESSAGES = 2_000
DEFAULT_VOICE_MESSAGES = 2_000  # voice is as cheap as SMS against a local fake: no need for fewer
WARMUP_BATCHES = 2  # untimed full batches first: the first may not reach the in-flight limit (FCM's
# token fetch staggers it), and a connection the timed part must open can cost a 1 s SYN retransmit
# (the fakes listen with aiohttp's default backlog of 128)
DEFAULT_ROUNDS = 5
RUN_TIMEOUT = 120.0  # seconds per round (and for the warm-up) of any one measurement
WEBHOOK_SECRET = "whsec_" + "YmVuY2htYXJrLXdlYmhvb2stc2lnbmluZy1rZXk="  # shared with the receiver
TITLE = "Evacuation drill: building B, 14:00"
BODY = (
    "Please leave building B by the north stairs when the alarm sounds at 14:00 and gather at "
    "assembly point 3. Floor wardens report head counts to the duty officer. Press 1 / open the "
    "link to confirm you have read this."
)
OK_OUTCOMES = (Outcome.SENT, Outcome.DELIVERED)

log = logging.getLogger("benchmarks.channels")
T = TypeVar("T")


@dataclass(frozen=True)
class Shape:
    """How a case sends: ``batch`` items per ``send`` call, at most ``concurrency`` in flight."""

    batch: int
    concurrency: int


@dataclass
class Case:
    label: str  # "sms/aliyun"
    channel_id: str
    overrides: dict[str, Any]
    target: Callable[[int], Any]  # the raw contact target of message i
    received: Callable[[], int]  # messages the fake accepted and recorded so far
    rejected: Callable[[], int]  # requests the fake refused so far
    concurrency: Callable[[Settings], int]  # the channel's own cap on in-flight provider requests
    messages: int
    note: str = ""


@dataclass
class Measurement:
    label: str
    shape: Shape
    messages: int  # per round
    note: str = ""
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds per round
    warmup_seconds: float = math.nan
    failures: list[str] = field(default_factory=list)
    baseline: Measurement | None = None

    @property
    def best(self) -> tuple[float, float]:
        return min(self.rounds) if self.rounds else (math.nan, math.nan)

    @property
    def seconds(self) -> float:
        return self.best[0]

    @property
    def cpu_seconds(self) -> float:
        return self.best[1]

    @property
    def spread(self) -> float:
        """How much slower the slowest round was than the fastest."""
        return max(wall for wall, _ in self.rounds) / self.seconds - 1 if self.rounds else math.nan

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else math.nan

    @property
    def idle(self) -> float:
        """Wall-clock seconds of the fastest round not spent on this process's CPU."""
        return self.seconds - self.cpu_seconds

    @property
    def per_message(self) -> float:
        return self.seconds / self.messages if self.messages else math.nan


def make_settings(**overrides: Any) -> Settings:
    """What ``tests.conftest.make_settings`` gives the channels (its other fields configure the
    database, Redis and the queue, which channels never touch). Not imported from there: that
    module pulls in pytest, the app and the workers, none of which a channel needs."""
    values: dict[str, Any] = {
        "webhook_secret": SecretStr(WEBHOOK_SECRET),
        "allow_private_targets": True,  # every fake listens on loopback
    }
    values.update(overrides)
    return Settings(**values)


# --- the fakes ----------------------------------------------------------------------------------


class Fakes:
    """Fake providers, each started on first use and stopped by the exit stack."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack
        self._twilio: FakeTwilio | None = None
        self._aliyun: FakeAliyun | None = None

    async def started(self, start: Awaitable[Any], stop: Callable[[], Awaitable[None]]) -> None:
        self._stack.push_async_callback(stop)  # stop() is safe on a fake whose start failed
        await start

    async def twilio(self) -> FakeTwilio:
        if self._twilio is None:
            self._twilio = FakeTwilio()
            await self.started(self._twilio.start(), self._twilio.stop)
        return self._twilio

    async def aliyun(self) -> FakeAliyun:
        if self._aliyun is None:
            self._aliyun = FakeAliyun()
            await self.started(self._aliyun.start(), self._aliyun.stop)
        return self._aliyun


def _default_concurrency(settings: Settings) -> int:
    return settings.delivery_concurrency


def _sms_concurrency(settings: Settings) -> int:
    return min(settings.delivery_concurrency, sms_channel.MAX_CONCURRENCY)


def _voice_concurrency(settings: Settings) -> int:
    return min(settings.delivery_concurrency, voice_channel.MAX_CONCURRENCY)


def _jpush_concurrency(settings: Settings) -> int:
    return jpush_channel.PARALLEL_CALLS


async def webhook_case(fakes: Fakes, n: int) -> Case:
    receiver = WebhookReceiver(secret=WEBHOOK_SECRET)
    await fakes.started(receiver.start(), receiver.stop)
    return Case(
        label="webhook",
        channel_id="webhook",
        overrides={},
        target=lambda i: receiver.url,
        received=lambda: len(receiver.messages),
        rejected=lambda: receiver.rejected,
        concurrency=_default_concurrency,
        messages=n,
        note="Standard Webhooks HMAC-SHA256; the receiver verifies each signature",
    )


async def webpush_case(fakes: Fakes, n: int) -> Case:
    push = FakePushService()
    await fakes.started(push.start(), push.stop)
    subscription = push.good_target()
    return Case(
        label="webpush",
        channel_id="webpush",
        overrides=push.settings_overrides(),
        target=lambda i: subscription,
        received=lambda: len(push.messages),
        rejected=lambda: push.rejected,
        concurrency=_default_concurrency,
        messages=n,
        note="VAPID ES256 JWT + aes128gcm (ECDH) per message; the fake verifies and decrypts each",
    )


async def fcm_case(fakes: Fakes, n: int) -> Case:
    fcm = FakeFcm()
    await fakes.started(fcm.start(), fcm.stop)
    token = fcm.good_target()
    return Case(
        label="fcm",
        channel_id="fcm",
        overrides=fcm.settings_overrides(),
        target=lambda i: token,
        received=lambda: len(fcm.messages),
        rejected=lambda: fcm.rejected,
        concurrency=_default_concurrency,
        messages=n,
        note="HTTP v1 JSON with a cached OAuth bearer token (fetched in the warm-up)",
    )


async def apns_case(fakes: Fakes, n: int) -> Case:
    apns = ApnsFake()
    await fakes.started(apns.start(), apns.stop)
    device = apns.good_target()
    return Case(
        label="apns",
        channel_id="apns",
        overrides=apns.settings_overrides(),
        target=lambda i: device,
        received=lambda: len(apns.messages),
        rejected=lambda: apns.rejected,
        concurrency=_default_concurrency,
        messages=n,
        note="HTTP/2 over TLS (httpx + h2) with a cached ES256 token; the fake verifies it per request",
    )


async def jpush_case(fakes: Fakes, n: int) -> Case:
    jpush = FakeJPush()
    await fakes.started(jpush.start(), jpush.stop)
    return Case(
        label="jpush",
        channel_id="jpush",
        overrides=jpush.settings_overrides(),
        # Distinct registration ids: the fake records one message per distinct id of a call.
        target=lambda i: f"bench{i:016d}",
        received=lambda: len(jpush.messages),
        rejected=lambda: jpush.rejected,
        concurrency=_jpush_concurrency,
        messages=n,
        note="one basic-auth call carries a whole batch (up to 1,000 ids), so it beats one POST per message",
    )


async def phone_case(fakes: Fakes, channel_id: str, provider: str, n: int) -> Case:
    selection = {"sms_provider": "", "voice_provider": "", f"{channel_id}_provider": provider}
    concurrency = _sms_concurrency if channel_id == "sms" else _voice_concurrency
    label = f"{channel_id}/{provider}"
    if provider == "twilio":
        twilio = await fakes.twilio()
        kind = "sms" if channel_id == "sms" else "call"
        return Case(
            label=label,
            channel_id=channel_id,
            overrides=twilio.settings_overrides() | selection,
            target=lambda i: twilio.good_target(),
            received=lambda: sum(1 for m in twilio.messages if m.kind == kind),
            rejected=lambda: twilio.rejected,
            concurrency=concurrency,
            messages=n,
            note="form POST with basic auth" + (", TwiML built per call" if kind == "call" else ""),
        )
    aliyun = await fakes.aliyun()
    action = "SendSms" if channel_id == "sms" else "SingleCallByTts"
    return Case(
        label=label,
        channel_id=channel_id,
        overrides=aliyun.settings_overrides() | selection,
        target=lambda i: aliyun.good_target(),
        received=lambda: sum(1 for m in aliyun.messages if m.action == action),
        rejected=lambda: aliyun.rejected,
        concurrency=concurrency,
        messages=n,
        note=f"{action}, RPC signature v1 (HMAC-SHA1) per request; the fake recomputes it",
    )


def _dingtalk_fake(fake: FakeDingTalk) -> FakeDingTalk:
    # The platform's per-minute limits are the channel's waits, not its cost: lifted here, as
    # the dispatcher's rate limits are left out of every case.
    fake.app_minute_limit = fake.ding_minute_limit = 10**9
    fake.daily_cap = 10**9
    return fake


async def dingtalk_case(fakes: Fakes, channel_id: str, provider: str, n: int) -> Case:
    fake = _dingtalk_fake(FakeDingTalk())
    await fakes.started(fake.start(), fake.stop)
    if channel_id == "dingtalk_robot":
        return Case(
            label="dingtalk_robot",
            channel_id="dingtalk_robot",
            overrides=fake.settings_overrides(),
            target=lambda i: fake.new_robot(),  # one group each: a robot takes 20 a minute
            received=lambda: len(fake.group_posts),
            rejected=lambda: fake.robot_rejected,
            concurrency=lambda s: dingtalk_robot_channel.PARALLEL_POSTS,
            messages=n,
            note="one signed POST per group (HMAC-SHA256 sign per post); the fake verifies each",
        )
    if channel_id == "dingtalk_ding":
        return Case(
            label="dingtalk_ding",
            channel_id="dingtalk_ding",
            overrides=fake.settings_overrides(),
            target=lambda i: f"bench{i:08d}",
            received=lambda: sum(len(d.user_ids) for d in fake.dings),
            rejected=lambda: fake.api_rejected,
            concurrency=lambda s: dingtalk_api.PARALLEL_CALLS,
            messages=n,
            note="app DINGs, 200 receivers a call, new-style token header",
        )
    robot = provider == "robot"
    return Case(
        label=f"dingtalk/{provider}",
        channel_id="dingtalk",
        overrides=fake.settings_overrides(robot_messages=robot),
        target=lambda i: f"bench{i:08d}",
        received=lambda: len(fake.messages),
        rejected=lambda: fake.rejected + fake.api_rejected,
        concurrency=lambda s: dingtalk_api.PARALLEL_CALLS if robot else dingtalk_channel.PARALLEL_CALLS,
        messages=n,
        note="robot one-to-one messages, 20 user ids a call"
        if robot
        else "asyncsend_v2, one task per 100 user ids (the read poll's limit)",
    )


def parse_selection(text: str) -> list[str]:
    """``webhook,sms,voice/aliyun`` -> case labels in the canonical order."""
    every = [
        label
        for channel_id in CHANNELS
        for label in (
            [f"{channel_id}/{p}" for p in PROVIDERS[channel_id]] if channel_id in PROVIDERS else [channel_id]
        )
    ]
    wanted: set[str] = set()
    for raw in (part.strip().lower() for part in text.split(",")):
        if not raw:
            continue
        matches = [label for label in every if label == raw or label.split("/")[0] == raw]
        if not matches:
            raise SystemExit(f"unknown channel {raw!r}: choose from {', '.join(every)}")
        wanted.update(matches)
    return [label for label in every if label in wanted]


async def build_case(fakes: Fakes, label: str, messages: int, voice_messages: int) -> Case:
    channel_id, _, provider = label.partition("/")
    simple: dict[str, Callable[[Fakes, int], Awaitable[Case]]] = {
        "webhook": webhook_case,
        "webpush": webpush_case,
        "fcm": fcm_case,
        "apns": apns_case,
        "jpush": jpush_case,
    }
    if channel_id in simple:
        return await simple[channel_id](fakes, messages)
    if channel_id.startswith("dingtalk"):
        return await dingtalk_case(fakes, channel_id, provider, messages)
    return await phone_case(
        fakes, channel_id, provider, voice_messages if channel_id == "voice" else messages
    )


# --- the messages -------------------------------------------------------------------------------


def payload(item: Outgoing) -> bytes:
    """The JSON a plain notification POST carries (the webhook channel's body)."""
    return json.dumps(
        {
            "notice_id": item.notice.notice_id,
            "member_id": item.member_id,
            "kind": item.notice.kind,
            "title": item.notice.title,
            "body": item.notice.body,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


class Messages:
    """Outgoing items with run-unique delivery ids, built before any clock starts."""

    def __init__(self, settings: Settings) -> None:
        self.notice = NoticeContent(str(uuid.uuid4()), "ding", TITLE, BODY)
        self._public_url = settings.effective_public_url
        self._secret = settings.link_secret.get_secret_value().encode()
        self._expires = int(time.time()) + settings.link_ttl_seconds
        self._ids: Iterator[int] = itertools.count(1)

    def make(self, count: int, target: Callable[[int], Any]) -> list[Outgoing]:
        items = []
        for _ in range(count):
            delivery_id = next(self._ids)
            member_id = f"member-{delivery_id:07d}"
            link = read_link(self._public_url, self._secret, self.notice.notice_id, member_id, self._expires)
            items.append(
                Outgoing(delivery_id, member_id, target(delivery_id), self.notice, 1, read_link=link)
            )
        return items


def check_results(answers: list[tuple[list[Outgoing], list[Result]]]) -> list[str]:
    """Exactly one result per item, and every one SENT or DELIVERED; failures grouped by kind."""
    problems: list[str] = []
    mismatched = [
        (len(batch), len(results))
        for batch, results in answers
        if sorted(r.delivery_id for r in results) != sorted(item.delivery_id for item in batch)
    ]
    if mismatched:
        items, results = mismatched[0]
        problems.append(
            f"{len(mismatched)} batches not answered one result per item (first: {items} items,"
            f" {results} results)"
        )
    bad = Counter(
        f"{r.outcome.value}: {r.error}"
        for _, results in answers
        for r in results
        if r.outcome not in OK_OUTCOMES
    )
    problems += [f"{count} x {what}" for what, count in bad.most_common(5)]
    if len(bad) > 5:
        problems.append(
            f"... and {sum(bad.values()) - sum(n for _, n in bad.most_common(5))} more, of other kinds"
        )
    return problems


# --- measurements -------------------------------------------------------------------------------


async def time_rounds(
    rounds: Sequence[Sequence[T]], size: int, send: Callable[[list[T]], Awaitable[None]]
) -> list[tuple[float, float]]:
    """Send each round in batches of ``size``, one batch after another; (wall, CPU) seconds per round."""
    took: list[tuple[float, float]] = []
    for items in rounds:
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(items), size):
            await send(list(items[start : start + size]))
        took.append((time.perf_counter() - wall, time.process_time() - cpu))
    return took


class Runner(Protocol):
    result: Measurement

    async def warm_up(self) -> None: ...

    async def run_round(self) -> None: ...

    def check(self) -> None: ...

    async def close(self) -> None: ...


class ChannelRunner:
    """One case: the channel built from settings pointing at its fake, items made in advance."""

    def __init__(self, case: Case, rounds: int) -> None:
        self.case = case
        settings = make_settings(**case.overrides)
        self.registry = build_registry(settings)
        self.channel: Channel = self.registry.get(case.channel_id)
        self.batch = self.channel.capabilities.max_batch
        shape = Shape(self.batch, min(self.batch, case.concurrency(settings)))
        self.result = Measurement(case.label, shape, case.messages, note=case.note)
        messages = Messages(settings)
        # Targets are validated here, before anything is sent: a bad one is a setup error.
        self.warm = messages.make(self.batch * WARMUP_BATCHES, self._target)
        self.timed = [messages.make(case.messages, self._target) for _ in range(rounds)]
        self.answers: list[tuple[list[Outgoing], list[Result]]] = []
        self.handed = 0  # items passed to channel.send(), answered or not
        self.received, self.rejected = case.received(), case.rejected()

    def _target(self, i: int) -> Any:
        return self.channel.validate_target(self.case.target(i))

    async def _send(self, chunk: list[Outgoing]) -> None:
        self.handed += len(chunk)
        self.answers.append((chunk, await self.channel.send(chunk)))

    async def warm_up(self) -> None:
        self.result.warmup_seconds = (await time_rounds([self.warm], self.batch, self._send))[0][0]

    async def run_round(self) -> None:
        self.result.rounds += await time_rounds([self.timed[len(self.result.rounds)]], self.batch, self._send)

    def check(self) -> None:
        self.result.failures += check_results(self.answers)
        answered = sum(len(chunk) for chunk, _ in self.answers)
        got = self.case.received() - self.received
        refused = self.case.rejected() - self.rejected
        if answered != self.handed:
            self.result.failures.append(
                f"interrupted: {self.handed} messages handed to send(), {answered} answered,"
                f" {got} recorded by the fake"
            )
        elif got != answered:
            self.result.failures.append(f"the fake recorded {got} messages, expected {answered}")
        if refused:
            self.result.failures.append(f"the fake rejected {refused} requests")

    async def close(self) -> None:
        await self.registry.close()


class BaselineEndpoint:
    """A trivial local endpoint: read the body, count it, answer 204."""

    def __init__(self) -> None:
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.received += 1
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # aiohttp's default backlog, as the fakes
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}/notify"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class BaselineRunner:
    """Plain unsigned POSTs of the same JSON payload, one per message, with a case's shape."""

    HEADERS = {"content-type": "application/json"}

    def __init__(self, endpoint: BaselineEndpoint, shape: Shape, count: int, rounds: int) -> None:
        self.endpoint = endpoint
        self.shape = shape
        self.result = Measurement("baseline", shape, count)
        messages = Messages(make_settings())
        self.warm = [payload(item) for item in messages.make(shape.batch * WARMUP_BATCHES, lambda i: None)]
        self.timed = [[payload(item) for item in messages.make(count, lambda i: None)] for _ in range(rounds)]
        self.statuses: list[int] = []
        self.handed = 0
        self.received = endpoint.received
        self.limit = asyncio.Semaphore(shape.concurrency)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=shape.concurrency), timeout=aiohttp.ClientTimeout(total=10.0)
        )

    async def _post(self, body: bytes) -> int:
        async with self.limit:
            try:
                async with self.session.post(
                    self.endpoint.url, data=body, headers=self.HEADERS, allow_redirects=False
                ) as resp:
                    await resp.read()
                    return resp.status
            except (TimeoutError, aiohttp.ClientError):
                return 0

    async def _send(self, bodies: list[bytes]) -> None:
        self.handed += len(bodies)
        self.statuses += await asyncio.gather(*(self._post(body) for body in bodies))

    async def warm_up(self) -> None:
        self.result.warmup_seconds = (await time_rounds([self.warm], self.shape.batch, self._send))[0][0]

    async def run_round(self) -> None:
        chunk = self.timed[len(self.result.rounds)]
        self.result.rounds += await time_rounds([chunk], self.shape.batch, self._send)

    def check(self) -> None:
        bad = Counter(s for s in self.statuses if s != 204)
        self.result.failures += [f"{n} x HTTP {s or 'transport error'}" for s, n in bad.items()]
        got = self.endpoint.received - self.received
        if len(self.statuses) != self.handed:
            self.result.failures.append(
                f"interrupted: {self.handed} POSTs started, {len(self.statuses)} answered, {got} counted"
            )
        elif got != len(self.statuses):
            self.result.failures.append(f"the endpoint counted {got} POSTs, expected {len(self.statuses)}")

    async def close(self) -> None:
        await self.session.close()


async def measure(case: Case, endpoint: BaselineEndpoint, rounds: int) -> Measurement:
    """The case and its baseline, round by round in alternating order, so that a change in the
    machine's load during the run hits both alike."""
    async with contextlib.AsyncExitStack() as stack:
        channel = ChannelRunner(case, rounds)
        stack.push_async_callback(channel.close)
        baseline = BaselineRunner(endpoint, channel.result.shape, case.messages, rounds)
        stack.push_async_callback(baseline.close)
        channel.result.baseline = baseline.result
        limit = RUN_TIMEOUT * (rounds + 1)
        try:
            async with asyncio.timeout(limit):
                await baseline.warm_up()
                await channel.warm_up()
                for n in range(rounds):
                    pair: tuple[Runner, Runner] = (baseline, channel) if n % 2 == 0 else (channel, baseline)
                    for runner in pair:
                        await runner.run_round()
        except TimeoutError:
            channel.result.failures.append(f"the case and its baseline did not finish within {limit:g} s")
        except Exception as exc:  # the contract says send() never raises: report it, go on
            log.exception("%s: send raised", case.label)
            channel.result.failures.append(f"send() raised {type(exc).__name__}: {exc}")
        channel.check()
        baseline.check()
        channel.result.failures += [f"baseline: {problem}" for problem in baseline.result.failures]
        return channel.result


# --- the report ---------------------------------------------------------------------------------

HEADER = """\
Channel send rate: channel.send(batch) against each fake provider on 127.0.0.1
  Timed: {rounds} rounds of {messages} messages per case ({voice} for voice), each in batches of
  capabilities.max_batch sent one after another; 'seconds' is the fastest round, 'spread' how much
  slower the slowest was. First, {warmup} untimed warm-up batches fill the connection pool (TLS/HTTP2
  setup, FCM OAuth token: what a running worker has already paid; 'warm-up s'). The fakes listen
  with aiohttp's default backlog of 128: opening ~256 connections at once drops SYNs and costs a 1 s
  retransmit, a local artifact that lands in 'warm-up s', not in 'seconds'.
  Not included: database, queue, and the dispatcher's rate / per-target / circuit-breaker limits.
  CAUTION: the fake providers (and the baseline endpoint) run in this same process and event loop as
  the channels, so every figure includes the fake's own cost (request parsing, signature and token
  verification, Web Push decryption, HTTP/2 framing): a channel alone is faster than shown, and its
  ratio also carries how much more (or less) work its fake does than the trivial baseline endpoint.
  Baseline, per case, in this run: the same JSON notice payload POSTed unsigned with aiohttp, one
  request per message, to a trivial local aiohttp endpoint (read body, answer 204), with the case's
  batch size and in-flight limit; its rounds alternate with the case's so load changes hit both.
  conc = min(max_batch, the channel's own cap on in-flight provider requests).
  x baseline = seconds per message / the baseline's seconds per message (fastest rounds of each):
  1.00x = as cheap as a plain POST, 3.00x = three times the cost, below 1 = cheaper (batching).
  cpu s = this process's CPU time in that round: near 'seconds' means the one event loop is CPU-bound.
  Python {python}, {cpus} CPUs, delivery_concurrency={concurrency}, load average {load}, code {code}."""


def _num(value: float, form: str) -> str:
    return "-" if math.isnan(value) else form.format(value)


def _idle_note(label: str, row: Measurement) -> list[str]:
    if math.isnan(row.idle) or row.idle <= max(0.1, 0.2 * row.seconds):
        return []
    return [
        f"  {label}: {row.idle:.2f} s of its fastest round ({row.seconds:.2f} s) was not this process's CPU"
        " (I/O or connection waits, or other processes using the CPUs): not a pure CPU-cost figure"
    ]


def render(rows: list[Measurement]) -> str:
    head = (
        "channel/provider", "batch", "conc", "messages", "seconds", "msg/s", "cpu s", "spread",
        "warm-up s", "baseline msg/s", "spread", "x baseline", "check",
    )  # fmt: skip
    table = [head]
    for row in rows:
        base = row.baseline or Measurement("baseline", row.shape, row.messages)
        table.append(
            (
                row.label,
                str(row.shape.batch),
                str(row.shape.concurrency),
                f"{row.messages:,}",
                _num(row.seconds, "{:.3f}"),
                _num(row.rate, "{:,.0f}"),
                _num(row.cpu_seconds, "{:.3f}"),
                _num(row.spread, "{:+.0%}"),
                _num(row.warmup_seconds, "{:.3f}"),
                _num(base.rate, "{:,.0f}"),
                _num(base.spread, "{:+.0%}"),
                against(row.per_message, base.per_message, "{:.2f}x"),
                "FAIL" if row.failures else "ok",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = []
    for n, line in enumerate(table):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {row.label}: {row.note}" for row in rows]
    for row in rows:
        notes += _idle_note(row.label, row)
        if row.baseline is not None:
            notes += _idle_note(f"{row.label} baseline", row.baseline)
    return "\n".join([*lines, "", "notes:", *notes])


def render_failures(rows: list[Measurement]) -> str:
    failed = [row for row in rows if row.failures]
    if not failed:
        return (
            "all checks passed: every message got a SENT/DELIVERED result and was recorded by its fake"
            " (warm-up included), no request was rejected, every baseline POST was answered 204"
        )
    out = ["FAILURES:"]
    for row in failed:
        out.append(f"  {row.label}:")
        out += [f"    - {problem}" for problem in row.failures]
    return "\n".join(out)


async def run(labels: list[str], messages: int, voice_messages: int, rounds: int) -> list[Measurement]:
    rows: list[Measurement] = []
    async with contextlib.AsyncExitStack() as stack:
        fakes = Fakes(stack)
        endpoint = BaselineEndpoint()
        stack.push_async_callback(endpoint.stop)
        await endpoint.start()
        for label in labels:
            print(f"... {label}", file=sys.stderr, flush=True)
            case = await build_case(fakes, label, messages, voice_messages)
            rows.append(await measure(case, endpoint, rounds))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.channels", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help="timed messages per case")
    parser.add_argument(
        "--voice-messages",
        type=int,
        default=None,
        help=f"timed messages for voice/* (default: min(--messages, {DEFAULT_VOICE_MESSAGES}))",
    )
    parser.add_argument(
        "--channels", default=",".join(CHANNELS), help="comma-separated channel ids or channel/provider"
    )
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="timed rounds per case; the fastest is reported"
    )
    args = parser.parse_args(argv)
    if min(args.messages, args.rounds, 1 if args.voice_messages is None else args.voice_messages) < 1:
        parser.error("--messages, --voice-messages and --rounds must be at least 1")
    voice_messages = (
        min(args.messages, DEFAULT_VOICE_MESSAGES) if args.voice_messages is None else args.voice_messages
    )
    labels = parse_selection(args.channels)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = make_settings()
    print(
        HEADER.format(
            messages=f"{args.messages:,}",
            voice=f"{voice_messages:,}",
            python=sys.version.split()[0],
            cpus=os.cpu_count(),
            warmup=WARMUP_BATCHES,
            rounds=args.rounds,
            load=" ".join(f"{x:.2f}" for x in os.getloadavg()),
            concurrency=settings.delivery_concurrency,
            code=code_version(),
        ),
        flush=True,
    )
    rows = asyncio.run(run(labels, args.messages, voice_messages, args.rounds))
    print()
    print(render(rows))
    print()
    print(render_failures(rows))
    return 1 if any(row.failures for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
