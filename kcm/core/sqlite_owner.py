"""One kcm-core per SQLite file: an OS lock on a file beside the database, held while the
core runs.

Several cores share a database on PostgreSQL only (docs/deploy.md): there the sweeper's
lease, the outbox NOTIFY and the writers' lock are the database's. On SQLite each core takes
the sweeper's lease as its own (:mod:`kcm.core.leader_lease`) and learns of another
process's commits only by polling; a second kcm-core on the same file (a manual run beside
the systemd unit, a Deployment of two replicas on one volume) was served all the same.
:class:`SqliteOwner` starts before the store: it takes an exclusive ``flock`` on
``<database>.kcm-core.lock`` (the database's real path: two spellings of one file share
the lock) and keeps it until the core stops; the kernel drops it when the process dies, so
a killed core leaves nothing to clean up. A core that finds it taken does not start, and
says which process holds it. A database file its group or others may read is warned about
(it holds wrapped keys and the audit log; a new one is made 0600). A database file of more
than one name (a hard link: another path, so another lock file) does not start
(:mod:`kcm.core.store.sqlite_links`); a second name given to it while the core runs is
noticed within :data:`LINK_CHECK_INTERVAL` seconds (:attr:`SqliteOwner.linked`): one error
line, and ``/readyz`` answers 503 saying why (:meth:`SqliteOwner.refusal`, which
:func:`kcm.core.metrics.database_state` asks at each probe) until the name is gone. So is a
file moved, replaced or removed while the core runs (its path no longer names the file the
core opened, by device and inode: a restore made without stopping the core, an ``rm``): the
core's writes go on to the file it opened, which nobody will find at that path again, and
each new connection of its store would open the other. The core goes on serving, writes
included: its own
writes go through its own name, WAL and lock, and every other kcm-core, ``kcm`` command and
backup refuses the file while it has two names; what the second name endangers is a
process that opens the database by it (an ``sqlite3`` shell), which stopping this core's
writes would not prevent, while it would make a stray ``ln`` an outage.

Only kcm-core takes the lock: the ``kcm`` commands that open the database while the core
runs (``kcm core tenant add``, ``kcm audit verify``, ...) keep working. A lock file made by
root is given to the database file's owner, so that a later start as that user can open it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

from sqlalchemy.engine import make_url
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kcm.core.service import StartupError
from kcm.core.store.engine import Store
from kcm.core.store.sqlite_links import linked_refusal

log = Logger()

#: What the lock file's name adds to the database file's.
LOCK_SUFFIX = ".kcm-core.lock"
#: Seconds between two looks (one ``stat``) at the database file's names while the core
#: runs.
LINK_CHECK_INTERVAL = 5.0


def sqlite_database_file(url: str) -> str | None:
    """The real path of the SQLite file ``url`` names; None for another database (or no
    file: ``:memory:``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return os.path.realpath(parsed.database)


def lock_path(database_file: str) -> str:
    """The lock file of the SQLite file at ``database_file`` (a real path)."""
    return database_file + LOCK_SUFFIX


def refusal(database_file: str, holder: str) -> str:
    """Why a second core does not start on ``database_file``; ``holder``: the process id the
    lock file names (empty: unknown)."""
    who = f"kcm-core (pid {holder})" if holder else "kcm-core"
    return (f"another {who} serves {database_file}: stop it first; one kcm-core per "
            f"SQLite file (several cores need PostgreSQL, docs/deploy.md)")


class SqliteOwner(Service):
    """Holds the lock of the SQLite file ``url`` names from start to stop; does nothing on
    another database. Its start raises :class:`StartupError` when another process holds the
    lock. ``store`` (kcm-core's, stopped before this): the lock is let go once its threads
    have ended (:meth:`Store.threads_ended`), not as its stop returns, which leaves a read
    that outlives :data:`~kcm.core.store.engine.READER_STOP_S` to its thread. With
    ``clock`` (the reactor), the file's names are looked at every :data:`LINK_CHECK_INTERVAL`
    seconds while it runs (:attr:`linked`)."""

    name = "kcm-sqlite-owner"

    def __init__(self, url: str, store: Store | None = None, *,
                 clock: IReactorTime | None = None) -> None:
        self.url = url
        self.store = store
        self._fd: int | None = None
        self._clock = clock
        self._watch: LoopingCall | None = None
        #: Why the file may not be used, found while the core runs (a second name, or the
        #: path no longer names the file opened); None: neither.
        self.linked: str | None = None
        #: The database file's (device, inode) as the core opened it (None: not known yet).
        self._opened: tuple[int, int] | None = None
        self._database: str | None = None

    def startService(self) -> None:
        database = sqlite_database_file(self.url)
        # (A database in a directory that does not exist: the store's start says so, in
        # its words; nothing can serve it to lock out.)
        if database is not None and os.path.isdir(os.path.dirname(database)):
            linked = linked_refusal(database)  # (its other name has another lock file)
            if linked is not None:
                raise StartupError(linked)
            self._fd = take(database)
            self._database = database
            self._opened = file_identity(database)
            shared = shared_mode(database)
            if shared is not None:
                log.warn("the database file {path} has mode {mode:04o}: other users may read "
                         "its wrapped keys and audit log; chmod 600 it (docs/operations.md, "
                         '"Storage")', path=database, mode=shared)
            if self._clock is not None:
                self._watch = LoopingCall(self.check_links, database)
                self._watch.clock = self._clock
                self._watch.start(LINK_CHECK_INTERVAL, now=False)
        super().startService()

    def refusal(self) -> str | None:
        """Why the database file may not be used now, looked at now (a second name, or its
        path no longer naming the file the core opened); None: neither, or no SQLite file."""
        database = self._database
        if database is None:
            return None
        linked = linked_refusal(database)
        if linked is not None:
            return linked
        now = file_identity(database)
        if self._opened is None:  # (the store made the file after the lock was taken)
            self._opened = now
            return None
        if now == self._opened:
            return None
        # (the advice first and the path last, as for a second name)
        return (f"{_REPLACED} while kcm-core runs: its writes go to the file it opened, not "
                "to this path; stop kcm-core and put the database back before it starts "
                f"again: {database}")

    def check_links(self, database: str) -> None:
        """Look at ``database``'s names (and that its path still names the file opened): a
        refusal is logged once (and its end once), and kept in :attr:`linked`."""
        if self._database is None:
            self._database = database
        linked = self.refusal()
        was, now = _kind(self.linked), _kind(linked)
        if now != was:
            if now == "replaced":
                log.error("the database file is not the one kcm-core opened; /readyz answers "
                          "503 until it is back: {why}", why=linked)
            elif now == "linked":
                log.error("a second name was given to the database file while kcm-core "
                          "runs; /readyz answers 503 until it is gone: {why}", why=linked)
            elif was == "replaced":
                log.info("the database file {path} is the one kcm-core opened again",
                         path=database)
            else:
                log.info("the database file {path} has one name again", path=database)
        self.linked = linked

    def stopService(self) -> Deferred[None] | None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None
        super().stopService()
        if self._fd is None or self.store is None:
            self._release()
            return None
        return self.store.threads_ended().addCallback(lambda _: self._release())

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # (the lock goes with it; the file stays, for the next)
            self._fd = None


#: How a refusal of a file that is no longer the one opened begins.
_REPLACED = "the SQLite database file was moved, replaced or removed"


def _kind(refusal: str | None) -> str | None:
    """"replaced", "linked", or None (no refusal)."""
    if refusal is None:
        return None
    return "replaced" if refusal.startswith(_REPLACED) else "linked"


def file_identity(path: str) -> tuple[int, int] | None:
    """``path``'s (device, inode), or None if it does not exist (or cannot be looked at)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def take(database_file: str) -> int:
    """The open lock file of ``database_file``, its lock taken (this process's id written
    in it); :class:`StartupError` if another process holds it."""
    path = lock_path(database_file)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o600)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
            # (A hard link to another file, made by whoever may write in the directory:
            # truncated, and given to the database's owner, by a core run as root.)
            raise StartupError(f"{path} is not a plain file of its own (a link, a pipe?): "
                               "remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise StartupError(refusal(database_file, _holder(fd))) from None
        _give_to_database_owner(fd, database_file)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def shared_mode(database_file: str) -> int | None:
    """The permission bits of ``database_file`` if its group or others may use it (None:
    the owner's alone, or no file yet: the store makes it 0600)."""
    try:
        mode = stat.S_IMODE(os.stat(database_file).st_mode)
    except FileNotFoundError:
        return None
    return mode if mode & 0o077 else None


def _holder(fd: int) -> str:
    """The process id the lock file names, if it names one."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
    return ""


def _give_to_database_owner(fd: int, database_file: str) -> None:
    """As root, the lock file to the database file's owner (as SQLite does its ``-wal`` and
    ``-shm`` files): a core run once as root does not keep the service's user out."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):  # no database yet: the store makes it, root's
        owner = os.stat(database_file)
        os.fchown(fd, owner.st_uid, owner.st_gid)
