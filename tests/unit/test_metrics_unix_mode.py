"""The metrics listener on a Unix socket is its owner's alone unless the endpoint names a
mode: it answers without authentication (docs/operations.md, "Metrics and health")."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import reactor

from kcm.metrics import Readiness
from kcm.metrics_http import metrics_listener, metrics_site, private_unix


def test_a_unix_endpoint_without_a_mode_gets_0600() -> None:
    assert private_unix("unix:/run/kcm/metrics.sock") == "unix:/run/kcm/metrics.sock:mode=600"
    assert private_unix("unix:/run/kcm/metrics.sock:lockfile=1") == \
        "unix:/run/kcm/metrics.sock:lockfile=1:mode=600"


def test_a_mode_given_and_other_endpoints_are_left_as_they_are() -> None:
    assert private_unix("unix:/run/m.sock:mode=660") == "unix:/run/m.sock:mode=660"
    assert private_unix("tcp:9696:interface=127.0.0.1") == "tcp:9696:interface=127.0.0.1"
    # A path with an escaped colon and "mode=" in it names no mode.
    assert private_unix(r"unix:/tmp/a\:mode=1.sock") == r"unix:/tmp/a\:mode=1.sock:mode=600"


@pytest_twisted.inlineCallbacks
def test_the_socket_made_is_the_owners_alone(tmp_path: Path):
    path = tmp_path / "metrics.sock"
    old = os.umask(0o022)
    try:
        site = metrics_site(registry=CollectorRegistry(), ready=lambda: Readiness(True))
        service = metrics_listener(reactor, f"unix:{path}", site)
        service.startService()
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        finally:
            yield service.stopService()
    finally:
        os.umask(old)
