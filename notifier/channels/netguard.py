"""Outbound address policy against SSRF: refuse loopback, private, link-local and other
non-public addresses unless the operator allows them (tests and ``make run`` do)."""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class BlockedAddress(OSError):
    pass


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_literal(host: str, allow_private: bool) -> None:
    """Raise ``BlockedAddress`` when ``host`` is an IP literal we may not reach."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a name: checked after resolution by GuardedResolver
    if not allow_private and not is_public(host.strip("[]")):
        raise BlockedAddress(f"{host} is not a public address")


class GuardedResolver(AbstractResolver):
    """Resolves names, then drops every address the policy forbids."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        allowed = [r for r in results if is_public(r["host"])]
        if not allowed:
            raise BlockedAddress(f"{host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
