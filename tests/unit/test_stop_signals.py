"""kcm.stop_signals: a second SIGTERM (or a SIGINT after it) while a process stops is logged,
not another reactor.stop (which raised ReactorNotRunning, a critical traceback)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from kcm.stop_signals import guard_stop_signals


class Reactor:
    """What the guard wraps: the reactor's own handlers (bound methods of it)."""

    def __init__(self) -> None:
        self.stops: list[int] = []

    def sigTerm(self, number: int, frame: object = None) -> None:  # noqa: N802 (Twisted's)
        self.stops.append(number)

    def sigInt(self, number: int, frame: object = None) -> None:  # noqa: N802 (Twisted's)
        self.stops.append(number)


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_only_the_first_stop_signal_reaches_the_reactor(handlers: None) -> None:
    reactor = Reactor()
    signal.signal(signal.SIGTERM, reactor.sigTerm)
    signal.signal(signal.SIGINT, reactor.sigInt)
    guard_stop_signals(reactor)
    for number in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
        os.kill(os.getpid(), number)
    assert reactor.stops == [signal.SIGTERM]


def test_a_handler_not_the_reactors_is_left_alone(handlers: None) -> None:
    seen: list[int] = []

    def own(number: int, frame: object) -> None:  # (a gateway supervisor's)
        seen.append(number)

    signal.signal(signal.SIGTERM, own)
    guard_stop_signals(Reactor())
    assert signal.getsignal(signal.SIGTERM) is own
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM, signal.SIGTERM]
