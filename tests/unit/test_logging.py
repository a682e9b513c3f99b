"""The log observer every KCM process installs: JSON lines or readable text, level-filtered."""

from __future__ import annotations

import io
import json
import threading

import pytest
from twisted.logger import Logger, LogLevel

from kcm.logging import event_as_json, log_observer, parse_level

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
