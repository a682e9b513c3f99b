"""Database engines and the :class:`Store` service: one transaction per call, off the reactor.

Write transactions are serialized on both backends, so lifecycle changes to an object never
interleave, the audit chain never forks and outbox sequence numbers follow commit order:

- SQLite: every write transaction starts with ``BEGIN IMMEDIATE`` (the database write lock
  is taken up front, waiting up to the busy timeout); reads use a deferred ``BEGIN`` with
  ``PRAGMA query_only`` on, and in WAL mode never wait for the writer.
- PostgreSQL: every write transaction first takes one transaction-scoped advisory lock
  (:func:`kcm.core.store.repository.lock_writers`), waiting for it a bounded time; reads run
  ``READ ONLY``.

On PostgreSQL a process that stops talking to the database inside a transaction (frozen: a
SIGSTOP, a stuck VM; or cut off) must not keep that lock, and with it every core's writes:
a :class:`Store`'s sessions have ``idle_in_transaction_session_timeout`` set
(:data:`IDLE_IN_TRANSACTION_S`), so the server ends such a session and frees its locks, and
every connection has TCP keepalives and a TCP user timeout on both ends
(:data:`TCP_SETTINGS`), so a vanished host's sessions end too, and a core whose server
vanished fails instead of waiting on a dead socket.

Commits are durable: SQLite runs in WAL mode with ``synchronous=FULL``; PostgreSQL keeps its
own ``fsync``/``synchronous_commit`` settings.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from kcm.core.store.known import (
    KNOWN_FACTS_INFO,
    LEAN_READ_INFO,
    LEARNT_INFO,
    WRITE_INFO,
    KnownFacts,
)
from kcm.core.store.lean import LeanTransaction
from kcm.core.store.object_cache import (
    CACHE_EPOCH_INFO,
    DEFAULT_MAX_BYTES,
    OBJECT_CACHE_INFO,
    WRITTEN_INFO,
    ObjectCache,
)
from kcm.core.store.quota import MAX_OBJECTS_INFO
from kcm.core.store.raw_statements import (
    TRANSACTION_CONNECTION,
    defers_savepoints,
    discard_pending,
    drain_connection,
    drain_pending,
    execute_plain,
    forget_deferred,
    pipelined,
)
from kcm.core.store.repository import (
    MATERIAL_ERASED_INFO,
    OUTBOX_WRITTEN_INFO,
    SCHEMA_REVISION_INFO,
    lock_writers,
    lock_writers_on,
)
from kcm.core.store.row_seal import ROW_SEAL_INFO, RowSeal
from kcm.core.store.savepoints import StoreSession
from kcm.core.store.sqlite_links import refuse_linked
from kcm.core.store.transaction_lost import check_transaction
from kcm.core.store.unavailable import StoreStopped, read_only, read_transaction_refused
from kcm.core.store.writer_thread import WriterThread

T = TypeVar("T")

log = Logger()

# How long a SQLite writer waits for the write lock before failing ("database is locked"):
# well inside a request's deadline (limits.request_deadline, 10 s by default), so a file
# another process keeps locked fails each waiting group's requests with a clear answer in
# seconds, instead of every client hanging on it. kcm-core's own transactions are short;
# the kcm command's wait for them as long.
SQLITE_BUSY_TIMEOUT_S = 5.0

# Execution option telling the SQLite begin hook whether to take the write lock up front.
WRITE_OPTION = "kcm_write"

#: A connection the writer thread kept idle this long (seconds) is pinged before its next
#: transaction (PostgreSQL; :meth:`Store.write`).
KEPT_CONNECTION_CHECK_S = 1.0
#: PostgreSQL connections are exchanged for fresh ones at this age (seconds).
POSTGRESQL_RECYCLE_S = 1800

#: Seconds a :class:`Store`'s PostgreSQL session may sit idle inside a transaction (the
#: server's ``idle_in_transaction_session_timeout``) before the server ends it, freeing its
#: locks: the writers' lock of a core frozen or cut off mid-transaction is free again this
#: long after its last statement, and the writers that waited for it (at most
#: :data:`kcm.core.store.repository.WRITERS_LOCK_WAIT_S`, below the default
#: ``limits.request_deadline`` of 10 s) go on. Idleness, not duration: KCM's long
#: transactions (a big Locate, an audit verify, a sweep) keep talking to the server, and
#: the longest silence inside a legitimate transaction is one request's computation
#: (one PBKDF2 derivation, up to about 0.7 s). A value the operator set for the role, the
#: database or the connection (``ALTER ROLE kcm SET ...``, or ``options=-c ...`` in the URL) is
#: kept; 0 there turns it off. Schema migrations run without it.
IDLE_IN_TRANSACTION_S = 5
#: Seconds between two tries of a truncating WAL checkpoint that readers kept from
#: completing (:meth:`Store._erase_wal`).
WAL_ERASE_RETRY_S = 1.0

#: Seconds past ``limits.request_deadline`` one wait of kcm-core for its PostgreSQL server
#: may last before the connection is shut down (:mod:`kcm.core.store.server_silence`): a
#: request's answer is due by its deadline; this leaves its own check room to answer first.
SILENCE_GRACE_S = 2.0
#: Seconds a stopping store waits for its reader thread's read in progress.
READER_STOP_S = 1.0
#: TCP settings of every PostgreSQL connection, the client's (libpq parameters, unless the
#: URL names them) and the server's (its settings of the same meaning, unless the operator
#: set them for the role, database or connection): a host that vanished (powered off,
#: partitioned) is found dead after about 11 s of silence, or 15 s of data unacknowledged,
#: instead of the system's two hours. The server then ends its sessions (a sweeper's lease
#: held by a vanished core is freed); the client fails its statement (the core's writer
#: reconnects).
TCP_SETTINGS = {"keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                "tcp_user_timeout_ms": 15_000}

#: Where a session of a :class:`Store` finds the store's audit key (``Session.info``).
AUDIT_KEY_INFO = "kcm.audit.key"
#: Where a session of a :class:`Store` finds what to call with the number of audit
#: records its transaction committed (``Session.info``; :attr:`Store.on_audit_written`).
AUDIT_WRITTEN_INFO = "kcm.audit.written"
#: Where a session of a :class:`Store` finds what to call with the sequence number of the
#: newest audit record its transaction committed (``Session.info``; :attr:`Store.on_audit_head`).
AUDIT_HEAD_INFO = "kcm.audit.head_committed"


def open_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5,
                idle_in_transaction: float | None = None) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    Opens no connection. A SQLite file of more than one name (hard links) is refused
    (:class:`kcm.core.store.sqlite_links.SqliteFileLinked`). A statement's error never
    shows its parameters (``hide_parameters``): they are wrapped key material and
    attributes, and the error's text goes to the log with its traceback. SQLite connections get WAL,
    ``synchronous=FULL``, foreign keys and a busy timeout, and their transactions are begun
    by us (see the module docstring); a PostgreSQL engine gets a checked, recycled
    connection pool of ``pool_size`` + ``max_overflow`` connections, each with
    :data:`TCP_SETTINGS` and, given ``idle_in_transaction`` (seconds), that
    ``idle_in_transaction_session_timeout`` (see
    :data:`IDLE_IN_TRANSACTION_S`). A plain ``postgresql://`` URL is taken to mean psycopg v3.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # Each pooled connection would see its own empty in-memory database.
            raise ValueError("the store needs a SQLite database file, not :memory:")
        refuse_linked(parsed.database)  # (a second name has a WAL of its own)
        engine = create_engine(
            parsed,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        path = parsed.database
        event.listen(engine, "do_connect", lambda _dialect, _record, _cargs, _cparams:
                     _sqlite_file_must_exist(path))
        event.listen(engine, "connect", lambda dbapi_connection, record: _sqlite_on_connect(
            dbapi_connection, record, path))
        event.listen(engine, "checkout", lambda _dbapi, record, _proxy: _sqlite_on_checkout(
            record, path))
        event.listen(engine, "begin", _sqlite_on_begin)
        return defers_savepoints(_plain_savepoints(engine))
    if backend == "postgresql":
        if parsed.get_driver_name() in ("", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        # Statements whose outcome nobody reads are sent without waiting, so that a
        # request costs one round trip, not one per statement (raw_statements).
        engine = pipelined(_plain_savepoints(create_engine(
            parsed,
            hide_parameters=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_recycle=POSTGRESQL_RECYCLE_S,
            pool_timeout=30,
            connect_args=_postgresql_connect_args(parsed.query),
        )))
        event.listen(engine, "connect", _postgresql_session_settings(idle_in_transaction))
        return engine
    raise ValueError(f"unsupported database backend {backend!r} (use sqlite or postgresql)")


def _postgresql_connect_args(query: Any) -> dict[str, Any]:
    """libpq parameters of a KCM connection; those the URL names are the URL's."""
    tcp = TCP_SETTINGS
    defaults: dict[str, Any] = {
        "connect_timeout": 10, "application_name": "kcm-core", "keepalives": 1,
        "keepalives_idle": tcp["keepalives_idle"],
        "keepalives_interval": tcp["keepalives_interval"],
        "keepalives_count": tcp["keepalives_count"],
        "tcp_user_timeout": tcp["tcp_user_timeout_ms"],
    }
    return {name: value for name, value in defaults.items() if name not in query}


