"""Wake the event fan-out at commit time on PostgreSQL, whichever core committed.

Every transaction that adds outbox events sends ``NOTIFY kcm_outbox``
(:func:`kcm.core.store.repository.append_outbox`); PostgreSQL delivers it when, and only
if, the transaction commits. :class:`OutboxListener` keeps one connection of its own
listening on that channel, in a thread, and calls ``wake`` on the reactor for what it hears
(at most one call waiting at a time, however many commits arrive meanwhile). When the
connection breaks it reconnects after ``retry_delay`` and wakes once more, for what was
committed while it was not listening; the fan-out's own poll bounds the delay meanwhile.
Its failures are logged as a warning at the first, then at most once every
:data:`FAILURE_LOG_INTERVAL` seconds (with how many failed meanwhile) unless the error
changes: it retries every second while the database is down.

On SQLite (one core per database file) it does nothing: the poll is the only reader.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from kcm.core.store.engine import Store
from kcm.core.store.pg_session import is_postgresql, own_connection
from kcm.core.store.repository import OUTBOX_CHANNEL

log = Logger()

#: Seconds between two lines of the same failure to listen (module docstring).
FAILURE_LOG_INTERVAL = 30.0


class OutboxListener(Service):
    """LISTENs for outbox commits and calls ``wake`` (on the reactor) for them."""

    name = "kcm-outbox-listener"

    def __init__(self, store: Store, wake: Callable[[], None], reactor: Any, *,
                 retry_delay: float = 1.0, stop_check: float = 0.5) -> None:
        self._store = store
        self._wake = wake
        self._reactor = reactor
        self.retry_delay = retry_delay
        self._stop_check = stop_check
        self._stopping = threading.Event()
        self._pending = threading.Lock()  # held from a wake's scheduling to its run
        self._thread: threading.Thread | None = None
        #: Whether the LISTEN is in place now (for tests and health).
        self.listening = False
        #: Notifications heard since the service started.
        self.heard = 0

    def startService(self) -> None:
        super().startService()
        if not is_postgresql(self._store.engine):
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._listen_forever, name=self.name,
                                        daemon=True)
        self._thread.start()

    def stopService(self) -> None:
        super().stopService()
        self._stopping.set()  # the thread notices within stop_check seconds
        thread, self._thread = self._thread, None
        if thread is not None:
            # Ended before the store stops (kcm-core stops this first): a thread left
            # running could ask the stopped store for its engine, and open it again. A
            # connection attempt to a server that does not answer is not waited for.
            thread.join(self._stop_check + 0.5)

    # On the listening thread ---------------------------------------------------------------
    def _listen_forever(self) -> None:
        logged: tuple[str, float] | None = None  # (the error logged last, when)
        failures = 0  # since that line
        while not self._stopping.is_set():
            try:
                self._listen_once()
            except Exception as e:
                if self.listening:  # it listened since: a new failure, said at once
                    logged, failures = None, 0
                error = str(e).splitlines()[0] if str(e) else type(e).__name__
                failures += 1
                now = time.monotonic()
                if (logged is None or logged[0] != error
                        or now - logged[1] >= FAILURE_LOG_INTERVAL):
                    log.warn("listening for outbox commits failed ({error}); retrying every "
                             "{delay}s, polling meanwhile ({count} failed attempt(s) since "
                             "the last line)", error=error, delay=self.retry_delay,
                             count=failures)
                    logged, failures = (error, now), 0
            else:
                logged, failures = None, 0
            finally:
                self.listening = False
            self._stopping.wait(self.retry_delay)

    def _listen_once(self) -> None:
        if self._stopping.is_set():
            return
        connection = own_connection(self._store.engine)
        try:
            connection.execute(f"LISTEN {OUTBOX_CHANNEL}")
            self.listening = True
            log.info("listening for outbox commits (NOTIFY {channel})", channel=OUTBOX_CHANNEL)
            self._schedule_wake()  # what was committed before the LISTEN took
            while not self._stopping.is_set():
                for _ in connection.notifies(timeout=self._stop_check):
                    self.heard += 1
                    self._schedule_wake()
                    if self._stopping.is_set():
                        break
        finally:
            connection.close()

    def _schedule_wake(self) -> None:
        if self._pending.acquire(blocking=False):
            self._reactor.callFromThread(self._run_wake)

    # On the reactor ------------------------------------------------------------------------
    def _run_wake(self) -> None:
        self._pending.release()
        try:
            self._wake()
        except Exception:
            log.failure("waking the event fan-out failed")
