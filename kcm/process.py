"""The root of a KCM process's service tree (kcm-core, kcm-gateway).

:class:`ProcessService` promises two things its children cannot:

* **It starts whole or not at all.** Children start in the order they were added; if one
  fails, those already started are stopped again, in reverse order, a critical event names
  the child and the error in one line (the TLS file or policy file at fault when the error
  itself does not; the traceback only at debug level), and the error propagates: twistd
  then exits with status 1, printing no traceback for it (:func:`_quiet_start_failure`).
* **Its memory stays its own.** It starts by forbidding core dumps and same-user ptrace
  (:mod:`kcm.no_core_dumps`): it holds keys.
* **Its log is KCM's.** When twistd attaches it to the Application it builds, it registers
  :func:`kcm.logging.log_observer` (on :func:`open_log`, in the configured ``log_format`` and
  ``log_level``, its audit lines written together every :data:`LOG_LINGER` seconds at
  most) as the Application's ``ILogObserver`` component, which is where twistd looks
  for an application's log observer before it starts logging; ``log_file`` names a file
  instead of standard output (a daemonized twistd's ``-`` is its ``--logfile``:
  :meth:`kcm.config_file.ServiceOptions.with_daemon_log`). twistd's ``--logger`` still
  takes precedence; its ``--syslog`` does not apply.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.application.service import IService, MultiService, Service
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.components import Componentized

from kcm import compiled, reactor_dispatch
from kcm.config_file import TlsFiles, tls_file_problem
from kcm.logging import log_observer
from kcm.no_core_dumps import forbid_core_dumps
from kcm.stop_signals import guard_stop_signals

__all__ = ["LOG_LINGER", "ProcessService", "open_log", "start_failure_reason"]

log = Logger()

#: Seconds a process's log writer waits after an audit line is queued for more to write
#: with it: a request's audit line reaches the log at most this much after its answer (the
#: audit record itself is in the database before the answer).
LOG_LINGER = 0.05


def open_log(path: str) -> IO[str]:
    """The log's stream: standard output for ``-``, else ``path`` appended to, line-buffered,
    created owner-only (0600: the log carries the audit records); an existing file must pass
    :func:`log_file_refusal` (``OSError`` naming why not), and is never a symbolic link."""
    if path in ("", "-"):
        return sys.stdout
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o600)
    refusal = log_file_refusal(os.fstat(fd))
    if refusal is not None:
        os.close(fd)
        raise OSError(errno.EPERM, refusal)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


def log_file_refusal(status: os.stat_result) -> str | None:
    """Why a log file (already there) must not be written, or None. The log carries the
    audit records: a file another user owns, or one others may read, would hand them over
    (one made beforehand in a shared directory, say). The group may read it (logrotate's
    ``create 0640 kcm adm``)."""
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    if status.st_uid != os.geteuid():
        return "it belongs to another user"
    if status.st_mode & 0o007:
        return "others may read or write it (chmod o-rwx)"
    return None


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
            try:
                stream = self._log_file or open_log(self.log_path)
            except OSError as e:
                # twistd has no log yet: one line on standard error, status 1.
                raise SystemExit(f"{self.process_name} did not start: log_file: cannot open "
                                 f"{self.log_path}: {e.strerror}") from None
            parent.setComponent(ILogObserver, log_observer(
                stream, log_format=self.log_format,
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
        # A second SIGTERM while this one drains is not another stop (kcm.stop_signals;
        # a test's task.Clock has no signals to guard).
        if hasattr(reactor, "callWhenRunning"):
            reactor.callWhenRunning(guard_stop_signals, reactor)
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
            reason = start_failure_reason(self, failed, error)
            log.critical("{process} did not start: {service}: {error}",
                         process=self.process_name, service=failed, error=reason)
            if self._log_file is None and self.log_path not in ("", "-"):
                # The log is a file: without this, the terminal (or a unit's journal) shows
                # the status alone. (twistd has made sys.stderr a log writer by now.)
                line = (f"{self.process_name} did not start: {failed}: {reason} (log: "
                        f"{self.log_path})\n")
                with contextlib.suppress(OSError):
                    os.write(2, line.encode("utf-8", "replace"))
            log.failure("{process}: the failed start of {service}", level=LogLevel.debug,
                        process=self.process_name, service=failed)
            _quiet_start_failure(error)
            for done in reversed(started):
                try:
                    done.stopService()
                except Exception:
                    log.failure("stopping {service} after the failed start", service=done.name)
            self.running = 0
            raise


#: The services whose start builds a TLS context from the configured files.
_TLS_READERS = frozenset({"kcm-kmip-listener", "kcm-link-listener", "kcm-gateway-identity",
                          "kcm-tls-files", "kcm-link", "kcm-tls-refresh"})


def start_failure_reason(process: Any, service: str, error: BaseException) -> str:
    """The reason of a failed start, one line: ``error``'s message, or where it names no
    file, the file of ``process``'s configuration (``process.config``) at fault."""
    reason = " ".join((str(error) or type(error).__name__).split())
    if isinstance(error, OSError) and error.filename and error.strerror:
        # (Of two files, the second: a link or a move failed where it was to go, e.g. a
        # unix: listener's lock file, linked to the process id.)
        reason = f"{os.fsdecode(error.filename2 or error.filename)}: {error.strerror}"
    config = getattr(process, "config", None)
    if config is None:
        return reason
    if service in _TLS_READERS and isinstance(getattr(config, "tls", None), TlsFiles):
        from twisted.internet.error import CannotListenError

        if not isinstance(error, CannotListenError):
            section = str(getattr(process, "process_name", "")).removeprefix("kcm-")
            try:
                problem = tls_file_problem(config.tls, section)
            except Exception:  # the diagnosis must not hide the error it explains
                problem = None
            if problem is not None:
                return problem
    policy_file = getattr(config, "policy_file", None)
    if service == "kcm-policy" and policy_file:
        return (f"policy_file {reason}" if reason.startswith(f"{policy_file}:")
                else f"policy_file {policy_file}: {reason}")
    return reason


#: The error whose start failure was logged already (a process fails to start once).
_reported: list[BaseException] = []


def _quiet_start_failure(error: BaseException) -> None:
    """Make ``error``, when it reaches the top of the program uncaught (twistd re-raises a
    failed start after removing its pid file and telling a daemon's parent), end the process
    with status 1 and no traceback: its reason is in the log already, one critical line,
    and the traceback at debug level. Any other uncaught error prints as before."""
    _reported[:] = [error]
    if getattr(sys.excepthook, "_kcm_quiet", False):
        return
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if any(value is reported for reported in _reported):
            return
        previous(kind, value, tb)

    excepthook._kcm_quiet = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook
