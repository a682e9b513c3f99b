"""How a peer is named (kcm.peer_address): IPv6 in brackets before the port, IPv4-mapped
addresses as IPv4."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from kcm.peer_address import address_group, peer_host, peer_label


@pytest.mark.parametrize(("address", "host", "label"), [
    (IPv4Address("TCP", "192.0.2.7", 40112), "192.0.2.7", "192.0.2.7:40112"),
    (IPv6Address("TCP", "::1", 40112), "::1", "[::1]:40112"),
    (IPv6Address("TCP", "2001:db8::1", 443), "2001:db8::1", "[2001:db8::1]:443"),
    # (a dual-stack listener's IPv4 client: named as on an IPv4 listener)
    (IPv6Address("TCP", "::ffff:192.0.2.7", 40112), "192.0.2.7", "192.0.2.7:40112"),
    (IPv6Address("TCP", "::FFFF:C000:0207", 1), "192.0.2.7", "192.0.2.7:1"),
    (IPv6Address("TCP", "::ffff:0:1:2", 1), "::ffff:0:1:2", "[::ffff:0:1:2]:1"),
])
def test_ip_peers(address: object, host: str, label: str) -> None:
    assert peer_host(address) == host
    assert peer_label(address) == label


def test_a_peer_without_a_host_is_named_as_before() -> None:
    address = UNIXAddress(None)
    assert peer_host(address) == str(address)
    assert peer_label(address) == f"{address}:"
    assert peer_label("?") == "?:"


def test_an_address_without_a_host_string_is_named_by_itself_brackets_or_not() -> None:
    """Only an IP host is bracketed: an address of another kind is named as it prints,
    colons and all; a host that is not a string is not taken for one."""
    unix = UNIXAddress(b"/run/kcm:core.sock")
    assert peer_host(unix) == str(unix)
    assert peer_label(unix) == f"{unix}:"

    class OddAddress:
        host = b"::ffff:192.0.2.7"
        port = 1

        def __str__(self) -> str:
            return "odd"

    assert peer_host(OddAddress()) == "odd"
    assert peer_label(OddAddress()) == "odd:1"


@pytest.mark.parametrize(("host", "prefix", "group"), [
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2::7", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:3::7", 64, "2001:db8:1:3::/64"),
    ("2001:db8:1:2::7", 56, "2001:db8:1::/56"),
    ("2001:db8:1:2ff::7", 56, "2001:db8:1:200::/56"),
    ("2001:db8:1:2::7", 32, "2001:db8::/32"),
    ("2001:db8:1:2::7", 128, "2001:db8:1:2::7"),  # (the default: the address itself)
    ("::1", 64, "::/64"),
    # Link-local: by its network within its zone (the interface: two links, two groups;
    # one host may take any number of addresses of its link). (Both were fe80::/64.)
    ("fe80::1%eth0", 64, "fe80::/64%eth0"),
    ("fe80::1%eth1", 64, "fe80::/64%eth1"),
    ("fe80::2%eth0", 32, "fe80::/32%eth0"),
    ("fe80::1", 64, "fe80::/64"),
    ("fe80::1%eth0", 128, "fe80::1%eth0"),  # (the default: the address itself)
    # IPv4, and an IPv4 client of a dual-stack listener (peer_host named it by its IPv4
    # address), are counted by the address whatever the IPv6 prefix.
    ("192.0.2.7", 64, "192.0.2.7"),
    ("192.0.2.7", 32, "192.0.2.7"),
    ("not an address", 64, "not an address"),
    ("UNIXAddress('/run/a:b')", 64, "UNIXAddress('/run/a:b')"),  # (a colon, not IPv6)
])
def test_address_groups(host: str, prefix: int, group: str) -> None:
    assert address_group(host, prefix) == group


def test_a_mapped_ipv4_peer_is_grouped_by_its_ipv4_address() -> None:
    host = peer_host(IPv6Address("TCP", "::ffff:192.0.2.7", 1))
    assert address_group(host, 64) == "192.0.2.7"
