"""The log line that says the disk of kcm-core's SQLite database is full, and where.

Each request refused because the store is unavailable has its own line (it is the only
record of it: its audit record would meet the same store), and those lines say "database or
disk is full" without saying which disk. This one names the database's directory and the
bytes free there (:func:`kcm.core.store.disk_space.disk_full`), at most once every
:data:`INTERVAL` seconds however many requests fail, with how many did
(:class:`kcm.throttled_line.ThrottledLine`). It is written only while the disk counts as
full: a store unavailable for another reason (a lock another process holds) is not
reported so.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from kcm.core.store.disk_space import disk_full
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
        url = make_url(database_url)
        self._file = (url.database or None) if url.get_backend_name() == "sqlite" else None
        self._line = ThrottledLine(reactor, _MESSAGE, interval=INTERVAL,
                                   level=LogLevel.error, logger=log)

    def failed(self) -> None:
        """A request failed, the store unavailable: is its disk full? (One ``statvfs``.)"""
        if self._file is None:
            return
        why = disk_full(self._file)
        if why is not None:
            self._line.note(why=why)
