"""Which addresses a URL chosen by someone else may make the plugin fetch.

The Google backend can read the pages of its search results (``google.snippet_only: false``). A
result's link, and every redirect it answers with, is chosen by whoever wrote the page; fetched
blindly, it would make a rollout worker read its own loopback services, the cluster's private
network or a cloud metadata service (169.254.169.254 and its kin hand out credentials). So only
global unicast addresses are fetched, unless ``google.allow_private_pages`` says otherwise:

* ``host_problem`` resolves a URL's host (an IP literal or a name) and refuses it when any of its
  addresses is not public: checked before every request, redirects included;
* ``PublicOnlyResolver`` keeps only public addresses when aiohttp resolves a name to connect, so a
  name that resolves differently a moment later (DNS rebinding) still cannot reach a private one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver


# IPv6 addresses that carry an IPv4 one. NAT64's well-known prefix (RFC 6052) is how an IPv6-only
# network reaches IPv4 sites (DNS64 answers 64:ff9b::a.b.c.d), so it is judged by the IPv4 address
# it carries. The local-use NAT64 prefix (RFC 8215) leads into the operator's own network, and the
# 6to4 (RFC 3056, deprecated by RFC 7526) and Teredo (RFC 4380) tunnels carry an IPv4 address too:
# none of these is fetched. Python's ``is_global`` counts some of them global (3.11 all but Teredo).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")  # RFC 4291, 2.4: all the rest is special
_IPV6_TUNNELS = (ipaddress.ip_network("2002::/16"), ipaddress.ip_network("2001::/32"))  # 6to4, Teredo


def address_allowed(address: str) -> bool:
    """Whether ``address`` is a global unicast address: not loopback, private, link-local (metadata
    services), shared (100.64/10, another metadata range), reserved, multicast or unspecified, nor
    an IPv6 address that carries an IPv4 address that is any of these (see above)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scoped IPv6 address carries %zone
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip not in _IPV6_GLOBAL_UNICAST or any(ip in tunnel for tunnel in _IPV6_TUNNELS):
            return False
    return ip.is_global and not ip.is_multicast


async def host_problem(host: str, port: int | None) -> str | None:
    """Why ``host`` may not be fetched (it cannot be resolved, or an address of it is not public);
    None when it may."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"{host} cannot be resolved ({exc})"
    refused = sorted({info[4][0] for info in infos if not address_allowed(info[4][0])})
    return f"{host} resolves to non-public address(es) {', '.join(refused)}" if refused else None


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver with the addresses that are not public left out."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
        results = [result for result in await self._resolver.resolve(host, port, family) if address_allowed(result["host"])]
        if not results:
            raise OSError(f"{host} has no public address")
        return results

    async def close(self) -> None:
        await self._resolver.close()
