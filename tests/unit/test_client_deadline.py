"""The blocking client's ``timeout`` bounds a whole call, on real sockets on 127.0.0.1:
endpoints that take TCP connections and never answer, or that finish the TLS handshake and
never answer a request, cost a call at most its timeout however many of them it tries, and
a good endpoint after a hung one still answers within it. Waiting for another thread's
request on the session's connection counts too."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kcm.client import KmipClientError, Session
from kcm.pki import PkiPaths, init_pki
from tests.hung_listener import HungListener
from tests.unit.test_client_answers_in_step import Server, versions_of

#: Allowed beyond a call's timeout: thread switches, a loaded machine.
SLACK = 0.4


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def hung() -> Iterator[Callable[[], int]]:
    listeners: list[HungListener] = []

    def make() -> int:
        listeners.append(HungListener())
        return listeners[-1].port

    yield make
    for listener in listeners:
        listener.close()


def silent_server(pki: PkiPaths) -> Server:
    """Finishes the TLS handshake, reads requests, answers none."""
    return Server(pki, lambda request, n: None)


def good_server(pki: PkiPaths) -> Server:
    return Server(pki, lambda request, n: versions_of(request))


def session(pki: PkiPaths, ports: list[int], **options: Any) -> Session:
    return Session.connect([f"127.0.0.1:{port}" for port in ports], cert=str(pki.app.cert),
                           key=str(pki.app.key), ca=str(pki.ca.cert), **options)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()``'s result (or the exception it raised) and the seconds it took."""
    started = time.monotonic()
    try:
        result = call()
    except Exception as e:  # noqa: BLE001 - returned to the test
        result = e
    return result, time.monotonic() - started


def test_a_call_to_endpoints_that_never_answer_the_handshake_fails_within_its_timeout(
        pki: PkiPaths, hung: Callable[[], int]) -> None:
    client = session(pki, [hung(), hung(), hung()], timeout=1.0)
    result, took = timed(client.discover_versions)
    assert isinstance(result, KmipClientError), result
    assert took < 1.0 + SLACK  # it took 3 s: one timeout for each endpoint's handshake
    client.close()


def test_a_hung_endpoint_then_a_good_one_answers_within_the_timeout(
        pki: PkiPaths, hung: Callable[[], int]) -> None:
    good = good_server(pki)
    # Each connection attempt gets at most timeout / 2 here: the hung endpoint leaves the
    # good one time to answer.
    client = session(pki, [hung(), good.port], timeout=2.0)
    result, took = timed(client.discover_versions)
    assert result == [(1, 4)]
    assert 1.0 - 0.05 <= took < 1.0 + SLACK
    assert timed(client.discover_versions)[1] < SLACK  # and the good one comes first now
    client.close()
    fast = session(pki, [hung(), good.port], timeout=5.0, connect_timeout=0.3)
    result, took = timed(fast.discover_versions)
    assert result == [(1, 4)] and took < 0.3 + SLACK
    fast.close()
    good.close()


def test_a_repeatable_call_to_servers_that_never_answer_it_fails_within_its_timeout(
        pki: PkiPaths) -> None:
    servers = [silent_server(pki), silent_server(pki)]
    client = session(pki, [server.port for server in servers], timeout=1.0)
    result, took = timed(client.discover_versions)  # sent again once, to the second
    assert isinstance(result, KmipClientError), result
    assert "within 1 s" in str(result)
    assert took < 1.0 + SLACK  # it took 2 s: one timeout for the request, one for its resend
    assert servers[0].requests == 1
    client.close()
    for server in servers:
        server.close()


def test_waiting_for_another_threads_request_counts_against_the_timeout(
        pki: PkiPaths) -> None:
    server = silent_server(pki)
    client = session(pki, [server.port], timeout=1.0)
    took: list[float] = []
    results: list[Any] = []

    def call() -> None:
        result, seconds = timed(client.discover_versions)
        results.append(result)
        took.append(seconds)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert all(isinstance(result, KmipClientError) for result in results), results
    assert len(took) == 2 and max(took) < 1.0 + SLACK  # the second waited 1 s, then 1 s
    client.close()
    server.close()


class FullBacklog:
    """A TCP listener whose accept queue is full: a further connection's SYN goes
    unanswered, so ``connect`` hangs (a host that drops packets)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.queued = socket.create_connection(("127.0.0.1", self.port))

    def close(self) -> None:
        self.queued.close()
        self.listener.close()


def test_a_name_of_several_addresses_that_drop_connections_costs_one_timeout(
        pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolves to several addresses (dual-stack, round-robin DNS), none
    answering TCP: the attempts share what is left of the call, as the endpoints do."""
    dropping = FullBacklog()
    real = socket.getaddrinfo

    def three_addresses(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "several.test":
            return real("127.0.0.1", *args, **kwargs)[:1] * 3
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", three_addresses)
    client = Session.connect(f"several.test:{dropping.port}", cert=str(pki.app.cert),
                             key=str(pki.app.key), ca=str(pki.ca.cert), timeout=1.0)
    result, took = timed(client.discover_versions)
    assert isinstance(result, KmipClientError), result
    assert took < 1.0 + SLACK  # it took 3 s: the call's time for each address
    client.close()
    dropping.close()
