"""The log of every KCM process: ``twisted.logger`` events, written one per line.

KCM code logs through :class:`twisted.logger.Logger` only. :func:`log_observer` builds the
observer a process installs (see :mod:`kcm.process`): every event at or above the configured
level, written to a file as

* ``json`` (the default): one JSON object per line, with ``time`` (ISO 8601, UTC),
  ``level`` (Twisted's level name: debug, info, warn, error, critical), ``namespace`` (the
  logger's, e.g. ``kcm.audit``), ``text`` (the formatted message), the event's own fields
  (those given to the ``Logger`` call, under their names; values JSON cannot hold are
  written as their ``repr``), and ``traceback`` when the event carries a failure. The four
  fixed keys come first and win over a field of the same name.
* ``text``: Twisted's classic readable lines, ``TIME [NAMESPACE#LEVEL] TEXT``.

A process may add fixed ``fields`` to every line (a kcm-gateway worker adds its ``worker``
index and ``pid``, so that the lines of several workers in one log stay apart): in JSON they
are added to the event's own fields (and win over one of the same name); in text they join
the bracket, ``[NAMESPACE#LEVEL worker=1 pid=4242]``.

Events may come from any thread (audit records are emitted by the store's worker threads):
each line is written and flushed whole under a lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "check_log_format", "event_as_json", "log_observer",
           "parse_level"]

#: The values of the ``log_format`` setting.
LOG_FORMATS = ("json", "text")

#: The values of the ``log_level`` setting (``warning`` is taken for ``warn``).
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")

# Keys the legacy twisted.python.log bridge adds beside the log_* ones; they repeat what
# time, level and text already say.
_LEGACY_KEYS = frozenset({"message", "isError", "time", "system", "format", "why", "failure"})


def parse_level(name: str) -> LogLevel:
    """The :class:`LogLevel` a ``log_level`` setting names; ValueError for anything else."""
    key = name.strip().lower()
    if key == "warning":
        key = "warn"
    if key not in LOG_LEVELS:
        raise ValueError(f"unknown log level {name!r} (use one of debug, info, warn, error, "
                         "critical)")
    return LogLevel.levelWithName(key)


def check_log_format(name: str) -> str:
    """``name`` if it is a ``log_format`` value; ValueError otherwise."""
    if name not in LOG_FORMATS:
        raise ValueError(f"unknown log format {name!r} (use json or text)")
    return name


def event_as_json(event: LogEvent, fields: Mapping[str, Any] | None = None) -> str:
    """One event as one line of JSON (no newline inside, one at the end), with ``fields``
    added; see the module docstring for its keys."""
    legacy = "isError" in event and "message" in event
    record: dict[str, Any] = {
        "time": _utc_time(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or (legacy and key in _LEGACY_KEYS):
            continue
        record[key] = value
    for key, value in (fields or {}).items():
        if key not in ("time", "level", "namespace", "text"):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record.setdefault("traceback", failure.getTraceback())
    return json.dumps(record, default=repr, skipkeys=True) + "\n"


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
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@implementer(ILogObserver)
class _LineWriter:
    """Writes each event as the line ``render`` makes of it (None: nothing), whole."""

    def __init__(self, out: IO[str], render: Callable[[LogEvent], str | None]) -> None:
        self._out = out
        self._render = render
        self._lock = threading.Lock()

    def __call__(self, event: LogEvent) -> None:
        line = self._render(event)
        if not line:
            return
        with self._lock:
            self._out.write(line)
            self._out.flush()


def log_observer(out: IO[str], *, log_format: str = "json", level: str = "info",
                 fields: Mapping[str, Any] | None = None) -> ILogObserver:
    """An observer writing every event at ``level`` or above to ``out`` in ``log_format``
    (``json`` or ``text``), each line with ``fields`` added (see the module docstring).
    ValueError for an unknown format or level."""
    render = event_as_json if check_log_format(log_format) == "json" \
        else formatEventAsClassicLogText
    if fields:
        render = _with_fields(render, dict(fields), json_lines=log_format == "json")
    return FilteringLogObserver(_LineWriter(out, render),
                                [LogLevelFilterPredicate(defaultLogLevel=parse_level(level))])
