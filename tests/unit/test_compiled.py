"""A process that runs without KCM's compiled modules says so when it starts."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from kcm import compiled, eager_tls
from kcm.kernel import plain_messages
from kcm.process import ProcessService


def test_as_installed_nothing_is_missing() -> None:
    assert compiled.missing() == []


def test_each_missing_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eager_tls, "_calls", None)
    assert compiled.missing() == ["kcm._tls_calls"]
    monkeypatch.setattr(plain_messages, "_scan", None)
    assert compiled.missing() == ["kcm.kernel._plain_scan", "kcm._tls_calls"]


def _start_logs(process: ProcessService) -> list[str]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        process.startService()
        process.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [event["log_format"] for event in events if "compiled" in event["log_format"]]


def test_a_process_without_them_warns_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _start_logs(ProcessService("kcm-test", reactor=MemoryReactorClock())) == []
    monkeypatch.setattr(eager_tls, "_calls", None)
    warned = _start_logs(ProcessService("kcm-test", reactor=MemoryReactorClock()))
    assert len(warned) == 1 and "reinstall with a C compiler" in warned[0]
