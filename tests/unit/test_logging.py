"""The log observer every KCM process installs: JSON lines or readable text, level-filtered."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import Logger, LogLevel, formatEvent

from kcm.kmip.enums import ResultStatus
from kcm.logging import event_as_json, format_text, log_observer, parse_level

NOW = 1_790_000_000.25


def logger(observer, namespace: str = "kcm.test") -> Logger:
    return Logger(namespace=namespace, observer=observer)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_level_time_namespace_text_and_fields() -> None:
    stream = io.StringIO()
    log = logger(log_observer(stream, log_format="json", level="info"), "kcm.audit")
    log.info("audit {seq}: {operation}", seq=7, operation="Create", object_ids=["u1"],
             detail={"n": 1}, tenant=None)
    [line] = lines(stream)
    assert line["level"] == "info"
    assert line["namespace"] == "kcm.audit"
    assert line["text"] == "audit 7: Create"
    assert (line["seq"], line["operation"], line["object_ids"]) == (7, "Create", ["u1"])
    assert line["detail"] == {"n": 1} and line["tenant"] is None
    assert line["time"].endswith("Z") and line["time"][:2] == "20"
    assert not any(key.startswith("log_") for key in line)


def test_json_time_is_utc_iso_8601() -> None:
    event = {"log_time": NOW, "log_level": LogLevel.warn, "log_namespace": "n",
             "log_format": "x"}
    line = json.loads(event_as_json(event))
    assert line["time"] == "2026-09-21T14:13:20.250000Z"
    assert line["level"] == "warn"


def test_json_writes_what_it_cannot_encode_as_its_repr_and_failures_as_tracebacks() -> None:
    stream = io.StringIO()
    log = logger(log_observer(stream))

    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("it broke near {thing}", thing=Thing())
    [line] = lines(stream)
    assert line["level"] == "critical"
    assert line["text"] == "it broke near <thing>" and line["thing"] == "<thing>"
    assert "ZeroDivisionError" in line["traceback"]


def test_the_fixed_keys_win_over_fields_of_the_same_name() -> None:
    stream = io.StringIO()
    logger(log_observer(stream)).info("hello", text="mine", namespace="mine")
    [line] = lines(stream)
    assert (line["text"], line["namespace"]) == ("hello", "kcm.test")


def test_text_format_is_readable() -> None:
    stream = io.StringIO()
    logger(log_observer(stream, log_format="text"), "kcm.core").warn(
        "policy reload from {path} failed", path="p.toml")
    [line] = stream.getvalue().splitlines()
    assert "[kcm.core#warn] policy reload from p.toml failed" in line
    assert not line.startswith("{")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_level_filter_drops_events_below_it(log_format: str) -> None:
    stream = io.StringIO()
    log = logger(log_observer(stream, log_format=log_format, level="warning"))
    log.debug("dropped debug")
    log.info("dropped info")
    log.warn("kept warn")
    log.error("kept error")
    text = stream.getvalue()
    assert "dropped" not in text
    assert text.count("kept") == 2 and len(text.splitlines()) == 2


def test_client_service_retry_lines_are_dropped_but_its_warnings_kept() -> None:
    """A gateway whose core is unreachable tries again every second or so, and Twisted's
    ClientService wrote a line at each try; the gateway writes its own, throttled."""
    from twisted.application.internet import ClientService

    for level, kept in (("info", ["warned"]), ("debug", ["retrying", "warned"])):
        stream = io.StringIO()
        observer = log_observer(stream, level=level)
        log = logger(observer, namespace=ClientService._log.namespace)
        log.info("retrying")
        log.warn("warned")
        assert [line["text"] for line in lines(stream)] == kept, level


def test_debug_level_keeps_debug() -> None:
    stream = io.StringIO()
    logger(log_observer(stream, level="debug")).debug("kept")
    assert lines(stream)[0]["level"] == "debug"


def test_lines_from_many_threads_stay_whole() -> None:
    stream = io.StringIO()
    log = logger(log_observer(stream))

    def emit(n: int) -> None:
        for i in range(200):
            log.info("thread {n} line {i}", n=n, i=i, padding="x" * 500)

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines(stream)) == 800


def test_unknown_levels_and_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        parse_level("chatty")
    with pytest.raises(ValueError, match="log format"):
        log_observer(io.StringIO(), log_format="xml")
    assert parse_level("WARNING") is LogLevel.warn


def test_fixed_fields_tell_the_processes_of_one_log_apart() -> None:
    stream = io.StringIO()
    log = logger(log_observer(stream, fields={"worker": 2, "pid": 4242}), "kcm.gateway")
    log.info("worker {worker} of pid {pid}", worker=1, pid=7, other="x")
    [line] = lines(stream)
    # The message is the event's own; the line carries the process's fields.
    assert line["text"] == "worker 1 of pid 7"
    assert (line["worker"], line["pid"], line["other"]) == (2, 4242, "x")
    assert list(line)[:4] == ["time", "level", "namespace", "text"]


def test_fixed_fields_in_text_lines() -> None:
    stream = io.StringIO()
    logger(log_observer(stream, log_format="text", fields={"worker": 2, "pid": 4242}),
           "kcm.gateway").warn("link lost")
    [line] = stream.getvalue().splitlines()
    assert "[kcm.gateway#warn worker=2 pid=4242] link lost" in line


class _GatedStream(io.StringIO):
    """A stream whose writes wait until ``gate`` is set (a disk that stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writes = 0

    def write(self, text: str) -> int:
        self.gate.wait(10)
        self.writes += 1
        return super().write(text)


def test_a_background_writer_keeps_the_disk_off_the_logging_thread() -> None:
    from kcm.logging import BackgroundLineWriter

    stream = _GatedStream()
    writer = BackgroundLineWriter(stream, lambda event: f"{event['n']}\n")
    # Audit lines are queued: each call returns at once although the stream is stalled.
    for n in range(100):
        writer({"n": n, "log_namespace": "kcm.audit"})
    assert stream.getvalue() == ""
    stream.gate.set()
    assert writer.flush()
    assert stream.getvalue().splitlines() == [str(n) for n in range(100)]
    assert stream.writes < 100  # many lines per write


def test_a_full_background_queue_makes_the_logger_wait_and_loses_nothing() -> None:
    from kcm.logging import BackgroundLineWriter

    stream = _GatedStream()
    writer = BackgroundLineWriter(stream, lambda event: f"{event['n']}\n", max_pending=3)
    logger_thread = threading.Thread(target=lambda: [
        writer({"n": n, "log_namespace": "kcm.audit"}) for n in range(20)])
    logger_thread.start()
    logger_thread.join(0.3)
    assert logger_thread.is_alive()  # waiting for room, not dropping lines
    stream.gate.set()
    logger_thread.join(5)
    assert not logger_thread.is_alive()
    assert writer.flush()
    assert stream.getvalue().splitlines() == [str(n) for n in range(20)]


def test_an_event_the_background_writer_cannot_render_loses_only_itself() -> None:
    from kcm.logging import BackgroundLineWriter

    stream = io.StringIO()

    def render(event):
        if event["n"] == 1:
            raise ValueError("no")
        return f"{event['n']}\n"

    writer = BackgroundLineWriter(stream, render)
    for n in range(3):
        writer({"n": n, "log_namespace": "kcm.audit"})
    assert writer.flush()
    assert stream.getvalue().splitlines() == ["0", "unrenderable log event: ValueError", "2"]


def test_a_background_observer_writes_the_same_lines() -> None:
    stream = io.StringIO()
    observer = log_observer(stream, log_format="json", level="info", background=True)
    log = logger(observer, "kcm.audit")
    log.info("audit {seq}: {operation}", seq=7, operation="Create")
    log.debug("not at this level")
    assert observer._observer.flush()
    [line] = lines(stream)
    assert (line["text"], line["seq"]) == ("audit 7: Create", 7)


def test_other_lines_are_written_at_once_after_the_queued_audit_lines() -> None:
    from kcm.logging import BackgroundLineWriter

    stream = _GatedStream()
    writer = BackgroundLineWriter(stream, lambda event: f"{event['n']}\n")
    for n in range(5):
        writer({"n": n, "log_namespace": "kcm.audit"})
    done = threading.Event()
    other = threading.Thread(target=lambda: (writer({"n": "other", "log_namespace": "kcm.x"}),
                                             done.set()))
    other.start()
    assert not done.wait(0.2)  # written by the logging thread itself: it waits for the disk
    stream.gate.set()
    assert done.wait(5)
    assert stream.getvalue().splitlines() == ["0", "1", "2", "3", "4", "other"]


def test_a_forked_child_writes_its_queued_lines_with_a_writer_of_its_own(tmp_path) -> None:
    """A daemonizing twistd forks after the log observer exists: the child, which serves
    and logs, must still get its audit lines written."""
    import os

    from kcm.logging import BackgroundLineWriter

    path = tmp_path / "log"
    with path.open("a") as out:
        writer = BackgroundLineWriter(out, lambda event: f"{event['n']}\n")
        writer({"n": "parent", "log_namespace": "kcm.audit"})
        assert writer.flush()
        pid = os.fork()
        if pid == 0:  # the child: log, flush, and leave without pytest's cleanup
            try:
                for n in range(3):
                    writer({"n": f"child {n}", "log_namespace": "kcm.audit"})
                os._exit(0 if writer.flush() else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.read_text().splitlines() == ["parent", "child 0", "child 1", "child 2"]


def test_a_lingering_writer_writes_the_lines_of_its_linger_together() -> None:
    """With ``linger``, the writer waits for company after the first queued line: the lines
    of that time go out in one write (one wake-up of its thread, not one per request)."""
    from kcm.logging import BackgroundLineWriter

    stream = _GatedStream()
    stream.gate.set()
    writer = BackgroundLineWriter(stream, lambda event: f"{event['n']}\n", linger=0.3)
    for n in range(5):
        writer({"n": n, "log_namespace": "kcm.audit"})
        time.sleep(0.02)
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().splitlines() == [str(n) for n in range(5)]
    assert stream.writes == 1


def test_a_flush_or_a_full_batch_does_not_wait_for_the_linger() -> None:
    from kcm.logging import BackgroundLineWriter

    stream = io.StringIO()
    writer = BackgroundLineWriter(stream, lambda event: f"{event['n']}\n", linger=60.0,
                                  batch=4)
    writer({"n": 0, "log_namespace": "kcm.audit"})
    started = time.monotonic()
    assert writer.flush(timeout=5)
    assert time.monotonic() - started < 5
    assert stream.getvalue() == "0\n"
    for n in range(1, 5):  # a batch's worth: written without a flush, long before 60 s
        writer({"n": n, "log_namespace": "kcm.audit"})
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().splitlines() == ["0", "1", "2", "3", "4"]
    # Another line is written at once, after the queued ones, lingering or not.
    writer({"n": 5, "log_namespace": "kcm.audit"})
    writer({"n": "other", "log_namespace": "kcm.x"})
    assert stream.getvalue().splitlines()[-2:] == ["5", "other"]


def test_the_writer_thread_renders_a_slice_at_a_time_with_pauses_between() -> None:
    """The writer thread renders ``slice_lines`` lines, then pauses (the other threads get
    the interpreter lock), and writes the whole batch once; the lines are unchanged."""
    from kcm.logging import BackgroundLineWriter

    stream = _GatedStream()
    stream.gate.set()  # (a stream that counts its writes)
    rendered: list[object] = []
    pauses: list[tuple[float, int]] = []

    def render(event):
        rendered.append(event["n"])
        return f"{event['n']}\n"

    writer = BackgroundLineWriter(stream, render, slice_lines=4, pause=0.001, linger=60.0,
                                  sleep=lambda seconds: pauses.append((seconds,
                                                                       len(rendered))))
    for n in range(10):
        writer({"n": n, "log_namespace": "kcm.audit"})
    assert writer.flush()
    assert stream.getvalue().splitlines() == [str(n) for n in range(10)]
    # The ten waited for company (linger) and went as one batch, at the flush.
    assert pauses == [(0.001, 4), (0.001, 8)]
    assert stream.writes == 1


def test_the_writer_does_not_pause_while_lines_pile_up() -> None:
    """With ``batch`` lines queued again, the writer renders straight through: pausing then
    would only make the loggers wait for room."""
    from kcm.logging import BackgroundLineWriter

    pauses: list[float] = []
    writer = BackgroundLineWriter(io.StringIO(), lambda event: f"{event['n']}\n",
                                  slice_lines=1, batch=2, sleep=pauses.append)
    writer._pending.extend({"n": n, "log_namespace": "kcm.audit"} for n in range(3))
    writer._write([{"n": n} for n in range(5)], paced=True)
    assert pauses == []
    writer._pending.clear()
    writer._write([{"n": n} for n in range(5)], paced=True)
    assert len(pauses) == 4


def test_a_batch_is_paused_a_bounded_number_of_times() -> None:
    """A large batch is rendered in longer slices rather than with more pauses: a thread
    that logs another event at once waits for the batch, and that wait stays bounded."""
    from kcm.logging import BackgroundLineWriter

    pauses: list[float] = []
    out = io.StringIO()
    writer = BackgroundLineWriter(out, lambda event: f"{event['n']}\n",
                                  slice_lines=1, max_pauses=3, sleep=pauses.append)
    writer._write([{"n": n} for n in range(100)], paced=True)
    assert len(pauses) == 3  # after lines 25, 50 and 75
    assert out.getvalue().splitlines() == [str(n) for n in range(100)]


def test_lines_written_at_once_are_never_paused() -> None:
    """A line that is not queued (a warning, say) is written by the thread that logs it,
    with the queued ones before it: at once, whatever their number."""
    from kcm.logging import BackgroundLineWriter

    stream = _GatedStream()
    pauses: list[float] = []
    writer = BackgroundLineWriter(stream, lambda event: f"{event['n']}\n", slice_lines=1,
                                  linger=60.0, sleep=pauses.append)
    for n in range(5):
        writer({"n": n, "log_namespace": "kcm.audit"})
    stream.gate.set()
    writer({"n": "other", "log_namespace": "kcm.x"})
    assert writer.flush()
    assert stream.getvalue().splitlines() == ["0", "1", "2", "3", "4", "other"]
    assert pauses == []


_VALUES = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                    st.binary(max_size=4), st.sampled_from(list(LogLevel.iterconstants())),
                    st.sampled_from(list(ResultStatus)), st.lists(st.integers(), max_size=2))
_NAMES = st.sampled_from(["seq", "who", "a_b", "x"])
_PIECES = st.one_of(
    st.text(alphabet="ab :()-{}", max_size=6).map(lambda t: t.replace("{", "{{")
                                                    .replace("}", "}}")),
    _NAMES.map(lambda n: "{" + n + "}"),
    st.sampled_from(["{seq!r}", "{seq:>5}", "{who.real}", "{x()}", "{", "}", "{0}", "{}"]))


@given(st.lists(_PIECES, max_size=6).map("".join),
       st.dictionaries(_NAMES, _VALUES, max_size=4))
def test_text_is_twisteds_text_of_the_event(log_format: str, fields: dict) -> None:
    """format_text (kept parses of plain formats) writes what formatEvent writes, for
    any format and fields, missing ones and odd formats included."""
    event = {**fields, "log_format": log_format, "log_level": LogLevel.info}
    assert format_text(event) == formatEvent(event)


_HOSTILE = "billing\n2026-01-01T00:00:00+0000 [kcm.audit#info] FORGED \x1b[2J\u00e9\r\t"


def test_a_text_line_escapes_what_is_not_printable_ascii_and_stays_one_line() -> None:
    stream = io.StringIO()
    logger(log_observer(stream, log_format="text"), "kcm.gateway").warn(
        "denied {service} ({count})", service=_HOSTILE, count=3)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.isascii() and "\x1b" not in text
    assert text.endswith("] denied billing\\n2026-01-01T00:00:00+0000 [kcm.audit#info] "
                         "FORGED \\x1b[2J\\xe9\\r\\t (3)\n")


def test_a_text_line_escapes_what_an_object_writes_and_only_a_traceback_follows_it() -> None:
    stream = io.StringIO()

    class Hostile:
        def __str__(self) -> str:
            return _HOSTILE

    try:
        raise ValueError("bad \x1b[31m\u00e9")
    except ValueError:
        logger(log_observer(stream, log_format="text")).failure("failed: {what}",
                                                                 what=Hostile())
    text = stream.getvalue()
    first, *rest = text.splitlines()
    assert first.endswith("] failed: billing\\n2026-01-01T00:00:00+0000 [kcm.audit#info] "
                          "FORGED \\x1b[2J\\xe9\\r\\t")
    assert text.isascii() and "\x1b" not in text and "\r" not in text
    assert rest and all(line.startswith("\t") for line in rest)
    assert rest[-1] == "\tbuiltins.ValueError: bad \\x1b[31m\\xe9"


def test_a_text_line_of_a_failure_without_a_message() -> None:
    from twisted.python.failure import Failure

    stream = io.StringIO()
    observer = log_observer(stream, log_format="text")
    observer({"log_failure": Failure(ValueError("x")), "log_level": LogLevel.error,
              "log_namespace": "n", "log_time": NOW})
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("[n#error] (no message)") and rest[-1].endswith("ValueError: x")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_each_text_field_of_a_line_is_cut_short(log_format: str) -> None:
    from kcm.logging import FIELD_LIMIT, TEXT_LIMIT

    stream = io.StringIO()
    logger(log_observer(stream, log_format=log_format)).warn(
        "denied {service} {other}", service="b" * 200_000, other="\x00" * 5000, count=7)
    line = stream.getvalue()
    assert "b" * FIELD_LIMIT + "... (200000 characters)" in line
    assert "... (5000 characters)" in line
    if log_format == "json":
        [record] = lines(stream)
        assert record["count"] == 7 and len(record["text"]) < TEXT_LIMIT + 30
        assert len(record["service"]) < FIELD_LIMIT + 30
        assert len(record["other"]) < FIELD_LIMIT + 30
    else:
        assert len(line) < 3 * FIELD_LIMIT and line.count("\n") == 1


class _InterruptedStream(io.StringIO):
    """A stream whose first write is interrupted by a "signal handler" that logs through
    ``observer`` on the same thread (as twistd's SIGTERM handler does)."""

    def __init__(self) -> None:
        super().__init__()
        self.observer = None
        self.interrupted = False

    def write(self, text: str) -> int:
        if not self.interrupted and self.observer is not None:
            self.interrupted = True
            self.observer({"n": "signal", "log_namespace": "twisted"})
        return super().write(text)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("namespace", ["twisted", "kcm.audit"])
def test_a_signal_handler_that_logs_inside_a_write_neither_deadlocks_nor_loses_lines(
        background: bool, namespace: str) -> None:
    from kcm.logging import BackgroundLineWriter, _LineWriter

    stream = _InterruptedStream()
    render = (lambda event: f"{event['n']}\n")  # noqa: E731
    writer = BackgroundLineWriter(stream, render) if background else _LineWriter(stream, render)
    stream.observer = writer
    done = threading.Event()

    def log() -> None:
        writer({"n": "first", "log_namespace": namespace})
        if background:
            writer.flush()
        done.set()

    threading.Thread(target=log, daemon=True).start()
    assert done.wait(5), "the logging thread deadlocked on its own lock"
    if background:
        assert writer.flush()
    assert sorted(stream.getvalue().splitlines()) == ["first", "signal"]


def test_the_level_filter_judges_every_event_as_twisteds_does() -> None:
    """The filter keeps each namespace's level (kcm.logging._LevelFilter): its verdicts are
    Twisted's LogLevelFilterPredicate's, for every level and log_level, namespaces below a
    set one, a level set or cleared after events were judged, and events without a level,
    a namespace, or with a level that is not LogLevel's."""
    from twisted.logger import LogLevelFilterPredicate, PredicateResult

    from kcm.logging import level_filter

    namespaces = ["kcm.audit", "kcm.audit.checkpoints", "kcm", "kcm.core.store",
                  "twisted.application._client_service", "twisted.application", "x", ""]
    odd = [{}, {"log_level": LogLevel.info}, {"log_namespace": "kcm"},
           {"log_level": "info", "log_namespace": "kcm"}]
    for setting in LogLevel.iterconstants():
        ours = level_filter(setting)
        theirs = LogLevelFilterPredicate(defaultLogLevel=setting)
        theirs._logLevelsByNamespace.update(ours._logLevelsByNamespace)
        for change in (None, ("kcm.core", LogLevel.error), ("kcm.audit", LogLevel.debug),
                       "clear"):
            if change == "clear":
                ours.clearLogLevels()
                theirs.clearLogLevels()
            elif change is not None:
                ours.setLogLevelForNamespace(*change)
                theirs.setLogLevelForNamespace(*change)
            for namespace in namespaces:
                for level in LogLevel.iterconstants():
                    event = {"log_level": level, "log_namespace": namespace}
                    assert ours(event) is theirs(event), (setting, change, namespace, level)
            for event in odd:
                try:
                    expected: object = theirs(dict(event))
                except Exception as e:
                    expected = type(e)
                try:
                    got: object = ours(dict(event))
                except Exception as e:
                    got = type(e)
                assert got == expected, (setting, event)
    assert PredicateResult.maybe is ours({"log_level": LogLevel.critical,
                                          "log_namespace": "kcm"})


def test_the_level_filter_reads_a_namespace_level_once() -> None:
    """Twisted's filter split each event's namespace and looked its parts up afresh, for
    every event every process logs (an audit record's line among them)."""
    from kcm.logging import level_filter

    predicate = level_filter(LogLevel.warn)
    looked_up: list[str] = []
    original = predicate.logLevelForNamespace

    def counted(namespace: str) -> LogLevel:
        looked_up.append(namespace)
        return original(namespace)

    predicate.logLevelForNamespace = counted  # type: ignore[method-assign]
    for _ in range(3):
        predicate({"log_level": LogLevel.info, "log_namespace": "kcm.audit"})
        predicate({"log_level": LogLevel.info, "log_namespace": "kcm.core.store"})
    assert looked_up == ["kcm.audit", "kcm.core.store"]


def test_the_level_filter_keeps_a_bounded_number_of_namespaces(monkeypatch) -> None:
    """A namespace is a logger's module or class, but an event's is whatever its emitter
    set: the levels kept are bounded, and judged alike once the memo starts again."""
    from twisted.logger import PredicateResult

    from kcm import logging as kcm_logging
    from kcm.logging import level_filter

    monkeypatch.setattr(kcm_logging, "_FLOORS_KEPT", 4)
    predicate = level_filter(LogLevel.warn)
    for n in range(10):
        assert predicate({"log_level": LogLevel.info, "log_namespace": f"x.{n}"}) \
            is PredicateResult.no
        assert len(predicate._floors) <= 4
    assert predicate({"log_level": LogLevel.info, "log_namespace": "kcm.audit"}) \
        is PredicateResult.maybe


def test_the_observer_calls_its_filter_once_per_event_and_keeps_traces() -> None:
    """log_observer's observer asks its one filter directly (not through Twisted's loop over
    predicates), drops what it refuses, and still notes itself in a traced event."""
    from twisted.logger import PredicateResult

    seen: list[dict] = []
    observer = log_observer(io.StringIO(), level="warning")
    observer._observer = seen.append  # (the writer behind the filter)
    kept = {"log_level": LogLevel.warn, "log_namespace": "kcm", "log_trace": []}
    observer({"log_level": LogLevel.info, "log_namespace": "kcm"})
    observer(kept)
    assert seen == [kept] and kept["log_trace"] == [(observer, seen.append)]
    observer._predicate = lambda event: "neither"
    with pytest.raises(TypeError):
        observer({"log_level": LogLevel.warn, "log_namespace": "kcm"})
    observer._predicate = lambda event: PredicateResult.yes
    observer({"log_level": LogLevel.debug, "log_namespace": "kcm"})
    assert len(seen) == 2
