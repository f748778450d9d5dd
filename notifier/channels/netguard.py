"""Outbound address policy against SSRF: refuse loopback, private, link-local and other
non-public addresses unless the operator allows them (tests and ``make run`` do)."""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class BlockedAddress(OSError):
    pass


NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
SITE_LOCAL = ipaddress.ip_network("fec0::/10")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address are judged by that address.
        if ip.ipv4_mapped is not None:
            return is_public(str(ip.ipv4_mapped))
        if ip.sixtofour is not None:
            return is_public(str(ip.sixtofour))
        if ip in NAT64:
            return is_public(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip in NAT64_LOCAL or ip in SITE_LOCAL or ip in IPV4_COMPATIBLE:
            return False
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
