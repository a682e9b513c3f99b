"""The root of a KCM process's service tree (kcm-core, kcm-gateway).

:class:`ProcessService` promises two things its children cannot:

* **It starts whole or not at all.** Children start in the order they were added; if one
  fails, those already started are stopped again, in reverse order, a critical event names
  the child and the error, and the error propagates (twistd then exits with status 1).
* **Its memory stays its own.** It starts by forbidding core dumps and same-user ptrace
  (:mod:`kcm.no_core_dumps`): it holds keys.
* **Its log is KCM's.** When twistd attaches it to the Application it builds, it registers
  :func:`kcm.logging.log_observer` (on :func:`open_log`, in the configured ``log_format`` and
  ``log_level``, its audit lines written together every :data:`LOG_LINGER` seconds at
  most) as the Application's ``ILogObserver`` component, which is where twistd looks
  for an application's log observer before it starts logging; ``log_file`` names a file
  instead of standard output (what a daemonized twistd needs). twistd's ``--logger`` still
  takes precedence; its ``--logfile`` and ``--syslog`` do not apply.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.application.service import IService, MultiService, Service
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from kcm import compiled, reactor_dispatch
from kcm.logging import log_observer
from kcm.no_core_dumps import forbid_core_dumps

__all__ = ["LOG_LINGER", "ProcessService", "open_log"]

log = Logger()

#: Seconds a process's log writer waits after an audit line is queued for more to write
#: with it: a request's audit line reaches the log at most this much after its answer (the
#: audit record itself is in the database before the answer).
LOG_LINGER = 0.05


def open_log(path: str) -> IO[str]:
    """The log's stream: standard output for ``-``, else ``path`` appended to, line-buffered,
    created owner-only (0600: the log carries the audit records)."""
    if path in ("", "-"):
        return sys.stdout
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


class ProcessService(MultiService):
    """A KCM process: its children, started in order, all or none."""

    def __init__(self, process_name: str, *, log_format: str = "json", log_level: str = "info",
                 log_file: IO[str] | None = None, log_path: str = "-",
                 log_fields: Mapping[str, Any] | None = None, reactor: Any = None,
                 busy_poll: float = 0.0) -> None:
        """``reactor``: the process's (Twisted's global one by default), whose events
        :mod:`kcm.reactor_dispatch` hands over directly once the process starts;
        ``busy_poll``: seconds its poll spins before it sleeps (:mod:`kcm.busy_poll`)."""
        super().__init__()
        self._reactor = reactor
        #: Seconds its poll spins before it sleeps (kcm.busy_poll; 0: none).
        self.busy_poll = busy_poll
        self.process_name = process_name
        #: Set once the process has begun to stop (its /readyz then answers 503).
        self.stopping = False
        self.log_format = log_format
        self.log_level = log_level
        self.log_path = log_path
        self._log_file = log_file
        #: Fields added to every line of this process's log (see kcm.logging).
        self.log_fields = dict(log_fields or {})

    def setServiceParent(self, parent: Any) -> None:
        # makeService cannot reach the Application twistd builds around its service; this is
        # the moment they meet, and twistd has not started logging yet (app.AppLogger.start
        # runs after makeService and reads the component).
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, log_observer(
                self._log_file or open_log(self.log_path), log_format=self.log_format,
                level=self.log_level, fields=self.log_fields, background=True,
                linger=LOG_LINGER))
        super().setServiceParent(parent)

    def startService(self) -> None:
        started: list[IService] = []
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        # Before any child opens a key: no core dump, no same-user ptrace.
        forbid_core_dumps()
        installed = reactor_dispatch.install(reactor, busy_poll=self.busy_poll)
        if self.busy_poll:
            if installed:
                log.info("{process} polls for events without sleeping for {us:.0f} us after "
                         "each turn that had some (busy_poll_us)", process=self.process_name,
                         us=self.busy_poll * 1e6)
            else:
                log.warn("{process}: busy_poll_us is ignored: the reactor is not epoll",
                         process=self.process_name)
        absent = compiled.missing()
        if absent:
            log.warn("{process} runs without its compiled modules ({modules}): the same "
                     "answers at a higher CPU cost per request; reinstall with a C compiler "
                     "and Python's headers", process=self.process_name,
                     modules=", ".join(absent))
        Service.startService(self)
        try:
            for child in self:
                child.startService()
                started.append(child)
        except BaseException as error:
            failed = child.name or type(child).__name__
            log.critical("{process} did not start: {service}: {error}",
                         process=self.process_name, service=failed,
                         error=str(error) or type(error).__name__)
            for done in reversed(started):
                try:
                    done.stopService()
                except Exception:
                    log.failure("stopping {service} after the failed start", service=done.name)
            self.running = 0
            raise
