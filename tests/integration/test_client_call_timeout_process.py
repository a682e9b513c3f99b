"""The Twisted client's ``timeout`` bounds a whole call against a real kcm-core: a first
address that black-holes (a listening socket that takes TCP connections and never answers
TLS) before the core costs the call its share of ``timeout``, not the call; a call to
black holes alone fails at ``timeout``, not at ``timeout`` per address."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import pytest_twisted

from kcm.client import KmipClientError
from kcm.testing.processes import CoreProcess, deploy
from tests.hung_listener import HungListener

#: Allowed beyond a call's timeout: a loaded machine.
SLACK = 0.5


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    root = tmp_path_factory.mktemp("call-timeout")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    core.start()
    try:
        yield core
    finally:
        core.stop()


@pytest.fixture
def black_holes() -> Iterator[list[HungListener]]:
    holes = [HungListener() for _ in range(3)]
    yield holes
    for hole in holes:
        hole.close()


def client(core: CoreProcess, ports: list[int], timeout: float):
    from twisted.internet import reactor

    from kcm.client.pool import KmipClient

    return KmipClient.tls(reactor, [f"127.0.0.1:{port}" for port in ports],
                          cert=str(core.pki.app.cert), key=str(core.pki.app.key),
                          ca=str(core.pki.ca.cert), timeout=timeout)


@pytest_twisted.ensureDeferred
async def test_a_black_hole_then_the_core_answers_within_the_timeout(
        core: CoreProcess, black_holes: list[HungListener]) -> None:
    pool = client(core, [black_holes[0].port, core.port], timeout=2.0)
    try:
        started = time.monotonic()
        versions = await pool.discover_versions()  # the black hole: 1 s, half the call
        took = time.monotonic() - started
        assert (1, 4) in versions and pool.endpoint.port == core.port
        assert 1.0 - 0.05 <= took < 1.0 + SLACK
        started = time.monotonic()
        await pool.discover_versions()  # the core is the preferred endpoint now
        assert time.monotonic() - started < SLACK
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_a_call_to_black_holes_alone_fails_at_its_timeout(
        core: CoreProcess, black_holes: list[HungListener]) -> None:
    pool = client(core, [hole.port for hole in black_holes], timeout=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(KmipClientError, match="no answer within 1.5 s"):
            await pool.discover_versions()
        took = time.monotonic() - started
        # Per address, as it was: 1.5 s each, and as much again for the resend (9 s).
        assert 1.5 - 0.05 <= took < 1.5 + SLACK
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_a_create_on_a_core_that_answers_is_unhurt_by_the_deadline(
        core: CoreProcess) -> None:
    pool = client(core, [core.port], timeout=5.0)
    try:
        uid = await pool.create()
        assert (await pool.get(uid)).unique_identifier == uid
    finally:
        await pool.close()

