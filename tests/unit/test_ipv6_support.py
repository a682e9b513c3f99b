"""tests.ipv6: no IPv6 loopback skips the IPv6 tests, and fails them under CI."""

from __future__ import annotations

import socket

import pytest

from tests.ipv6 import require_ipv6_loopback


class NoIPv6Socket:
    def __init__(self, *args: object) -> None:
        raise OSError(97, "Address family not supported by protocol")


def test_without_ipv6_the_tests_skip_and_fail_under_ci(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr(socket, "socket", NoIPv6Socket)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no IPv6 loopback"):
        require_ipv6_loopback()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: no IPv6 loopback"):
        require_ipv6_loopback()


def test_this_machine_has_one() -> None:
    require_ipv6_loopback()  # (this machine and CI have ::1)
