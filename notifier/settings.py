"""Configuration, read from ``NOTIFIER_*`` environment variables.

A ``Settings`` object is built once in ``__main__`` (or by a test) and passed down explicitly;
nothing reads the environment at import time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Development defaults, public in this source: `serve` and `worker` refuse to start with them.
DEV_WEBHOOK_SECRET = "whsec_" + "bm90aWZpZXItZGV2LXdlYmhvb2stc2VjcmV0"
DEV_LINK_SECRET = "notifier-dev-link-secret-change-me"  # noqa: S105 - public by design, refused in production


class WebPushSettings(BaseModel):
    """VAPID key pair (``notifier vapid-keys`` makes one) and the subject push services may contact."""

    vapid_private_key: SecretStr | None = None  # PEM (P-256)
    vapid_subject: str = "mailto:ops@example.org"
    ttl_seconds: int = 24 * 3600
    ding_ttl_seconds: int = 600


class FcmSettings(BaseModel):
    service_account_json: SecretStr | None = None  # the JSON itself, or a path to it
    base_url: str = "https://fcm.googleapis.com"
    token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
    ding_ttl_seconds: int = 600


class ApnsSettings(BaseModel):
    key_p8: SecretStr | None = None  # the .p8 PEM itself, or a path to it
    key_id: str = ""
    team_id: str = ""
    topic: str = ""  # the app's bundle id
    base_url: str = "https://api.push.apple.com"
    ca_file: str | None = None  # extra trust anchor (tests use their own CA)


class JPushSettings(BaseModel):
    app_key: str = ""
    master_secret: SecretStr | None = None
    base_url: str = "https://api.jpush.cn"


class DingTalkSettings(BaseModel):
    """An internal app on DingTalk: its key, secret and agent id (work notifications), its robot
    code (DINGs), the event subscription's token and AES key (encrypted event push)."""

    app_key: str = ""
    app_secret: SecretStr | None = None
    agent_id: int | None = None
    robot_code: str = ""  # the app's robot: DINGs (robot/ding/send) and robot messages
    callback_token: SecretStr | None = None  # event subscription: signs the pushed events
    callback_aes_key: SecretStr | None = None  # event subscription: the 43-character EncodingAESKey
    oapi_url: str = "https://oapi.dingtalk.com"
    api_url: str = "https://api.dingtalk.com"  # the new-style (v1.0) API
    read_poll: bool = True  # import reads by polling getsendresult (tasks of <= 100 user ids)
    # Send the ``dingtalk`` channel's messages as robot one-to-one messages (oToMessages/batchSend)
    # instead of work notifications: reads arrive as robot_msg_read events, readStatus polled as
    # the backstop. Needs robot_code.
    robot_messages: bool = False
    group_robots: bool = False  # the dingtalk_robot channel: units' group chat custom robots
    group_robot_per_minute: int = Field(default=20, ge=1)  # DingTalk's limit per robot
    ding_per_minute: int = Field(default=6000, ge=1)  # DING receivers per minute per robot
    event_max_age_seconds: float = Field(default=3600.0, ge=60)  # older pushed events are refused


class TwilioSettings(BaseModel):
    account_sid: str = ""
    auth_token: SecretStr | None = None
    sms_from: str = ""
    voice_from: str = ""
    base_url: str = "https://api.twilio.com"


class AliyunSettings(BaseModel):
    access_key_id: str = ""
    access_key_secret: SecretStr | None = None
    sms_sign_name: str = ""
    sms_template_code: str = ""
    sms_base_url: str = "https://dysmsapi.aliyuncs.com"
    voice_show_number: str = ""
    voice_tts_code: str = ""
    voice_base_url: str = "https://dyvmsapi.aliyuncs.com"


