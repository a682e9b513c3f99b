"""A stop asked twice is asked once: the reactor's SIGTERM and SIGINT handlers, guarded.

Twisted's handlers call ``reactor.stop`` from the reactor's thread at each signal; a second
SIGTERM while a KCM process drains its clients (systemd's, an operator's impatient one)
then raised ``ReactorNotRunning`` there, logged as a critical traceback. The guard passes
the first of them on (Twisted's handler logs it and keeps the signal for twistd's exit
status) and logs the later ones in one line each: the stop under way goes on, bounded as it
is (``drain_timeout``). Only the reactor's own handlers are guarded: a gateway supervisor
installs its own.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.logger import Logger

__all__ = ["guard_stop_signals"]

log = Logger()

_STOPPING = (signal.SIGTERM, signal.SIGINT)


def guard_stop_signals(reactor: Any) -> None:
    """Guard the reactor's SIGTERM and SIGINT handlers (call once it runs: it installs them
    as it starts)."""
    asked: list[int] = []
    for number in _STOPPING:
        handler = signal.getsignal(number)
        if getattr(handler, "__self__", None) is not reactor:
            continue

        def once(signum: int, frame: FrameType | None, _handler: Any = handler) -> None:
            if asked:
                log.info("{signal} while stopping (after {first}): the stop goes on",
                         signal=signal.Signals(signum).name,
                         first=signal.Signals(asked[0]).name)
                return
            asked.append(signum)
            _handler(signum, frame)

        signal.signal(number, once)
