"""Rate limits per API key: a token bucket per key in PostgreSQL (``rate_buckets``, shared by every
API process), taken from by the key lookup itself (db/api_keys.py ``AUTHENTICATE`` composes
db/throttle.py ``API_BUCKET_TAKE``), so a request costs no extra round trip. Limits are per role
(``Settings.rate_limits``). A request with no token left is ``429`` problem+json with
``Retry-After``; every answer to a key carries the IETF draft headers ``RateLimit-Limit`` (the
burst), ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until the bucket is full again),
set by api/middleware.py ``add_headers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

from notifier.api.problems import Problem
from notifier.db.pool import Record
from notifier.settings import RoleLimit


@dataclass(frozen=True, slots=True)
class RateState:
    limit: int
    remaining: int
    reset: int  # seconds until the bucket is full
    retry_after: int  # seconds until the next token (0: one is there)

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }


RATE_STATE: web.RequestKey[RateState] = web.RequestKey("rate_state", RateState)


def state(row: Record, limit: RoleLimit) -> RateState:
    tokens = max(0.0, float(row["tokens_left"]))
    return RateState(
        limit=int(limit.burst),
        remaining=int(tokens),
        reset=math.ceil(max(0.0, limit.burst - tokens) / limit.per_second),
        retry_after=0 if row["allowed"] else max(1, math.ceil((1 - tokens) / limit.per_second)),
    )


def too_many_requests(rate: RateState) -> Problem:
    return Problem(
        429,
        "Too Many Requests",
        f"this key may send {rate.limit} requests at once; retry after {rate.retry_after} seconds",
        type_="rate-limited",
        headers={"Retry-After": str(rate.retry_after)},
    )