class RoleLimit(BaseModel):
    """A token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    per_second: float = Field(gt=0)
    burst: float = Field(ge=1)


class RateLimits(BaseModel):
    """Requests per API key, by the key's role (``NOTIFIER_RATE_LIMITS__SECRETARY__BURST=100``).
    The bootstrap admin token (``NOTIFIER_ADMIN_TOKEN``) is an operator's, and is not limited."""

    # Services relay receipts and sends for whole organisations: they get room for bursts.
    admin: RoleLimit = RoleLimit(per_second=200, burst=2000)
    service: RoleLimit = RoleLimit(per_second=1000, burst=5000)
    secretary: RoleLimit = RoleLimit(per_second=10, burst=100)
    member: RoleLimit = RoleLimit(per_second=2, burst=30)

    def by_role(self) -> dict[str, RoleLimit]:
        return {
            "admin": self.admin,
            "service": self.service,
            "secretary": self.secretary,
            "member": self.member,
        }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", env_nested_delimiter="__", extra="ignore")

    # Servers. Empty URLs mean "start the embedded servers" (dev / tests only).
    database_url: str = ""
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # how members' phones reach us, for links; defaults to http://host:port
    data_dir: str = ".notifier"
    db_pool_min: int = 2
    db_pool_max: int = 10

    # Security.
    admin_token: SecretStr | None = None
    webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    allow_private_targets: bool = False  # webhook URLs on loopback / private networks
    idempotency_ttl_seconds: int = 24 * 3600
    provider_event_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)  # parked provider reports

    # HTTP limits (the API): a request head must arrive within ``http_keepalive_seconds`` of the
    # connection opening (or of the previous response), which is also how long an idle keep-alive
    # connection is kept; a body must arrive within ``http_body_timeout_seconds``.
    http_keepalive_seconds: float = Field(default=15.0, gt=0)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)
    http_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # a 10,000-member batch fits
    http_max_line_size: int = Field(default=8190, ge=256)  # request line and each header line
    http_max_field_size: int = Field(default=8190, ge=256)  # one header's value
    http_max_headers: int = Field(default=64, ge=8)
    # POST /v1/imports/dingtalk runs inside the request: fetching DingTalk's organisation must end
    # within this, or the request is a 504 with nothing written (`notifier import dingtalk`, with
    # its progress, is for organisations too large for one request).
    import_request_timeout_seconds: float = Field(default=120.0, gt=0)

    rate_limits: RateLimits = Field(default_factory=RateLimits)

    # Browsers: origins allowed to call the API cross-origin (CORS); none by default. Exact
    # origins ("https://console.example.org"), never a wildcard.
    cors_origins: list[str] = Field(default_factory=list)

    # Observability. Logs: one JSON object per line, or text for a terminal.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_requests: bool = True  # one access line per API request (method, route template, status, time)
    # GET /metrics on the API answers this bearer token (Prometheus' ``authorization``), as well as
    # an admin's; unset: an admin's only.
    metrics_token: SecretStr | None = None
    # A worker process serves its own /metrics here (0: not at all); Prometheus scrapes every worker
    # and sums (per-process ports, not multiprocess mode). Same token as the API's.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # Engine.
    queue_name: str = "notifier:queue"
    worker_max_jobs: int = 64
    worker_poll_delay: float = Field(default=0.02, le=0.05)
    fanout_chunk_size: int = Field(default=50_000, ge=100)
    # A notice with more than one chunk's audience fans out the rest in this many parts at once
    # (disjoint, each its own job and PostgreSQL backend: notifier/workers/fanout.py); 1: serially.
    fanout_parts: int = Field(default=2, ge=1, le=64)
    # With parts, the first chunk (run alone, before the split) is at most this big: a notice
    # that fits is done in it, a bigger one is split early.
    fanout_first_chunk_size: int = Field(default=5_000, ge=100)
    delivery_batch_size: int = Field(default=500, ge=1)
    delivery_parallel_jobs: int = Field(default=8, ge=1)
    delivery_concurrency: int = Field(default=256, ge=1)  # in-flight sends per worker process
    # The worker processes' event loop: uvloop (libuv) spends less CPU per HTTP request and per
    # database round trip than asyncio's own; "asyncio" where uvloop is not installed or wanted.
    worker_event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # The API's (``notifier serve`` and ``notifier dev``), for the same reason: a read receipt
    # costs less of the API process's CPU on it (benchmarks/receipts.py).
    api_event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Single read receipts, and API keys' lookups, arriving together are made by one statement
    # (api/group_commit.py): at most this many such flushes of each at once per API process, each
    # on a connection of its own (one more only while a full group waits, or items waited 50 ms).
    group_commit_flushes: int = Field(default=2, ge=1, le=16)
    # Worker processes run at this niceness, and so do their backends of a PostgreSQL on this
    # host: a big fan-out does not make read receipts and status reads wait (workers/priority.py).
    # 0 keeps the priority they were started with.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # A crashed worker's batch is handed back after this long. A live worker renews it every third
    # of it while the batch is in flight, and retries a failed write-back for as long as it holds.
    delivery_lease_seconds: float = 180.0
    delivery_idle_wait_seconds: float = Field(default=2.0, ge=0)  # a job waits this long for held rows
    reconcile_interval_seconds: int = Field(default=2, ge=1, le=30)
    reconcile_stall_seconds: float = 3.0
    # Escalation: a key that is not an admin's cannot space steps closer than this (a policy's
    # first step counts from the send, a new round from the last step) ...
    escalation_min_step_seconds: float = Field(default=60.0, ge=0)
    # ... and no notice's escalation makes more than this many sends (reminders plus summary
    # deliveries); at the ceiling it stops, with an ``escalation_ceiling_reached`` event.
    escalation_max_sends: int = Field(default=100_000, ge=0)
    # A step reminds at most this many unread per transaction (the rows it locks are held until
    # its commit, so a read of one of them waits at most one chunk); the rest follow at once.
    escalation_chunk_size: int = Field(default=5_000, ge=1)
    # A step with more unread than one chunk reminds them in this many parts at once (ranges of
    # member ids, each its own job and PostgreSQL backend: workers/escalation_parts.py), each in
    # chunks of escalation_chunk_size / escalation_parts (a read still waits for one chunk's rows
    # at most); 1: serially.
    escalation_parts: int = Field(default=2, ge=1, le=64)

    # Live streams (GET /v1/notices/{id}/stream): the API process polls the counters of watched
    # notices this often (a worker's hint polls one early), never one notice more often than
    # ``stream_min_interval_seconds`` (so at most 4 events a second); a comment keeps idle streams open.
    stream_poll_seconds: float = Field(default=1.0, gt=0)
    stream_min_interval_seconds: float = Field(default=0.25, ge=0)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # A stream ends after this long and the client reconnects (EventSource does, with Last-Event-ID:
    # nothing is sent twice), so a revoked key or a caller moved out of the unit stops seeing it.
    stream_max_seconds: float = Field(default=600.0, gt=0)

    # Channels.
    webhook_timeout_seconds: float = 10.0
    # Bounds every request to a push or phone provider (FCM, JPush, SMS, voice); unset: each
    # channel's own bound (10 s, SMS and voice 15 s). A provider that accepts and never answers
    # costs this long per send, and its breaker opens after ``breaker_threshold`` such batches.
    provider_timeout_seconds: float | None = Field(default=None, gt=0)
    webhook_max_attempts: int = 6
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    breaker_threshold: int = 5  # consecutive failed batches that open a provider's circuit
    breaker_base_seconds: float = 5.0  # first cool-down; doubles on each reopening
    breaker_max_seconds: float = 300.0

    # Phone channels: a channel is registered when its provider is configured.
    webpush: WebPushSettings = Field(default_factory=WebPushSettings)
    fcm: FcmSettings = Field(default_factory=FcmSettings)
    apns: ApnsSettings = Field(default_factory=ApnsSettings)
    jpush: JPushSettings = Field(default_factory=JPushSettings)
    dingtalk: DingTalkSettings = Field(default_factory=DingTalkSettings)
    twilio: TwilioSettings = Field(default_factory=TwilioSettings)
    aliyun: AliyunSettings = Field(default_factory=AliyunSettings)
    sms_provider: str = ""  # "aliyun" | "twilio" | "" (no sms channel)
    voice_provider: str = ""  # "aliyun" | "twilio" | "" (no voice channel)
    sms_rate_per_second: float = 100.0  # per provider account, shared by all workers
    voice_rate_per_second: float = 10.0
    sms_per_phone_limit: int = 5  # at most this many SMS to one number ...
    sms_per_phone_window_seconds: float = 900.0  # ... per this window (GoAlert-style)
    voice_per_phone_limit: int = 3  # at most this many calls to one number ...
    voice_per_phone_window_seconds: float = 900.0  # ... per this window
    push_max_attempts: int = 8
    link_secret: SecretStr = SecretStr(DEV_LINK_SECRET)  # signs read links and provider report URLs
    # Rotation: set ``*_previous`` to the value being replaced and the new one in its place. New
    # links, report URLs and echoed ids are signed with the new link secret, and the previous one
    # still verifies (a link already in an SMS works until it expires: keep the previous for
    # ``link_ttl_seconds``); outgoing webhooks carry a signature under each webhook secret (Standard
    # Webhooks: space-separated), so receivers switch keys whenever they like. Unset it afterwards.
    link_secret_previous: SecretStr | None = None
    webhook_secret_previous: SecretStr | None = None
    link_ttl_seconds: int = 7 * 24 * 3600

    # The web console and member pages (notifier/console/).
    console_link_ttl_seconds: int = Field(default=15 * 60, ge=10)  # one-time sign-in links
    console_idle_seconds: int = Field(default=30 * 60, ge=10)  # a session unused this long ends
    console_session_seconds: int = Field(default=12 * 3600, ge=60)  # and ends this long after sign-in

    # Meeting check-ins (POST /v1/meetings/{id}/checkins): a member may retry a refused check-in
    # within the window, at most this many attempts a minute and this many per meeting in all.
    checkin_attempts_per_minute: int = Field(default=6, ge=1)
    checkin_attempts_max: int = Field(default=30, ge=1)

    def production_problems(self) -> list[str]:
        """What makes these settings unsafe outside development (empty when fine)."""
        problems = []
        if self.webhook_secret.get_secret_value() == DEV_WEBHOOK_SECRET:
            problems.append("NOTIFIER_WEBHOOK_SECRET is the public development value")
        if DEV_WEBHOOK_SECRET in self.webhook_secrets()[1:]:
            problems.append("NOTIFIER_WEBHOOK_SECRET_PREVIOUS is the public development value")
        if DEV_LINK_SECRET in self.link_secrets()[1:]:
            problems.append("NOTIFIER_LINK_SECRET_PREVIOUS is the public development value")
        if self.link_secret.get_secret_value() == DEV_LINK_SECRET:
            problems.append("NOTIFIER_LINK_SECRET is the public development value")
        if len(self.link_secret.get_secret_value()) < 16:
            problems.append("NOTIFIER_LINK_SECRET must be at least 16 characters")
        if not self.public_url:
            problems.append("NOTIFIER_PUBLIC_URL is not set (read links and provider callbacks need it)")
        return problems

    def link_secrets(self) -> tuple[str, ...]:
        """The link secret, then the previous one while a rotation lasts: sign with the first,
        accept any."""
        return _rotating(self.link_secret, self.link_secret_previous)

    def link_keys(self) -> tuple[bytes, ...]:
        return tuple(s.encode() for s in self.link_secrets())

    def webhook_secrets(self) -> tuple[str, ...]:
        """The webhook signing secret, then the previous one while a rotation lasts."""
        return _rotating(self.webhook_secret, self.webhook_secret_previous)

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def _rotating(current: SecretStr, previous: SecretStr | None) -> tuple[str, ...]:
    now = current.get_secret_value()
    old = previous.get_secret_value() if previous is not None else ""
    return (now, old) if old and old != now else (now,)
