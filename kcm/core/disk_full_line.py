"""The log line that says the disk of kcm-core's SQLite database is full, and where.

Each request refused because the store is unavailable has its own line (it is the only
record of it: its audit record would meet the same store), and those lines say "database or
disk is full" without saying which disk. This one names the database's directory and the
bytes free there (:class:`kcm.core.store.disk_space.DiskSpace`, whose reading it shares
with the readiness check: :attr:`DiskFullLine.disk`), at most once every
:data:`INTERVAL` seconds however many requests fail, with how many did
(:class:`kcm.throttled_line.ThrottledLine`). It is written only while the disk counts as
full: a store unavailable for another reason (a lock another process holds) is not
reported so.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from kcm.core.store.disk_space import DiskSpace
from kcm.throttled_line import ThrottledLine

__all__ = ["INTERVAL", "DiskFullLine"]

log = Logger()

#: Seconds between two such lines at most.
INTERVAL = 30.0

_MESSAGE = ("kcm-core cannot write its database: {why}; requests fail (the key store is "
            "unavailable) until space is freed there ({count} since the last such line, "
            "one every {interval} s at most)")


class DiskFullLine:
    """Notes a request the store failed (:meth:`failed`) and logs :data:`_MESSAGE` when
    the disk of the SQLite database at ``database_url`` is full; nothing for another
    database."""

    def __init__(self, reactor: IReactorTime, database_url: str) -> None:
        #: The database's disk (None: not a SQLite file), read at most once a second.
        self.disk = DiskSpace.of(database_url, clock=reactor.seconds)
        self._line = ThrottledLine(reactor, _MESSAGE, interval=INTERVAL,
                                   level=LogLevel.error, logger=log)

    def failed(self) -> None:
        """A request failed, the store unavailable: is its disk full? (One ``statvfs`` a
        second at most.)"""
        if self.disk is None:
            return
        why = self.disk.full()
        if why is not None:
            self._line.note(why=why)
