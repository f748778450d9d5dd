"""Who is calling, and what they may see.

Principals: the bootstrap admin token (setting), and API keys (hashed in ``api_keys``):
``admin`` sees everything; ``service`` and ``secretary`` keys are bound to a unit and see that
unit's subtree only (which notices they see, and how much of each: db/visibility.py); a
``member`` key sees one member's inbox and receipts. Anything outside a principal's reach
answers 404, exactly as if it did not exist. A revoked or expired key (or one issued by a key
since revoked) is 401. Each key's requests are rate-limited by the same lookup (api/ratelimit.py).
"""

from __future__ import annotations

import hmac

from aiohttp import web

from notifier.api import ratelimit
from notifier.api.group_commit import GroupCommit, Queued
from notifier.api.keys import DEPS, PRINCIPAL
from notifier.api.principal import Principal
from notifier.api.problems import Problem, forbidden, not_found
from notifier.db import api_keys, members, units
from notifier.db.pool import Connection, Pool, Record

# /metrics checks its own token (api/metrics.py).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics", "/console", "/m"})
# Authenticated by other means: provider signatures (callbacks), HMAC-signed read links, and the
# console's and member pages' own sessions (notifier/console/session.py).
PUBLIC_PREFIXES = ("/v1/providers/", "/r/", "/console/", "/m/")


class _Lookup(Queued[Record | None]):
    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token


class KeyLookups(GroupCommit[_Lookup]):
    """The API keys' lookups (with their rate buckets' takes) of concurrent requests, made by one
    statement (api/group_commit.py): one pool acquire and round trip per group, not per request."""

    name = "key lookups"

    def __init__(self, pool: Pool, limits: dict[str, tuple[float, float]], *, flushes: int) -> None:
        super().__init__(pool, flushes=flushes)
        self.limits = limits

    async def authenticate(self, token: str) -> Record | None:
        """``api_keys.authenticate`` of this token."""
        item = _Lookup(token)
        self.submit(item)
        return await item.done

    async def run(self, conn: Connection, items: list[_Lookup]) -> None:
        rows = await api_keys.authenticate_many(conn, [i.token for i in items], self.limits)
        for item, row in zip(items, rows, strict=True):
            item.settle(row)


KEY_LOOKUPS = web.AppKey("key_lookups", KeyLookups)


def unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "Unauthorized",
        detail,
        type_="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="notifier"'},
    )


def is_public(path: str) -> bool:
    """Whether a request to ``path`` needs no bearer token (it is public, or authenticated otherwise)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def authenticate(request: web.Request) -> None:
    """The caller of a non-public request, as ``request[PRINCIPAL]`` (run by the API's middleware,
    api/middleware.py): 401 without a known token, 429 when its key's bucket is empty."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("send 'Authorization: Bearer <token>'")
    token = token.strip()
    if not token.isascii() or not token.isprintable() or len(token) > 512:
        raise unauthorized("unknown or revoked token")
    deps = request.app[DEPS]
    admin = deps.settings.admin_token
    if admin is not None and hmac.compare_digest(token.encode(), admin.get_secret_value().encode()):
        principal = Principal(None, "admin")
    else:
        limits = deps.settings.rate_limits.by_role()
        row = await request.app[KEY_LOOKUPS].authenticate(token)
        if row is None:
            raise unauthorized("unknown or revoked token")
        rate = ratelimit.state(row, limits[row["role"]])
        request[ratelimit.RATE_STATE] = rate
        if not row["allowed"]:
            raise ratelimit.too_many_requests(rate)
        principal = Principal(
            str(row["id"]), row["role"], row["unit_id"], row["member_id"], row["expires_at"]
        )
    request[PRINCIPAL] = principal


async def unit_visible(conn: Connection, p: Principal, unit_id: str) -> bool:
    if p.is_admin:
        return await units.get(conn, unit_id) is not None
    root = p.scope_root
    return root is not None and await units.is_within(conn, unit_id, root)


async def require_unit(conn: Connection, p: Principal, unit_id: str) -> Record:
    row = await units.get(conn, unit_id)
    if row is None or not await unit_visible(conn, p, unit_id):
        raise not_found("unit")
    return row


async def members_visible(conn: Connection, p: Principal, member_ids: list[str]) -> set[str]:
    if p.is_admin:
        return await members.existing(conn, member_ids)
    if p.role == "member":
        return {m for m in member_ids if m == p.member_id}
    root = p.scope_root
    return set() if root is None else await members.visible(conn, member_ids, root)


async def require_member(conn: Connection, p: Principal, member_id: str) -> None:
    if member_id not in await members_visible(conn, p, [member_id]):
        raise not_found("member")


async def member_owned(conn: Connection, p: Principal, member_id: str) -> bool:
    """Whether every unit of this (visible) member is in the caller's reach: an admin owns all."""
    root = p.scope_root
    return root is None or not await members.not_owned(conn, [member_id], root)


async def require_member_owned(conn: Connection, p: Principal, member_id: str) -> None:
    """Changing a member (profile, contacts, member keys) needs every one of its units in reach:
    a member shared with another branch is that branch's too."""
    await require_member(conn, p, member_id)
    if not await member_owned(conn, p, member_id):
        raise forbidden("this member also belongs to units outside your reach; only an admin may change it")
