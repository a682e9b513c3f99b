"""The log of every KCM process: ``twisted.logger`` events, written one per line.

KCM code logs through :class:`twisted.logger.Logger` only. :func:`log_observer` builds the
observer a process installs (see :mod:`kcm.process`): every event at or above the configured
level (and the audit records and checkpoints, ``kcm.audit``, at info whatever the level:
:func:`level_filter`), written to a file as

* ``json`` (the default): one JSON object per line, with ``time`` (ISO 8601, UTC),
  ``level`` (Twisted's level name: debug, info, warn, error, critical), ``namespace`` (the
  logger's, e.g. ``kcm.audit``), ``text`` (the formatted message), the event's own fields
  (those given to the ``Logger`` call, under their names; values JSON cannot hold are
  written as their ``repr``), and ``traceback`` when the event carries a failure. The four
  fixed keys come first and win over a field of the same name.
* ``text``: Twisted's classic readable lines, ``TIME [NAMESPACE#LEVEL] TEXT``.

Fields may carry what a client sent, and the messages we write are short ASCII: so in JSON
(which escapes everything but printable ASCII) a text field, and the ``text``, longer than
:data:`FIELD_LIMIT` (:data:`TEXT_LIMIT`) characters is cut there and says how long it was,
and so is every string inside a field's dicts and lists (an audit record's ``detail``);
in text lines, each text field is cut the same way, and every character of the line but
printable ASCII is escaped (``\\x1b``, ``\\n``, ``\\u00e9``): what a field holds can neither
start a line of its own nor reach a terminal's escape sequences; only a traceback follows
the line, on lines that start with a tab (:func:`event_as_text`).

A process may add fixed ``fields`` to every line (a kcm-gateway worker adds its ``worker``
index and ``pid``, so that the lines of several workers in one log stay apart): in JSON they
are added to the event's own fields (and win over one of the same name); in text they join
the bracket, ``[NAMESPACE#LEVEL worker=1 pid=4242]``.

Events may come from any thread (audit records are emitted by the store's worker threads):
each line is written and flushed whole under a lock. A process's own log
(``background=True``, what :class:`kcm.process.ProcessService` installs) keeps the disk off
the requests' path: the line of an audit record (namespace ``kcm.audit``, one per request)
is queued, and a thread of the observer's own renders and writes the queued events, many
per write (it waits up to ``linger`` seconds after the first for others to join it, so that
at low load it does not wake once per request); any other event is written at once, after
the queued ones, so lines keep the order of their events. The queue is bounded
(``max_pending`` events): a thread that finds it full waits for the writer, so no line is
ever dropped, and a disk that cannot keep up slows the loggers down rather than growing
memory. The writer renders what it took a few lines at a time and, unless lines are
piling up, pauses briefly between those slices: rendering holds Python's interpreter lock,
and the lines of ``linger`` seconds rendered at one go held every request of the process
up for a millisecond or more, which was most of kcm-core's p99 (docs/benchmarks.md).
Lines still queued are written when the process exits normally (``atexit``) or when
:meth:`flush` is called; a killed process loses the audit lines of its last moments (never
an audit record: the database holds those, and ``kcm audit tail`` reads them there).
Lines a full disk has no room for are lost, not waited for, and never raise: the first
line written again says how many were lost (:mod:`kcm.log_sink`).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from string import Formatter
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    eventAsText,
    formatEvent,
)
from zope.interface import implementer

from kcm.log_sink import LogSink

__all__ = ["AUDIT_NAMESPACES", "FIELD_LIMIT", "LOG_FORMATS", "LOG_LEVELS", "QUIET_NAMESPACES",
           "TEXT_LIMIT",
           "BackgroundLineWriter", "check_log_format", "event_as_json", "event_as_text",
           "format_text", "level_filter", "log_observer", "parse_level", "printable"]

#: The values of the ``log_format`` setting.
LOG_FORMATS = ("json", "text")

#: The values of the ``log_level`` setting (``warning`` is taken for ``warn``).
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")

#: The characters of a text field a line carries; the rest is cut (see the module docstring).
FIELD_LIMIT = 1024
#: The characters of the ``text`` of a JSON line.
TEXT_LIMIT = 2048

# Keys the legacy twisted.python.log bridge adds beside the log_* ones; they repeat what
# time, level and text already say.
_LEGACY_KEYS = frozenset({"message", "isError", "time", "system", "format", "why", "failure"})


def parse_level(name: str) -> LogLevel:
    """The :class:`LogLevel` a ``log_level`` setting names; ValueError for anything else."""
    if not isinstance(name, str):
        raise ValueError("log_level must be a string: debug, info, warn, error or critical")
    key = name.strip().lower()
    if key == "warning":
        key = "warn"
    if key not in LOG_LEVELS:
        raise ValueError(f"unknown log level {name!r} (use one of debug, info, warn, error, "
                         "critical)")
    return LogLevel.levelWithName(key)


def check_log_format(name: str) -> str:
    """``name`` if it is a ``log_format`` value; ValueError otherwise."""
    if not isinstance(name, str) or name not in LOG_FORMATS:
        raise ValueError(f"unknown log format {name!r} (use json or text)")
    return name


def event_as_json(event: LogEvent, fields: Mapping[str, Any] | None = None) -> str:
    """One event as one line of JSON (no newline inside, one at the end), with ``fields``
    added; see the module docstring for its keys."""
    legacy = "isError" in event and "message" in event
    text = format_text(event)
    record: dict[str, Any] = {
        "time": _utc_time(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "text": text if len(text) <= TEXT_LIMIT else _cut(text, TEXT_LIMIT),
    }
    skip = _SKIPPED_LEGACY if legacy else _FIXED_KEYS
    record.update({key: value if ((kind := type(value)) is str and len(value) <= FIELD_LIMIT)
                   or kind in _SCALARS else _bounded(value)
                   for key, value in event.items() if key not in skip and key[:4] != "log_"})
    for key, value in (fields or {}).items():
        if key not in ("time", "level", "namespace", "text"):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record.setdefault("traceback", failure.getTraceback())
    return _ENCODE(record) + "\n"


#: The keys every line starts with; an event's own field of the same name is left out.
_FIXED_KEYS = frozenset({"time", "level", "namespace", "text"})
_SKIPPED_LEGACY = _FIXED_KEYS | _LEGACY_KEYS

#: ``json.dumps(record, default=repr, skipkeys=True)``, its encoder made once (``dumps``
#: with options builds one per call).
_ENCODE = json.JSONEncoder(default=repr, skipkeys=True).encode


def _cut(text: str, limit: int) -> str:
    return f"{text[:limit]}... ({len(text)} characters)"


#: Field types that never need cutting.
_SCALARS = frozenset({int, float, bool, type(None)})
#: Field types whose strings :func:`_bounded` cuts.
_CONTAINERS = frozenset({dict, list, tuple})


def _bounded(value: Any) -> Any:
    """``value`` with every string in it (the values of dicts, lists and tuples too, at any
    depth) cut at :data:`FIELD_LIMIT` characters; ``value`` itself when none is longer."""
    kind = type(value)
    if kind in _CONTAINERS:
        return value if _fits(value) else _cut_within(value)
    if isinstance(value, str) and len(value) > FIELD_LIMIT:
        return _cut(value, FIELD_LIMIT)
    return value


def _fits(container: Any) -> bool:
    """Whether no string in ``container`` (a dict's values, or a list's or tuple's items,
    at any depth) is longer than :data:`FIELD_LIMIT`: the usual case, checked without
    copying anything."""
    for item in container.values() if type(container) is dict else container:
        kind = type(item)
        if kind is str:
            if len(item) > FIELD_LIMIT:
                return False
        elif kind in _CONTAINERS:
            if not _fits(item):
                return False
        elif kind not in _SCALARS and isinstance(item, str):
            return False  # (a subclass of str: cut it, and be done)
    return True


def _cut_within(container: Any) -> Any:
    if type(container) is dict:
        return {key: _bounded(item) for key, item in container.items()}
    return [_bounded(item) for item in container]


def printable(text: str, limit: int = FIELD_LIMIT) -> str:
    """``text`` as a log line may carry it: printable ASCII, anything else escaped as Python
    writes it in a string (``\\x1b``, ``\\n``, ``\\u00e9``), cut after ``limit``
    characters (saying how long it was)."""
    shown = text if text.isascii() and text.isprintable() else (
        text[:limit].encode("unicode_escape").decode("ascii"))
    if len(text) <= limit and len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(text)} characters)"


#: What a text line may hold as it is: printable ASCII.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def event_as_text(event: LogEvent) -> str | None:
    """One event as Twisted's classic text line (``TIME [NAMESPACE#LEVEL] TEXT``, as
    :func:`twisted.logger.formatEventAsClassicLogText` writes it), with every text field
    :func:`printable` and anything else in the line but printable ASCII escaped too (an
    object's text, a newline included): one line. Only a failure's traceback follows it, on
    lines of its own that start with a tab (escaped the same way)."""
    unprintable = {key: printable(value) for key, value in event.items()
                   if type(value) is str and key[:4] != "log_" and not (
                       len(value) <= FIELD_LIMIT and value.isascii() and value.isprintable())}
    unprintable.update({key: _cut_within(value) for key, value in event.items()
                        if type(value) in _CONTAINERS and key[:4] != "log_"
                        and not _fits(value)})
    shown = {**event, **unprintable} if unprintable else event
    text = eventAsText(shown, includeTraceback=False)
    failure = event.get("log_failure")
    if not text:
        if failure is None:
            return None
        text = eventAsText({**shown, "log_format": "(no message)"}, includeTraceback=False)
    if _UNPRINTABLE.search(text):
        text = _UNPRINTABLE.sub(_escaped_char, text)
    if failure is not None:
        try:
            traceback = failure.getTraceback()
        except Exception:  # as Twisted's own text does
            traceback = "(UNABLE TO OBTAIN TRACEBACK FROM EVENT)"
        text += "".join(f"\n\t{_UNPRINTABLE.sub(_escaped_char, line)}"
                        for line in traceback.splitlines())
    return text + "\n"


def _escaped_char(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def format_text(event: LogEvent) -> str:
    """``formatEvent(event)``, the same text, without parsing the event's format again
    for each event when its fields are plain names (``{seq}``, as most of ours are): the
    parse of each such format is kept (an audit line's text cost 7.7 µs, now 1.5 µs)."""
    log_format = event.get("log_format")
    parts = _plain_format(log_format) if type(log_format) is str else None
    if parts is None:
        return formatEvent(event)
    try:
        return "".join([literal if field is None else literal + format(event[field], "")
                        for literal, field in parts])
    except Exception:
        return formatEvent(event)  # (a field missing: its words for it)


@lru_cache(maxsize=256)
def _plain_format(log_format: str) -> tuple[tuple[str, str | None], ...] | None:
    """``log_format`` as (literal text, field name or None) pairs, when every field in it
    is a plain name with no conversion or format spec; else None."""
    try:
        parsed = list(Formatter().parse(log_format))
    except ValueError:
        return None
    parts = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (spec or conversion or not field.isidentifier()):
            return None
        parts.append((literal, field))
    return tuple(parts)


def _with_fields(render: Callable[[LogEvent], str | None], fields: dict[str, Any], *,
                 json_lines: bool) -> Callable[[LogEvent], str | None]:
    if json_lines:
        return lambda event: event_as_json(event, fields)
    suffix = "".join(f" {key}={value}" for key, value in fields.items())

    def text(event: LogEvent) -> str | None:
        level = getattr(event.get("log_level"), "name", "-")
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
        return render({**event, "log_system": system + suffix})
    return text


def _utc_time(when: float | None) -> str | None:
    """``when`` as ``strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` in UTC; the text up to the second is
    made once per second (``strftime`` cost an audit line a third of its rendering)."""
    global _SECOND
    if when is None:
        return None
    moment = datetime.fromtimestamp(when, UTC)
    second = (moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year)
    cached = _SECOND
    if cached[0] != second:
        cached = (second, moment.strftime("%Y-%m-%dT%H:%M:%S."))
        _SECOND = cached  # (one tuple, swapped whole: any thread may log)
    return f"{cached[1]}{moment.microsecond:06d}Z"


_SECOND: tuple[tuple[int, ...], str] = ((), "")


def _lost_lines_note(render: Callable[[LogEvent], str | None]
                     ) -> Callable[[int, str], str | None]:
    """The line, rendered as ``render`` renders the others, that says ``lost`` lines could
    not be written (:class:`kcm.log_sink.LogSink`)."""
    def note(lost: int, why: str) -> str | None:
        return render({"log_namespace": __name__, "log_level": LogLevel.warn,
                       "log_format": _LOST_LINES, "log_time": time.time(), "lost": lost,
                       "why": why})
    return note


#: What the first line written after lines were lost says.
_LOST_LINES = "{lost} log line(s) before this one could not be written ({why}): they are lost"


@implementer(ILogObserver)
class _LineWriter:
    """Writes each event as the line ``render`` makes of it (None: nothing), whole."""

    def __init__(self, out: IO[str], render: Callable[[LogEvent], str | None]) -> None:
        self._sink = LogSink(out, _lost_lines_note(render))
        self._render = render
        self._lock = threading.Lock()
        #: The thread writing now (None: none), and the lines a signal handler logged on
        #: that thread meanwhile: written after its line (see BackgroundLineWriter).
        self._writer: int | None = None
        self._deferred: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        line = self._render(event)
        if not line:
            return
        if self._writer == threading.get_ident():
            self._deferred.append(line)  # a signal handler, inside this thread's write
            return
        with self._lock:
            self._writer = threading.get_ident()
            try:
                self._sink.write(line)
                while self._deferred:
                    self._sink.write(self._deferred.pop(0))
            finally:
                self._writer = None


@implementer(ILogObserver)
class BackgroundLineWriter:
    """Writes the events of ``queued`` namespaces (the audit records'; see the module
    docstring) on a thread of its own, and every other event at once, after the queued
    ones: logging an audit record costs its caller an append, not a write and a flush, and
    the lines keep the order the events had."""

    def __init__(self, out: IO[str], render: Callable[[LogEvent], str | None], *,
                 queued: frozenset[str] = frozenset({"kcm.audit"}),
                 max_pending: int = 65_536, linger: float = 0.0,
                 batch: int = 256, slice_lines: int = 8, pause: float = 0.0002,
                 max_pauses: int = 8, sleep: Callable[[float], object] = time.sleep) -> None:
        if (max_pending < 1 or batch < 1 or linger < 0 or slice_lines < 1 or pause < 0
                or max_pauses < 1):
            raise ValueError("need max_pending >= 1, batch >= 1, linger >= 0, "
                             "slice_lines >= 1, pause >= 0 and max_pauses >= 1")
        self._sink = LogSink(out, _lost_lines_note(render))
        self._render = render
        self._queued = queued
        self._max_pending = max_pending
        #: Seconds the writer waits, once a line is queued, for more to write with it
        #: (unless ``batch`` are queued first, or a flush or another line asks for them).
        self._linger = linger
        self._batch = min(batch, max_pending)
        #: The writer renders this many lines (more in a batch that would need more than
        #: ``max_pauses`` pauses), then pauses ``pause`` seconds (``sleep``) before the next
        #: ones, while fewer than ``batch`` lines wait: the other threads of the process get
        #: the interpreter lock (and the CPU) meanwhile. A thread that logs another event at
        #: once waits for the batch being written, pauses included: they are bounded.
        self._slice = slice_lines
        self._pause = pause
        self._max_pauses = max_pauses
        self._sleep = sleep
        self._pending: deque[LogEvent] = deque()
        self._new_locks()
        atexit.register(self.flush)
        # A daemonizing twistd forks after the observer is made: the child, which logs,
        # needs locks of its own and a writer thread of its own (started on first use).
        os.register_at_fork(after_in_child=self._new_locks)

    def _new_locks(self) -> None:
        self._busy = False
        #: Set by :meth:`flush`: the writer stops lingering and writes what is queued.
        self._hurry = False
        self._changed = threading.Condition()
        #: Held while taking queued events and writing them: so lines keep their order.
        self._writing = threading.Lock()
        #: The thread that holds ``_writing`` to write an event it logged (None: none).
        self._writer: int | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, event: LogEvent) -> None:
        me = threading.get_ident()
        if self._writer == me or self._changed._is_owned():  # type: ignore[attr-defined]
            # A signal handler (twistd's SIGTERM one logs) interrupted this thread while it
            # wrote or queued: the locks are this thread's, so the event waits for the
            # writer thread, whatever the queue holds (waiting for room, or for the lock,
            # would wait for this very thread).
            with self._changed:
                self._ensure_thread()
                self._pending.append(event)
                self._changed.notify_all()
            return
        if event.get("log_namespace") not in self._queued:
            with self._writing:
                self._writer = me
                try:
                    self._write([*self._take(), event])
                finally:
                    self._writer = None
            return
        with self._changed:
            self._ensure_thread()
            while len(self._pending) >= self._max_pending:
                self._changed.wait()
            self._pending.append(event)
            if len(self._pending) in (1, self._batch):
                self._changed.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event queued so far is written (at most ``timeout`` seconds);
        whether they were."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._pending or self._busy:
                # (each time round: lines queued while the writer wrote do not linger)
                self._hurry = True
                self._changed.notify_all()
                self._ensure_thread()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        # A line being written by a thread that logged at once ends its write first.
        if not self._writing.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        self._writing.release()
        return True

    def _ensure_thread(self) -> None:
        # Called holding ``_changed``.
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kcm-log-writer",
                                            daemon=True)
            self._thread.start()

    def _take(self) -> list[LogEvent]:
        with self._changed:
            batch = list(self._pending)
            self._pending.clear()
            self._changed.notify_all()  # room again for a logger that waits
            return batch

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    self._changed.wait()
                self._wait_for_company()
            with self._writing:
                with self._changed:
                    self._busy = True
                self._writer = threading.get_ident()
                try:
                    self._write(self._take(), paced=True)
                finally:
                    self._writer = None
                    with self._changed:
                        self._busy = False
                        self._changed.notify_all()

    def _wait_for_company(self) -> None:
        # Called holding ``_changed`` with lines queued: one write (and one wake-up of this
        # thread) for the lines of ``linger`` seconds, not one per request at low load.
        deadline = time.monotonic() + self._linger
        while self._pending and not self._hurry and len(self._pending) < self._batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.wait(left)
        self._hurry = False

    def _write(self, batch: list[LogEvent], *, paced: bool = False) -> None:
        """Render ``batch`` and write it in one write; ``paced`` (the writer thread): with
        a pause after every ``slice_lines`` lines rendered (at most ``max_pauses`` a batch),
        unless ``batch`` lines are queued again (the disk and the loggers come first then)."""
        lines = []
        pause = self._pause if paced else 0.0
        every = max(self._slice, -(-len(batch) // (self._max_pauses + 1)))
        for index, event in enumerate(batch):
            if pause and index and not index % every and len(self._pending) < self._batch:
                self._sleep(pause)
            try:
                line = self._render(event)
            except Exception as e:  # one event that cannot be rendered loses only itself
                line = f"unrenderable log event: {type(e).__name__}\n"
            if line:
                lines.append(line)
        if lines:
            self._sink.write("".join(lines))  # (a full disk costs lines: kcm.log_sink)


def log_observer(out: IO[str], *, log_format: str = "json", level: str = "info",
                 fields: Mapping[str, Any] | None = None,
                 background: bool = False, linger: float = 0.0) -> ILogObserver:
    """An observer writing every event at ``level`` or above (audit events from info up
    whatever ``level``: :func:`level_filter`) to ``out`` in ``log_format``
    (``json`` or ``text``), each line with ``fields`` added (see the module docstring);
    with ``background``, on a writer thread of its own (:class:`BackgroundLineWriter`,
    which waits up to ``linger`` seconds to write queued lines together).
    ValueError for an unknown format or level."""
    render = event_as_json if check_log_format(log_format) == "json" else event_as_text
    if fields:
        render = _with_fields(render, dict(fields), json_lines=log_format == "json")
    writer = BackgroundLineWriter(out, render, linger=linger) if background \
        else _LineWriter(out, render)
    return _LevelFilteringObserver(writer, level_filter(parse_level(level)))


class _LevelFilteringObserver(FilteringLogObserver):
    """Twisted's :class:`FilteringLogObserver` of one predicate, called directly (its
    general loop over predicates cost more than the predicate itself, for every event)."""

    def __init__(self, observer: ILogObserver, predicate: LogLevelFilterPredicate) -> None:
        super().__init__(observer, [predicate])
        self._predicate = predicate

    def __call__(self, event: LogEvent) -> None:
        result = self._predicate(event)
        if result is PredicateResult.no:
            self._negativeObserver(event)
            return
        if result is not PredicateResult.yes and result is not PredicateResult.maybe:
            raise TypeError(f"Invalid predicate result: {result!r}")
        if "log_trace" in event:
            event["log_trace"].append((self, self._observer))
        self._observer(event)


#: Each level's rank, lowest first (what LogLevel's comparisons compare).
_LEVEL_RANKS = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}
#: The namespaces whose levels one :class:`_LevelFilter` keeps (a namespace is a logger's
#: module or class: a bounded set; past this the memo starts again).
_FLOORS_KEPT = 1024


class _LevelFilter(LogLevelFilterPredicate):
    """Twisted's :class:`LogLevelFilterPredicate`, the level of each namespace seen kept
    (Twisted's looks it up afresh for each event, splitting its name), as a rank."""

    def __init__(self, defaultLogLevel: LogLevel = LogLevel.info) -> None:  # noqa: N803
        self._floors: dict[str, int] = {}
        super().__init__(defaultLogLevel)

    def setLogLevelForNamespace(self, namespace: str, level: LogLevel) -> None:  # noqa: N802
        super().setLogLevelForNamespace(namespace, level)
        self._floors.clear()

    def clearLogLevels(self) -> None:  # noqa: N802
        super().clearLogLevels()
        self._floors.clear()

    def __call__(self, event: LogEvent) -> PredicateResult:
        rank = _LEVEL_RANKS.get(event.get("log_level"))  # type: ignore[arg-type]
        namespace = event.get("log_namespace", "")
        if rank is None or not namespace or not isinstance(namespace, str):
            return super().__call__(event)  # (no level, or not one of LogLevel's: Twisted's)
        floors = self._floors
        floor = floors.get(namespace)
        if floor is None:
            if len(floors) >= _FLOORS_KEPT:
                floors.clear()
            floor = floors[namespace] = _LEVEL_RANKS[self.logLevelForNamespace(namespace)]
        return PredicateResult.no if rank < floor else PredicateResult.maybe


#: The namespaces (with those below them) whose info events are written whatever the
#: ``log_level``: the audit records' copy in the log and the audit checkpoints, which
#: ``kcm audit verify --checkpoint-log`` holds the chain to. A quieter log must not drop
#: them unsaid.
AUDIT_NAMESPACES = ("kcm.audit",)


#: Twisted's namespaces whose info events say nothing KCM does not say better, and say it
#: once an attempt: ClientService's "Scheduling retry N to connect ..." (a gateway's link to
#: an unreachable core tries again every second or so; the gateway writes its own line at
#: most every 30 s); a TCP port's "EMFILE encountered; releasing reserved file descriptor"
#: and "Could not accept new connection (EMFILE)", one or three a connection refused
#: (kcm.accept_pause writes one line every 30 s at most). Their warnings and errors are kept.
QUIET_NAMESPACES = ("twisted.application._client_service", "twisted.internet.tcp")


def level_filter(level: LogLevel) -> LogLevelFilterPredicate:
    """The filter of a ``log_level``: events below ``level`` are dropped, except those of
    :data:`AUDIT_NAMESPACES`, kept from info up; and, above debug, those of
    :data:`QUIET_NAMESPACES` below warn."""
    predicate = _LevelFilter(defaultLogLevel=level)
    if level > LogLevel.info:
        for namespace in AUDIT_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, LogLevel.info)
    if level > LogLevel.debug:  # (at debug everything is written)
        for namespace in QUIET_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, max(level, LogLevel.warn))
    return predicate
