"""Configuration, read from ``NOTIFIER_*`` environment variables.

A ``Settings`` object is built once in ``__main__`` (or by a test) and passed down explicitly;
nothing reads the environment at import time.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

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
    webhook_secret: SecretStr = SecretStr("whsec_" + "bm90aWZpZXItZGV2LXdlYmhvb2stc2VjcmV0")
    allow_private_targets: bool = False  # webhook URLs on loopback / private networks
    idempotency_ttl_seconds: int = 24 * 3600

    # Engine.
    queue_name: str = "notifier:queue"
    worker_max_jobs: int = 64
    worker_poll_delay: float = Field(default=0.02, le=0.05)
    fanout_chunk_size: int = Field(default=50_000, ge=100)
    delivery_batch_size: int = Field(default=500, ge=1)
    delivery_parallel_jobs: int = Field(default=8, ge=1)
    delivery_concurrency: int = Field(default=256, ge=1)  # in-flight sends per worker process
    delivery_lease_seconds: float = 60.0
    reconcile_interval_seconds: int = Field(default=2, ge=1, le=30)
    reconcile_stall_seconds: float = 3.0

    # Channels.
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = 6
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