#: Where a PostgreSQL setting KCM leaves alone comes from: the operator set it for KCM's
#: role, its database or its connections (``pg_settings.source``).
_OPERATORS_SOURCES = ("database", "user", "database user", "client", "session")


def _postgresql_session_settings(idle_in_transaction: float | None
                                 ) -> Callable[[Any, Any], None]:
    """The engine's ``connect`` hook: the server's side of a new connection's settings (one
    round trip per connection, not per transaction), each unless the operator set it for
    KCM (:data:`_OPERATORS_SOURCES`)."""
    tcp = TCP_SETTINGS
    wanted = [("tcp_keepalives_idle", str(tcp["keepalives_idle"])),
              ("tcp_keepalives_interval", str(tcp["keepalives_interval"])),
              ("tcp_keepalives_count", str(tcp["keepalives_count"])),
              ("tcp_user_timeout", str(tcp["tcp_user_timeout_ms"]))]
    if idle_in_transaction is not None:
        wanted.append(("idle_in_transaction_session_timeout",
                       str(int(idle_in_transaction * 1000))))
    values = ", ".join(f"('{name}', '{value}')" for name, value in wanted)
    operators = ", ".join(f"'{source}'" for source in _OPERATORS_SOURCES)
    statement = (f"SELECT set_config(s.name, w.value, false) FROM (VALUES {values}) "
                 f"AS w(name, value) JOIN pg_settings s ON s.name = w.name "
                 f"WHERE s.source NOT IN ({operators})")

    def settle(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.rollback()  # (nothing open: no round trip) autocommit needs none
        dbapi_connection.autocommit = True  # a session setting must outlive the statement
        try:
            dbapi_connection.execute(statement)
        finally:
            dbapi_connection.autocommit = autocommit

    return settle


def _plain_savepoints(engine: Engine) -> Engine:
    """Have ``engine`` send its savepoint statements as plain SQL text.

    SQLAlchemy names every savepoint afresh (``sa_savepoint_N``) and so compiles each
    SAVEPOINT, RELEASE and ROLLBACK TO statement anew, never from its statement cache: a
    tenth of a group commit's CPU per request went there. The names are SQLAlchemy's own
    identifiers, safe to put in the text as they are; the text goes straight to the driver
    (:mod:`kcm.core.store.raw_statements`).
    """
    dialect = engine.dialect

    def do_savepoint(connection: Any, name: str) -> None:
        execute_plain(connection, f"SAVEPOINT {name}")

    def do_rollback_to_savepoint(connection: Any, name: str) -> None:
        discard_pending(connection)  # undone anyway; queued after an error, never run
        execute_plain(connection, f"ROLLBACK TO SAVEPOINT {name}")

    def do_release_savepoint(connection: Any, name: str) -> None:
        execute_plain(connection, f"RELEASE SAVEPOINT {name}")

    dialect.do_savepoint = do_savepoint  # type: ignore[method-assign]
    dialect.do_rollback_to_savepoint = do_rollback_to_savepoint  # type: ignore[method-assign]
    dialect.do_release_savepoint = do_release_savepoint  # type: ignore[method-assign]
    return engine


def _sqlite_file_must_exist(path: str) -> None:
    """Before each new SQLite connection: the database file must be there. SQLite would
    create a missing one, empty and with the umask's mode: a file removed under a running
    core came back so, and a restart migrated it into a deployment without tenants. The
    file is made only on purpose, owner-only, before any connection
    (:func:`kcm.core.store.migrate.create_private_sqlite_file`)."""
    if not os.path.exists(path):
        raise sqlite3.OperationalError(
            "the SQLite database file is missing (it is not created again: restore it, or "
            "run kcm core init for a new deployment)")


def _sqlite_on_connect(dbapi_connection: Any, record: Any, path: str) -> None:
    # The file this connection opened: a connection goes on using its file after the file
    # was removed or replaced (a restore under a running core, a cleanup job), and whatever
    # it committed then is lost at the next start (see _sqlite_on_checkout).
    record.info[_SQLITE_FILE] = sqlite_file_identity(path)
    # Hand transaction control to us: pysqlite's implicit BEGIN is always DEFERRED, and a
    # deferred writer that meets another writer fails at once instead of waiting.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # What is deleted or overwritten (a destroyed key's wrapped material) is zeroed in
        # the file, not left in free space (Debian's build does so by default; upstream's
        # does not).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # A savepoint's statement journal (each batch item has one) and any sort's scratch
        # space in memory, not in a temporary file opened for it: a process out of file
        # descriptors (ulimit -n) goes on serving its connected clients, where each write
        # failed "unable to open database file".
        cursor.execute("PRAGMA temp_store=MEMORY")
    finally:
        cursor.close()


def sqlite_file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the SQLite database file at ``path`` now (None: there is none)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _sqlite_on_checkout(record: Any, path: str) -> None:
    """A pooled connection whose file is no longer the one at ``path`` is not lent: the
    pool discards it and opens another (on the file there now)."""
    if record.info.get(_SQLITE_FILE) != sqlite_file_identity(path):
        raise DisconnectionError("the SQLite database file was removed or replaced")


def file_replaced_error() -> OperationalError:
    """The error a write on a connection whose SQLite file was removed or replaced fails
    with: the key store is unavailable (:mod:`kcm.core.store.unavailable`)."""
    return OperationalError(None, None, sqlite3.OperationalError(
        "the database file was removed or replaced under the running core"))


#: A SQLite connection record's ``info``: (device, inode) of the file it opened.
_SQLITE_FILE = "kcm.sqlite.file"


def _sqlite_on_begin(connection: Any) -> None:
    # Every transaction comes here: the statements go straight to the driver, and
    # ``query_only`` is set only when this DB-API connection last served the other kind.
    forget_deferred(connection)  # (a savepoint never ended waits for no statement now)
    write = connection.get_execution_options().get(WRITE_OPTION, True)
    info = connection.connection.info  # this DB-API connection's, for as long as it lives
    if info.get(_QUERY_ONLY) is not (not write):
        execute_plain(connection, "PRAGMA query_only=0" if write else "PRAGMA query_only=1")
        info[_QUERY_ONLY] = not write
    execute_plain(connection, "BEGIN IMMEDIATE" if write else "BEGIN")


def _read_only_session(connection: Connection) -> bool:
    """Whether ``connection``'s PostgreSQL session refuses writes (it connected to a
    standby, or while ``default_transaction_read_only`` was set; one round trip)."""
    return execute_plain(connection, "SHOW transaction_read_only").fetchone()[0] == "on"


def _answers_ping(engine: Engine, connection: Connection) -> bool:
    """Whether ``connection``'s server answers (the pool's own check before it lends one)."""
    try:
        return bool(engine.dialect.do_ping(connection.connection.dbapi_connection))
    except Exception:
        connection.invalidate()  # the pool discards it when it comes back
        return False


#: A DB-API connection's ``info``: the ``query_only`` it was last set to.
_QUERY_ONLY = "kcm.sqlite.query_only"

#: Seconds a read waits at most for answers being handed to the reactor
#: (:meth:`Store.run_answer`): they are queued within microseconds of their commit, so
#: only a thread starved for that long makes one wait, and a read is never held longer.
HANDOVER_WAIT_S = 1.0


class _Handovers:
    """Answers committing and not yet handed to the reactor (:meth:`Store.run_answer`)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open: set[int] = set()
        self._next = 0

    def committing(self) -> int:
        with self._changed:
            self._next += 1
            self._open.add(self._next)
            return self._next

    def handed_over(self, ticket: int) -> None:
        with self._changed:
            self._open.discard(ticket)
            self._changed.notify_all()

    def wait(self) -> None:
        """Until every answer committing now has been handed over (not those after)."""
        with self._changed:
            if not self._open:
                return
            waiting = set(self._open)
            if not self._changed.wait_for(lambda: not waiting & self._open,
                                          HANDOVER_WAIT_S):
                log.warn("a read of the outbox waited {seconds:g} s for {count} service key "
                         "answers to be handed over; going on", seconds=HANDOVER_WAIT_S,
                         count=len(waiting & self._open))


class Store(Service):
    """The KSI as a Twisted service: runs each unit of work in one transaction on a worker thread.

    Construction does no I/O; :meth:`startService` brings the schema up to date (when made
    with ``migrate=True``, as kcm-core's is), opens the engine and starts the thread pool;
    :meth:`stopService` waits for running work to finish, then closes both.

    ``clock`` measures the object cache's ttl (kcm-core: the reactor's monotonic time, on
    which its expiry timer runs too); it is read on the worker threads.
    """

    name = "kcm-store"

    def __init__(
        self,
        url: str,
        *,
        reactor: Any = None,
        threads: int = 4,
        pool_size: int | None = None,
        migrate: bool = False,
        object_cache_size: int = 10_000,
        object_cache_bytes: int = DEFAULT_MAX_BYTES,
        idle_in_transaction: float | None = IDLE_IN_TRANSACTION_S,
        silence_limit: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self.migrate = migrate
        #: Seconds a session of this store may sit idle in a transaction (PostgreSQL; None:
        #: the server's setting): see :data:`IDLE_IN_TRANSACTION_S`.
        self.idle_in_transaction = idle_in_transaction
        #: Seconds a PostgreSQL connection may wait for its server before it is shut down
        #: (:mod:`kcm.core.store.server_silence`; None: not watched).
        self.silence_limit = silence_limit
        #: The schema revision this store's writes need (set by a migrating start: a
        #: database upgraded under it then fails them; None: not checked).
        self.schema_revision: str | None = None
        self._silence_watch: Any = None
        self._reactor = reactor
        self._threads = threads
        self._pool_size = pool_size if pool_size is not None else threads + 1
        self._engine: Engine | None = None
        self._sessions: dict[bool, sessionmaker[Session]] = {}
        self._threadpool: ThreadPool | None = None
        #: The one thread of :meth:`write` (group commits), apart from the workers so that
        #: long reads holding every worker never delay a commit.
        self._writer: WriterThread | None = None
        #: The one thread of :meth:`read_plain` (the event fan-out's reads of the outbox),
        #: apart from the workers so that no queue of requests there delays an event.
        self._reader: WriterThread | None = None
        #: The reader and writer threads stops ended or left a call to
        #: (:meth:`threads_ended`).
        self._stopped_threads: list[WriterThread] = []
        #: Answers of :meth:`run_answer` committed and not yet handed to the reactor.
        self._handovers = _Handovers()
        #: The connection the writer thread keeps between its transactions, and when
        #: (``time.monotonic()``) it was opened and last used.
        self._writer_connection: Connection | None = None
        self._writer_connection_opened = 0.0
        self._writer_connection_used = 0.0
        self._engine_lock = threading.Lock()
        self._sqlite_writer = threading.Lock()
        #: Since when (``time.monotonic``) the write transaction holding
        #: :attr:`writers_lock` has held the SQLite file's write lock (its BEGIN returned);
        #: None: none does (set and cleared by that transaction's thread).
        self._file_lock_since: float | None = None
        #: Facts of the committed data the hot path reads from memory (tenants' services).
        self.known = KnownFacts()
        #: Objects as last read, so that an operation on a known one reads two numbers
        #: (kcm.core.store.object_cache); sized by ``object_cache_size`` (0: none) and
        #: ``object_cache_bytes``.
        self.objects = ObjectCache(object_cache_size, clock=clock, max_bytes=object_cache_bytes)
        #: The key that MACs this database's audit chain (:mod:`kcm.core.audit`), derived
        #: from its L1; every session gets it in ``info[AUDIT_KEY_INFO]``. None until the
        #: holder of L1 sets it: until then audit records cannot be written or verified.
        self.audit_key: bytes | None = None
        #: What MACs and checks each managed object's row (:mod:`kcm.core.store.row_seal`),
        #: made from L1 by its holder (the keyring's); every session gets it in
        #: ``info[ROW_SEAL_INFO]``. None: rows are written without a MAC.
        self.row_seal: RowSeal | None = None
        #: The core's ``[core.limits] max_objects_per_tenant`` (kcm.core.store.quota): the
        #: bound of a tenant without one of its own; 0 (a store of a ``kcm`` command): none.
        self.max_objects_per_tenant = 0
        #: Called on the worker thread with (write, seconds) after each transaction, and
        #: with the number of audit records each commit wrote (kcm.core.metrics); None:
        #: not measured.
        self.on_transaction: Callable[[bool, float], None] | None = None
        self.on_audit_written: Callable[[int], None] | None = None
        #: Called on the worker thread with the sequence number of the newest audit record
        #: each commit wrote (kcm.core.metrics); None: not told.
        self.on_audit_head: Callable[[int], None] | None = None
        #: Called on the thread of a write transaction with (lock, seconds) once it holds
        #: the writers' lock, or failed to: ``process`` for this process's SQLite write
        #: lock (its writer thread and its workers' writes queue there), ``database`` for
        #: the database's (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's writers' lock); None:
        #: not measured.
        self.on_lock_wait: Callable[[str, float], None] | None = None
        #: Called on the worker thread after each commit that added outbox events (the
        #: fan-out reads them at once, not at its next poll); None: nobody is told.
        self.on_outbox_written: Callable[[], None] | None = None
        #: The sequence number of the latest outbox event this process committed (0:
        #: none). Set before the transaction's result is handed back, so an answer made
        #: after a commit can wait for its events to reach the gateways (kcm.core.link_server).
        self.outbox_committed = 0
        self._outbox_committed_lock = threading.Lock()
        #: A truncating WAL checkpoint is owed since a Destroy (SQLite), and when one
        #: was last tried (``time.monotonic()``).
        self._wal_erase_owed = False
        self._wal_erase_tried = -WAL_ERASE_RETRY_S
        self._wal_erase_again = False

    @property
    def writers_lock(self) -> threading.Lock:
        """This process's SQLite writers' lock: its writer thread and its workers' writes
        each hold it for their whole write transaction (file lock included). Whoever else
        takes the file's write lock in this process (the readiness check) holds it first,
        so as to wait its turn behind those writes."""
        return self._sqlite_writer

    def file_write_lock_held_for(self) -> float | None:
        """How long a write transaction of this process has held the SQLite file's write
        lock (its ``BEGIN IMMEDIATE`` returned; it has not ended), seconds; None: none
        holds it (always on PostgreSQL). The readiness check asks it when the transaction
        keeps :attr:`writers_lock` longer than it waits (kcm.core.metrics)."""
        since = self._file_lock_since
        return None if since is None else max(time.monotonic() - since, 0.0)

    @property
    def engine(self) -> Engine:
        """The engine, created on first use."""
        with self._engine_lock:
            return self._engine_or_open()

    def _engine_or_open(self) -> Engine:
        if self._engine is None:
            engine = open_engine(self.url, pool_size=self._pool_size, max_overflow=2,
                                 idle_in_transaction=self.idle_in_transaction)
            if self.silence_limit is not None and engine.dialect.name == "postgresql":
                from kcm.core.store.server_silence import (  # psycopg: PostgreSQL only
                    SilenceWatch,
                    SilenceWatchThread,
                    watch_connections,
                )

                watch = SilenceWatch(self.silence_limit)
                watch_connections(engine, watch)
                self._silence_watch = SilenceWatchThread(watch, f"{self.name}-silence")
                self._silence_watch.start()
            self._sessions = {
                write: sessionmaker(
                    bind=engine.execution_options(**{WRITE_OPTION: write}),
                    class_=StoreSession,
                    expire_on_commit=False,
                    autoflush=True,
                )
                for write in (True, False)
            }
            self._engine = engine
        return self._engine

    def startService(self) -> None:
        """Upgrade the schema (with ``migrate``; a line logged when it moved), open the
        engine, start the worker threads."""
        if self.migrate:
            from kcm.core.store.migrate import (  # migrate.py builds on this module
                HEAD_REVISION,
                upgrade,
            )

            moved = upgrade(self.url)
            if moved is not None:
                before, after = moved
                if before is None:
                    log.info("schema created at {after}", after=after)
                else:
                    log.info("schema upgraded from {before} to {after}", before=before,
                             after=after)
            self.schema_revision = HEAD_REVISION
        _ = self.engine
        self._threadpool = ThreadPool(minthreads=1, maxthreads=self._threads, name=self.name)
        self._threadpool.start()
        self._writer = WriterThread(self._reactor, name=f"{self.name}-writer")
        self._writer.start()
        self._reader = WriterThread(self._reactor, name=f"{self.name}-reader")
        self._reader.start()
        super().startService()

    def stopService(self) -> None:
        """Let running work finish, then stop the threads and close the connections.

        Blocks until the in-flight transactions end; each is short, and queued work that has
        not started yet is dropped with the pool.
        """
        super().stopService()
        if self._reader is not None:
            # Reads only (the event fan-out's): one still waiting for a server that does
            # not answer (a new connection's connect_timeout, 10 s by default) is left
            # behind rather than hold the stop (:meth:`threads_ended` fires once it ends).
            self._reader.stop(timeout=READER_STOP_S)
            self._stopped_threads.append(self._reader)
            self._reader = None
        if self._writer is not None:
            self._writer.stop()
            self._stopped_threads.append(self._writer)
            self._writer = None
        self._give_back_writer_connection()
        if self._threadpool is not None:
            self._threadpool.stop()
            self._threadpool = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = {}
        if self._silence_watch is not None:
            self._silence_watch.stop()
            self._silence_watch = None

    def threads_ended(self) -> Deferred[None]:
        """Fires (on the reactor thread) once the reader and writer threads a stop ended,
        or left a call to, have ended: at once unless a read outlived
        :data:`READER_STOP_S` (what :class:`kcm.core.sqlite_owner.SqliteOwner` waits for
        before it lets another core open the file)."""
        ending = [thread.ended() for thread in self._stopped_threads]
        if not ending:
            return succeed(None)
        return DeferredList(ending, consumeErrors=True).addCallback(lambda _: None)

    def run(self, fn: Callable[[Session], T], *, write: bool = True) -> Deferred[T]:
        """Call ``fn(session)`` on a worker thread inside exactly one transaction.

        The Deferred fires with ``fn``'s result after the commit, or fails with ``fn``'s
        exception (or the commit's) after a rollback. With ``write=False`` the transaction is
        read-only and runs alongside writers. Returned ORM objects are detached but loaded.
        Fails with RuntimeError when the service is not running.
        """
        if self._threadpool is None:
            return fail(StoreStopped("Store.run() before startService() or after stopService()"))
        return deferToThreadPool(self._reactor, self._threadpool, self.run_sync, fn, write=write)

    def outbox_went_back(self, head: int) -> None:
        """The outbox was found to end at ``head``, before events this process committed
        (its database restored under it): its count of them starts again from there."""
        with self._outbox_committed_lock:
            self.outbox_committed = min(self.outbox_committed, head)

    def read_plain(self, fn: Callable[[Connection], T]) -> Deferred[T]:
        """:meth:`run` with ``write=False`` for a read that needs no ORM session:
        ``fn(connection)`` on a SQLAlchemy Connection in one read-only transaction (for
        :class:`kcm.core.store.raw_statements.RawStatement`), on the store's one reader
        thread, not a worker: the event fan-out reads the outbox this way, and a queue of
        requests on the workers (a storm of service key fetches) must not delay an event.
        A session's setting up and closing cost a short read most of its CPU: the event
        fan-out's poll of the outbox took 254 µs in a session and 35 µs this way, in
        process, and holding the interpreter lock that long five times a second delayed
        requests. Its outcome reaches the reactor after the answer of every
        :meth:`run_answer` that committed before the read (see there)."""
        if self._reader is None:
            return fail(StoreStopped(
                "Store.read_plain() before startService() or after stopService()"))
        return self._reader.submit(self.read_plain_sync, fn)

    def read_plain_sync(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`read_plain` in the calling thread (never the reactor's); returns once
        the answers of the :meth:`run_answer` calls that had begun to commit when ``fn``
        returned have been handed to the reactor."""
        with self._engine_lock:
            engine = self._engine_or_open()
        try:
            with (engine.connect().execution_options(**{WRITE_OPTION: False}) as connection,
                  connection.begin()):
                if engine.dialect.name == "postgresql":  # (SQLite: query_only, on begin)
                    execute_plain(connection, "SET TRANSACTION READ ONLY")
                result = fn(connection)
        except Exception as e:
            refused = read_transaction_refused(e)  # (a read path that wrote: a bug)
            if refused is e:
                raise
            raise refused from e
        self._handovers.wait()
        return result

    def run_answer(self, fn: Callable[[Session], T]) -> Deferred[T]:
        """:meth:`run` (a write transaction on a worker thread) whose outcome is handed to
        the reactor before the rows of any :meth:`read_plain` that could see a transaction
        committed after it: a gateway's service key fetch (:mod:`kcm.core.link_server`),
        whose answer must not be overtaken by the event of a change committed after it
        (a revocation): the gateway would apply the event, then cache the key as the
        fetch found it.

        Why it holds: the fetch is marked as committing at the end of ``fn``, before its
        commit, and unmarked only once its outcome is queued on the reactor
        (``callFromThread``, first in first out). A change committed after it waited for
        its commit (the writers' lock; SQLite's write lock), so a read that sees the change
        returned its rows after the mark was made; :meth:`read_plain_sync` then waits until
        every mark made by then is gone before its own outcome is queued."""
        if self._threadpool is None:
            return fail(StoreStopped(
                "Store.run_answer() before startService() or after stopService()"))
        done: Deferred[T] = Deferred()
        self._threadpool.callInThread(self._run_answer_sync, fn, done)
        return done

    def _run_answer_sync(self, fn: Callable[[Session], T], done: Deferred[T]) -> None:
        handovers, ticket = self._handovers, None

        def committing(session: Session) -> T:
            nonlocal ticket
            result = fn(session)
            ticket = handovers.committing()
            return result

        try:
            try:
                result = self.run_sync(committing)
            except BaseException:
                self._reactor.callFromThread(done.errback, Failure())
            else:
                self._reactor.callFromThread(done.callback, result)
        finally:
            if ticket is not None:
                handovers.handed_over(ticket)

    def write(self, fn: Callable[[Session], T]) -> Deferred[T]:
        """:meth:`run` with ``write=True`` on the store's one writer thread (not a worker):
        kcm-core's group commits (:mod:`kcm.core.group_commit`) run there, one at a time."""
        if self._writer is None:
            return fail(StoreStopped("Store.write() before startService() or after stopService()"))
        return self._writer.submit(self._write_sync, fn)

    def _write_sync(self, fn: Callable[[Session], T]) -> T:
        """:meth:`run_sync` for the writer thread, in a connection it keeps from one
        transaction (group commit) to the next: a checkout from the pool and its return
        cost a group about a fifth of its fixed CPU on SQLite, and on PostgreSQL a ping
        and a rollback, two round trips. A transaction that fails gives the connection
        back, so that the next begins on a fresh one. On PostgreSQL a connection kept
        idle for :data:`KEPT_CONNECTION_CHECK_S` is pinged first, as the pool does before
        lending one (a restarted server then costs no request a failure), and one older
        than the pool's recycling age is exchanged."""
        return self._on_writer_connection(lambda kept: self._transaction(
            lambda: StoreSession(bind=kept, expire_on_commit=False, autoflush=True), fn,
            True))

    def write_lean(self, fn: Callable[[LeanTransaction], T]) -> Deferred[T]:
        """:meth:`write` for work that needs no ORM session (:mod:`kcm.core.store.lean`):
        ``fn(transaction)`` in one write transaction on the writer's kept connection,
        the writers' lock held; fires after the commit."""
        if self._writer is None:
            return fail(StoreStopped(
                "Store.write_lean() before startService() or after stopService()"))
        return self._writer.submit(self._write_lean_sync, fn, True)

    def _write_lean_sync(self, fn: Callable[[LeanTransaction], T],
                         on_writer: bool = False) -> T:
        """``fn`` in a lean transaction; ``on_writer``: as a call of the writer thread, whose
        after-commit work (logging its audit records) then runs once the outcome has been
        handed over (:meth:`WriterThread.after_answer`)."""
        return self._on_writer_connection(lambda kept: self._lean_transaction(
            kept, fn, self._writer.after_answer if on_writer and self._writer else None))

    def _lean_transaction(self, kept: Connection, fn: Callable[[LeanTransaction], T],
                          later: Callable[[Callable[[], object]], None] | None = None) -> T:
        measured, waited = self.on_transaction, self.on_lock_wait
        started = asked = time.perf_counter()
        try:
            info: dict[str, Any] = {}
            if self.audit_key is not None:
                info[AUDIT_KEY_INFO] = self.audit_key
            if self.row_seal is not None:
                info[ROW_SEAL_INFO] = self.row_seal
            if self.on_audit_written is not None:
                info[AUDIT_WRITTEN_INFO] = self.on_audit_written
            if self.on_audit_head is not None:
                info[AUDIT_HEAD_INFO] = self.on_audit_head
            transaction = LeanTransaction(kept, info)
            asked = time.perf_counter()
            with kept.begin():  # (SQLite: BEGIN IMMEDIATE, the file's write lock)
                lock_writers_on(kept, self.schema_revision)
                if kept.dialect.name == "sqlite":
                    self._file_lock_since = time.monotonic()
                if waited is not None:
                    waited, held = None, waited
                    held("database", time.perf_counter() - asked)
                result = fn(transaction)
                transaction.run_before_commit()
                drain_connection(kept)
                check_transaction(transaction)  # (a commit of nothing would "succeed")
            if later is None:
                transaction.run_after_commit()
            else:
                later(transaction.run_after_commit)
            return result
        finally:
            if waited is not None:  # the lock was never held: its wait failed
                waited("database", time.perf_counter() - asked)
            if measured is not None:
                measured(True, time.perf_counter() - started)

    def read_in(self, transaction: LeanTransaction, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` for reads in ``transaction`` (a lean one, on the writer thread):
        the session joins the transaction and leaves it as it was when it closes (it
        neither commits nor rolls it back). A lean group writes nothing but audit records,
        so what the session reads is committed: it gets what a read-only transaction's
        session gets. ``fn`` must not write: an operation that would raises
        :class:`kcm.core.context.WritesHere` first (:data:`LEAN_READ_INFO`)."""
        with StoreSession(bind=transaction.connection, expire_on_commit=False,
                          autoflush=False, join_transaction_mode="rollback_only") as session:
            info = session.info
            info[KNOWN_FACTS_INFO] = self.known
            if self.objects.size:
                info[OBJECT_CACHE_INFO] = self.objects
            info[WRITE_INFO] = False
            info[LEAN_READ_INFO] = True
            info[TRANSACTION_CONNECTION] = transaction.connection
            info[CACHE_EPOCH_INFO] = self.objects.epoch
            return fn(session)

    def _erase_wal_soon(self, session: Session) -> None:
        """After a commit that destroyed key material: on SQLite, :meth:`_erase_wal` once
        this transaction's answer is handed over (the writer's) or now (another thread's)."""
        if session.get_bind().dialect.name != "sqlite":
            return  # (PostgreSQL keeps old row versions and WAL: see docs/operations.md)
        self._wal_erase_owed = True
        writer = self._writer
        if writer is not None and writer.is_current():
            writer.after_answer(self._erase_wal)
        else:
            self._erase_wal()

    def _erase_wal(self) -> None:
        """Checkpoint the SQLite WAL into the database and truncate it to nothing, so that
        the page images of destroyed key material written before its Destroy are gone from
        the files (``secure_delete`` zeroes them in the database file itself). It waits for
        no reader and runs at most every :data:`WAL_ERASE_RETRY_S` seconds: on the writer
        thread, what a reader kept from completing, or what came sooner, is done again
        that much later (another thread's, a ``kcm`` command's, is not)."""
        if not self._wal_erase_owed:
            return
        now = time.monotonic()
        busy = True
        if now - self._wal_erase_tried >= WAL_ERASE_RETRY_S:
            self._wal_erase_tried = now
            try:
                busy = self._checkpoint_truncate()
            except Exception as e:  # noqa: BLE001 - tried again
                log.warn("truncating the SQLite WAL after a Destroy failed: {error}",
                         error=str(e))
        if not busy:
            self._wal_erase_owed = False
            return
        writer = self._writer
        if writer is not None and writer.is_current() and not self._wal_erase_again:
            self._wal_erase_again = True
            self._reactor.callFromThread(self._reactor.callLater, WAL_ERASE_RETRY_S,
                                         self._erase_wal_later)

    def _erase_wal_later(self) -> None:
        """(reactor) :meth:`_erase_wal` again, on the writer thread."""
        self._wal_erase_again = False
        writer = self._writer
        if writer is not None and self._wal_erase_owed:
            writer.submit(self._erase_wal)

    def _checkpoint_truncate(self) -> bool:
        """``PRAGMA wal_checkpoint(TRUNCATE)`` waiting for nobody; whether a reader or
        writer kept it from completing."""
        raw = self.engine.raw_connection()
        try:
            dbapi = raw.driver_connection
            dbapi.execute("PRAGMA busy_timeout=0")
            try:
                busy, _, _ = dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                dbapi.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        finally:
            raw.close()
        return bool(busy)

    def _on_writer_connection(self, run: Callable[[Connection], T]) -> T:
        """``run(kept)``: the writer thread's transaction on the connection it keeps."""
        with self._engine_lock:
            engine = self._engine_or_open()
        if engine.dialect.name == "sqlite":
            self._lock_process_writers()
            try:
                kept = self._writer_connection
                if kept is not None and kept.connection.info.get(
                        _SQLITE_FILE) != sqlite_file_identity(engine.url.database):
                    self._give_back_writer_connection()  # (the pool discards it)
                    raise file_replaced_error()
                return self._in_kept_connection(engine, run, check=False)
            finally:
                self._release_process_writers()
        return self._in_kept_connection(engine, run, check=True)

    def _in_kept_connection(self, engine: Engine, run: Callable[[Connection], T], *,
                            check: bool) -> T:
        now = time.monotonic()
        kept = self._writer_connection
        if kept is not None and check:
            old = now - self._writer_connection_opened >= POSTGRESQL_RECYCLE_S
            idle = now - self._writer_connection_used >= KEPT_CONNECTION_CHECK_S
            if old or (idle and not _answers_ping(engine, kept)):
                self._give_back_writer_connection()
                kept = None
        if kept is None:
            kept = engine.execution_options(**{WRITE_OPTION: True}).connect()
            if check and _read_only_session(kept):
                # Opened while the database took no writes (reads go on meanwhile): a
                # session opened now takes them if the database does again.
                self._drop_read_only_sessions(engine, kept)
                kept.close()
                kept = engine.execution_options(**{WRITE_OPTION: True}).connect()
            self._writer_connection = kept
            self._writer_connection_opened = now
        try:
            return run(kept)
        except BaseException as e:
            if read_only(e):
                self._drop_read_only_sessions(engine, kept)
            self._give_back_writer_connection()
            raise
        finally:
            self._writer_connection_used = time.monotonic()

    @staticmethod
    def _drop_read_only_sessions(engine: Engine, kept: Connection) -> None:
        """A write refused by a read-only session (a standby, or
        ``default_transaction_read_only``, which a session takes when it connects), or such
        a session about to be kept by the writer: this connection is discarded and the
        pool's idle ones closed, so that once the database takes writes again the next
        write does, on a session opened then."""
        kept.invalidate()
        engine.dispose()  # (connections lent now are left to their holders)

    def _give_back_writer_connection(self) -> None:
        """Return the writer's kept connection to the pool (which discards it if it was
        found broken); the next write transaction opens another."""
        kept, self._writer_connection = self._writer_connection, None
        if kept is None:
            return
        try:
            kept.close()
        except Exception:
            log.failure("closing the store writer's connection")

    def defer(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Call ``fn(*args)`` on a worker thread, outside any transaction; ``fn`` opens its
        own with :meth:`run_sync`. Lets a caller do its CPU work off the reactor too."""
        if self._threadpool is None:
            return fail(StoreStopped("Store.defer() before startService() or after stopService()"))
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def run_sync(self, fn: Callable[[Session], T], *, write: bool = True) -> T:
        """:meth:`run` in the calling thread, for the CLI and for migrations-time tools.

        Never call it on the reactor thread.
        """
        with self._engine_lock:
            engine = self._engine_or_open()
            make_session = self._sessions[write]
        if write and engine.dialect.name == "sqlite":
            # SQLite admits one writer; a thread that finds the write lock taken sleeps on
            # SQLite's own back-off schedule (up to 100 ms a try), which made the tail
            # latency under concurrent writes. Writers of this process queue here instead.
            self._lock_process_writers()
            try:
                return self._transaction(make_session, fn, write)
            finally:
                self._release_process_writers()
        return self._transaction(make_session, fn, write)

    def _transaction(self, make_session: Callable[[], Session], fn: Callable[[Session], T],
                     write: bool) -> T:
        measured = self.on_transaction
        if measured is None:
            return self._transaction_of(make_session, fn, write)
        started = time.perf_counter()
        try:
            return self._transaction_of(make_session, fn, write)
        finally:
            measured(write, time.perf_counter() - started)

    def _lock_database_writers(self, session: Session) -> None:
        """Begin ``session``'s write transaction holding the database's writers' lock (SQLite:
        ``BEGIN IMMEDIATE`` as the connection begins; PostgreSQL: the advisory lock), the
        wait told to :attr:`on_lock_wait`, held or failed."""
        waited = self.on_lock_wait
        asked = time.perf_counter() if waited is not None else 0.0
        try:
            connection = session.info[TRANSACTION_CONNECTION] = session.connection()
            lock_writers(session)
            if connection.dialect.name == "sqlite":
                self._file_lock_since = time.monotonic()
        finally:
            if waited is not None:
                waited("database", time.perf_counter() - asked)

    def _lock_process_writers(self) -> None:
        """Take this process's SQLite write lock (release it after), the wait told to
        :attr:`on_lock_wait`."""
        waited = self.on_lock_wait
        if waited is None:
            self._sqlite_writer.acquire()
            return
        asked = time.perf_counter()
        self._sqlite_writer.acquire()
        try:
            waited("process", time.perf_counter() - asked)
        except BaseException:
            self._sqlite_writer.release()  # (the caller releases only once this returned)
            raise

    def _release_process_writers(self) -> None:
        """Let go of this process's SQLite write lock, its transaction over (committed or
        rolled back: the file's lock is let go too)."""
        self._file_lock_since = None
        self._sqlite_writer.release()

    def _transaction_of(self, make_session: Callable[[], Session],
                        fn: Callable[[Session], T], write: bool) -> T:
        try:
            return self._transaction_in(make_session, fn, write)
        except Exception as e:
            if write:
                if read_only(e):
                    self._drop_pooled_sessions()
                raise
            refused = read_transaction_refused(e)  # (a read path that wrote: a bug)
            if refused is e:
                raise
            raise refused from e

    def _drop_pooled_sessions(self) -> None:
        """A write of a worker thread refused by a read-only session (one opened while
        ``default_transaction_read_only`` was set for the database or role): the pool's
        idle sessions, this one among them, are closed, as the writer thread's refusals do
        (:meth:`_drop_read_only_sessions`); else the pool lent them on, and writes other
        than the writer thread's (a gateway's fetch of service keys, an audit checkpoint)
        failed until they were recycled, 30 minutes after the database took writes
        again."""
        with self._engine_lock:
            engine = self._engine
        if engine is not None:
            engine.dispose()  # (connections lent now are left to their holders)

    def _transaction_in(self, make_session: Callable[[], Session],
                        fn: Callable[[Session], T], write: bool) -> T:
        with make_session() as session:
            with session.begin():
                info = session.info
                if self.audit_key is not None:
                    info[AUDIT_KEY_INFO] = self.audit_key
                if self.row_seal is not None:
                    info[ROW_SEAL_INFO] = self.row_seal
                if self.on_audit_written is not None:
                    info[AUDIT_WRITTEN_INFO] = self.on_audit_written
                if self.on_audit_head is not None:
                    info[AUDIT_HEAD_INFO] = self.on_audit_head
                info[KNOWN_FACTS_INFO] = self.known
                if self.objects.size:
                    info[OBJECT_CACHE_INFO] = self.objects
                    info[CACHE_EPOCH_INFO] = self.objects.epoch  # (before the first read)
                info[WRITE_INFO] = write
                info[SCHEMA_REVISION_INFO] = self.schema_revision
                if write:
                    info[MAX_OBJECTS_INFO] = self.max_objects_per_tenant
                    self._lock_database_writers(session)
                else:
                    info[TRANSACTION_CONNECTION] = session.connection()
                    if session.get_bind().dialect.name == "postgresql":
                        session.execute(text("SET TRANSACTION READ ONLY"))
                result = fn(session)
                drain_pending(session)
                if write:
                    check_transaction(session)  # (a commit of nothing would "succeed")
            # Committed: what a reader put back since this transaction forgot its objects
            # was read before the commit (a Destroy's key in the clear, say).
            for tenant, uid in info.get(WRITTEN_INFO) or ():
                self.objects.forget(tenant, uid)
            learnt = info.pop(LEARNT_INFO, None)
            if learnt:
                self.known.add_all(learnt)
            if info.pop(MATERIAL_ERASED_INFO, False):
                self._erase_wal_soon(session)
            written = info.pop(OUTBOX_WRITTEN_INFO, 0)
            if written:
                with self._outbox_committed_lock:  # commits of two threads may finish
                    self.outbox_committed = max(self.outbox_committed, written)  # crossed
                if self.on_outbox_written is not None:
                    self.on_outbox_written()
            return result
