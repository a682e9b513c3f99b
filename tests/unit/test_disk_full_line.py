"""The one line that says the disk of kcm-core's database is full, and where
(kcm.core.disk_full_line)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from kcm.core import disk_full_line
from kcm.core.disk_full_line import INTERVAL, DiskFullLine
from kcm.core.store import disk_space


@pytest.fixture
def lines():
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == disk_full_line.__name__:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def test_one_line_names_the_full_disk_however_many_requests_fail(
        lines, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    free = {"bytes": 0}
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: free["bytes"])
    clock = Clock()
    line = DiskFullLine(clock, f"sqlite:///{tmp_path / 'kcm.db'}")
    for _ in range(500):
        line.failed()
    [first] = lines
    assert first["why"] == f"the disk is full ({tmp_path}: 0 bytes free)"
    assert str(tmp_path) in first["log_format"].format(**first)
    clock.advance(INTERVAL)
    assert [event["count"] for event in lines] == [1, 499]
    free["bytes"] = disk_space.DISK_FREE_AGAIN  # space freed: a failure for another reason
    clock.advance(INTERVAL)
    line.failed()
    assert len(lines) == 2


def test_nothing_for_a_database_that_is_not_a_file(
        lines, monkeypatch: pytest.MonkeyPatch) -> None:
    # (Every disk full: a line here would be about the disk of a file named "kcm".)
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: 0)
    line = DiskFullLine(Clock(), "postgresql+psycopg://kcm@db/kcm")
    line.failed()
    assert lines == []


def test_the_free_space_is_what_this_process_may_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Root may write the blocks reserved for it, others not; in fragments (f_frsize)."""
    status = SimpleNamespace(f_bfree=100, f_bavail=80, f_frsize=4096, f_bsize=65536)
    monkeypatch.setattr(disk_space.os, "statvfs", lambda directory: status)
    monkeypatch.setattr(disk_space.os, "geteuid", lambda: 0)
    assert disk_space.free_bytes("/x") == 100 * 4096
    monkeypatch.setattr(disk_space.os, "geteuid", lambda: 1000)
    assert disk_space.free_bytes("/x") == 80 * 4096


def test_a_disk_whose_free_space_cannot_be_read_is_not_called_full(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def refused(directory: str) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(disk_space, "free_bytes", refused)
    assert disk_space.disk_full(str(tmp_path / "kcm.db")) is None


def test_the_disk_counts_as_full_below_1_mib_and_free_again_from_2_mib() -> None:
    """Hysteresis: at the line, a few bytes coming and going do not flap the answer (nor
    /readyz, which asks the same object); values injected."""
    free = {"bytes": 5 << 20}
    now = [0.0]
    disk = disk_space.DiskSpace("/data/kcm.db", clock=lambda: now[0], every=1.0,
                                free=lambda directory: free["bytes"])
    seen = []
    for value in (5 << 20, (1 << 20) + 1, (1 << 20) - 1, (1 << 20) + 1, (2 << 20) - 1,
                  2 << 20, (1 << 20) + 1, (1 << 20) - 1):
        free["bytes"] = value
        now[0] += 1.0
        seen.append(disk.full() is not None)
    assert seen == [False, False, True, True, True, False, False, True]
    assert disk.full() == "the disk is full (/data: 1048575 bytes free)"


def test_the_free_space_is_read_once_a_second_at_most() -> None:
    """Each request the store fails asks, on the reactor: statvfs (some 15 us on a local
    disk, more on a network one) is not run for each, the reading is used for a second."""
    reads: list[str] = []
    now = [100.0]

    def free(directory: str) -> int:
        reads.append(directory)
        return 0

    disk = disk_space.DiskSpace("/data/kcm.db", clock=lambda: now[0], free=free)
    for _ in range(1000):
        assert disk.full() is not None
    assert reads == ["/data"]
    now[0] += disk_space.READ_EVERY
    disk.full()
    assert len(reads) == 2



def test_a_clock_set_back_does_not_keep_the_reading() -> None:
    """kcm-core gives the reactor's clock (the wall clock): set back an hour, the disk was
    read again only an hour later, /readyz held at 503 after space was freed (or at 200
    once the disk filled)."""
    free = {"bytes": 0}
    now = [10_000.0]
    disk = disk_space.DiskSpace("/data/kcm.db", clock=lambda: now[0],
                                free=lambda directory: free["bytes"])
    assert disk.full() is not None
    free["bytes"] = 10 << 20
    now[0] -= 3600.0
    assert disk.full() is None
    free["bytes"] = 0
    now[0] += 0.5  # (from the new reading: still once a second at most)
    assert disk.full() is None

def test_a_free_space_that_cannot_be_read_keeps_what_was_decided() -> None:
    answers: list[object] = [0, OSError("gone"), 10 << 20, OSError("gone")]
    now = [0.0]

    def free(directory: str) -> int:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer  # type: ignore[return-value]

    disk = disk_space.DiskSpace("/data/kcm.db", clock=lambda: now[0], free=free)
    states = []
    for _ in range(4):
        states.append(disk.full() is not None)
        now[0] += 1.0
    assert states == [True, True, False, False]


def test_only_a_sqlite_file_has_a_disk_space() -> None:
    assert disk_space.DiskSpace.of("postgresql+psycopg://kcm@db/kcm") is None
    assert disk_space.DiskSpace.of("sqlite://") is None
    disk = disk_space.DiskSpace.of("sqlite:////var/lib/kcm/kcm.db")
    assert disk is not None and disk.directory == "/var/lib/kcm"


def test_the_readiness_thread_and_the_reactor_share_one_reading() -> None:
    """Two threads asking at once (the readiness check's and the reactor): one reads the
    free space, the other waits for it and uses it (the hysteresis is decided once)."""
    import threading

    reads: list[str] = []
    second_came = threading.Event()

    def free(directory: str) -> int:
        reads.append(directory)
        second_came.wait(0.5)  # (the other thread asks meanwhile)
        return 0

    disk = disk_space.DiskSpace("/data/kcm.db", clock=lambda: 0.0, free=free)
    answers: list[str | None] = []

    def ask() -> None:
        answers.append(disk.full())

    first = threading.Thread(target=ask)
    first.start()
    while not reads:
        threading.Event().wait(0.001)
    second = threading.Thread(target=ask)
    second.start()
    second.join(0.1)  # it waits for the reading under way
    second_came.set()
    first.join(5)
    second.join(5)
    assert reads == ["/data"]
    assert len(answers) == 2 and None not in answers
