"""A log line written at most once per interval, however often what it reports happens:
the first at once, the others counted into the next. For what a client can make happen
as often as it likes (a refused identity, a refused caller), so that no client fills the
log."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from kcm.connection_guard import LOG_INTERVAL

__all__ = ["ThrottledLine"]

log = Logger()


class ThrottledLine:
    """A log line written at most once per ``interval`` seconds: the first at once, the
    others counted into the next (``{count}``: how many it stands for, itself included;
    ``{interval}``), written when the interval ends; by ``logger`` (the caller's module's,
    for its namespace) or this module's."""

    def __init__(self, reactor: IReactorTime, message: str, *,
                 interval: float = LOG_INTERVAL, level: LogLevel = LogLevel.error,
                 logger: Logger | None = None) -> None:
        self._reactor = reactor
        self._message = message
        self._level = level
        self._log = logger if logger is not None else log
        self._interval = interval
        self._count = 0
        self._fields: dict[str, Any] = {}
        self._logged_at: float | None = None
        self._pending: IDelayedCall | None = None

    def note(self, **fields: Any) -> None:
        """One more occurrence; ``fields`` (the last's) fill the message."""
        self._count += 1
        self._fields = fields
        now = self._reactor.seconds()
        if self._logged_at is None or now - self._logged_at >= self._interval:
            self._write()
        elif self._pending is None:
            self._pending = self._reactor.callLater(
                self._logged_at + self._interval - now, self._write)

    def flush(self) -> None:
        """Write what is counted and not yet written (the process stops: the timer that
        would have written it never fires)."""
        self._write()

    def _write(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._count:
            self._log.emit(self._level, self._message, count=self._count,
                           interval=f"{self._interval:g}", **self._fields)
        self._count = 0
        self._logged_at = self._reactor.seconds()
