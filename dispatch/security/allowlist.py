"""Source-address allow-lists (SPEC §11): every listener asks :func:`is_allowed` per peer."""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

from dispatch.config.types import Cidr, IPNetwork, parse_cidrs

VERDICTS_KEPT: Final = 4096  # verdicts remembered (an address against a list)


@functools.lru_cache(maxsize=16)
def _networks(cidrs: tuple[Cidr, ...]) -> tuple[IPNetwork, ...]:
    # Keyed by the configured tuple: a SIGHUP that changes the list gets a fresh parse.
    return parse_cidrs(cidrs)


def is_allowed(peer_ip: str, cidrs: tuple[Cidr, ...]) -> bool:
    """Whether ``peer_ip`` is inside one of ``cidrs``; an empty list allows everyone."""
    return not cidrs or _verdict(peer_ip, cidrs)


@functools.lru_cache(maxsize=VERDICTS_KEPT)
def _verdict(peer_ip: str, cidrs: tuple[Cidr, ...]) -> bool:
    # Kept per address and list: a client that connects again (a pool, a script per
    # message) is not parsed again. Bounded, so many addresses only push out old verdicts.
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False  # not an IP peer (e.g. a Unix socket): never allowed by a CIDR list
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(cidrs))
