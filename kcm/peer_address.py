"""How a connection's peer is named in logs, audit records and per-address limits.

An IPv6 address is written in brackets before its port (``[2001:db8::7]:40112``, RFC 3986),
so that the port cannot be read as the address's last group; an IPv4 client that reached a
dual-stack IPv6 listener (``tcp6:5696``, which takes IPv4 connections too) is named by its
IPv4 address, not the mapped form ``::ffff:192.0.2.7``, as it would be on an IPv4 listener
(its connections count towards the same per-address limit under one name).

The per-address limit may count IPv6 clients by a network instead (:func:`address_group`,
``limits.ipv6_address_prefix``): a host given a /64 has 2^64 addresses to open connections
from.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = ["address_group", "peer_host", "peer_label"]


def peer_host(address: Any) -> str:
    """The host of a Twisted address (``transport.getPeer()``): an IP address, an IPv4-mapped
    IPv6 address as the IPv4 one; the address itself for one without a host (Unix)."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return str(address)
    if host[:7].lower() == "::ffff:":
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            mapped = None
        if mapped is not None:
            return str(mapped)
    return host


def peer_label(address: Any) -> str:
    """``HOST:PORT`` of a Twisted address, ``[V6]:PORT`` for IPv6 (see the module)."""
    host = peer_host(address)
    port = getattr(address, "port", "")
    if ":" in host and isinstance(getattr(address, "host", None), str):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def address_group(host: str, ipv6_prefix: int = 128) -> str:
    """The name a per-address limit counts ``host`` (a :func:`peer_host`) under: an IPv6
    address by its network of ``ipv6_prefix`` bits (``2001:db8:1:2::/64``; 128: the
    address itself); an IPv4 address (an IPv4-mapped one is one already), and anything
    that is not an IPv6 address, as it is.

    An address with a zone (a link-local one, ``fe80::1%eth0``: the interface it came in
    on) is counted by its network within that zone (``fe80::/64%eth0``): ``fe80::1%eth0``
    and ``fe80::1%eth1`` are on two links, and a host may take any number of addresses of
    its own link (as of its global /64 under SLAAC), so one host's neighbours share its
    count rather than it escape the cap."""
    if ipv6_prefix >= 128 or ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host)
        network = ipaddress.IPv6Network((int(address), ipv6_prefix), strict=False)
    except ValueError:
        return host
    return f"{network}%{address.scope_id}" if address.scope_id else str(network)
