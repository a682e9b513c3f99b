"""A log file on a full disk (kcm.log_sink): lines are lost, never the process, and the log
says so once it can, with no line cut into the next."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

from twisted.logger import Logger, LogPublisher

from kcm.log_sink import LogSink
from kcm.logging import log_observer
from tests.small_disk import fill, needs_mount, small_disk


class Disk:
    """``os.write`` on a disk with ``room`` bytes left (None: plenty)."""

    def __init__(self) -> None:
        self.room: int | None = None

    def write(self, fd: int, data: bytes) -> int:
        if self.room is None:
            return os.write(fd, data)
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, data[:self.room])
        self.room -= written
        return written


def test_lines_the_disk_had_no_room_for_are_counted_and_said_lost(tmp_path: Path) -> None:
    disk = Disk()
    with open(tmp_path / "kcm.log", "a", encoding="utf-8") as out:
        sink = LogSink(out, lambda lost, why: f"LOST {lost} ({why})\n", write=disk.write)
        sink.write("one\n")
        disk.room = 6
        sink.write("two\nthree\n")  # "two\nth" fits
        sink.write("four\n")
        assert sink.lost == 2
        disk.room = None
        sink.write("five\n")
    assert (tmp_path / "kcm.log").read_text().splitlines() == [
        "one", "two", "th",
        f"LOST 2 ({tmp_path / 'kcm.log'}: No space left on device)", "five"]


@needs_mount
def test_a_json_log_on_a_full_disk_keeps_whole_lines(tmp_path: Path) -> None:
    """The process's own observer (its background writer), on a real full file system:
    every line it wrote is whole JSON, and the log says how many it could not write."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        path = disk / "kcm.log"
        with open(path, "a", encoding="utf-8") as out:
            observer = log_observer(out, background=True)
            log = Logger(namespace="kcm.audit", observer=LogPublisher(observer))
            log.info("record {n}", n=1)
            observer._observer.flush()  # (the BackgroundLineWriter under the filter)
            filler = fill(disk)
            for n in range(2, 200):
                log.info("record {n} " + "x" * 100, n=n)
            observer._observer.flush()
            filler.unlink()
            log.info("record {n}", n=200)
            observer._observer.flush()
        lines = path.read_text().splitlines()
    whole = [line for line in lines if line.endswith("}")]
    cut = [line for line in lines if not line.endswith("}")]
    # The line the disk cut short, if any, ends there: the next begins a line of its own.
    assert len(cut) <= 1 and all(line.count('{"time"') == 1 for line in lines)
    events = [json.loads(line) for line in whole]
    numbers = [e["n"] for e in events if "n" in e]
    assert numbers[0] == 1 and numbers[-1] == 200 and len(numbers) < 199
    [note] = [e for e in events if "lost" in e]
    assert note["lost"] == 198 - (len(numbers) - 2)  # (of records 2 to 199)
    assert note["level"] == "warn"
    assert note["text"].startswith(f"{note['lost']} log line(s) before this one could not")
    assert "No space left on device" in note["why"]


# Found by a mutation review: what the tests above left unchecked --------------------------

def _note(lost: int, why: str) -> str:
    return f"LOST {lost} ({why})\n"


def test_a_note_that_got_out_alone_is_not_counted_again(tmp_path: Path) -> None:
    """The disk full from a write's first byte (nothing cut), then room for the note
    alone: the next note counts only the line lost after it."""
    disk = Disk()
    path = tmp_path / "kcm.log"
    note = _note(1, f"{path}: No space left on device")
    with open(path, "a", encoding="utf-8") as out:
        sink = LogSink(out, _note, write=disk.write)
        sink.write("one\n")
        disk.room = 0
        sink.write("two\n")
        disk.room = len(note)
        sink.write("three\n")  # the note fits, "three" does not
        disk.room = None
        sink.write("four\n")
    assert path.read_text() == "one\n" + note + note + "four\n"


def test_lines_after_a_recovered_cut_follow_one_another(tmp_path: Path) -> None:
    disk = Disk()
    path = tmp_path / "kcm.log"
    with open(path, "a", encoding="utf-8") as out:
        sink = LogSink(out, lambda lost, why: f"LOST {lost}\n", write=disk.write)
        disk.room = 2
        sink.write("one\n")  # "on" fits
        disk.room = None
        sink.write("two\n")
        sink.write("three\n")
    assert path.read_text() == "on\nLOST 1\ntwo\nthree\n"


def test_what_else_wrote_to_the_stream_goes_first(tmp_path: Path) -> None:
    path = tmp_path / "kcm.log"
    with open(path, "a", encoding="utf-8") as out:
        sink = LogSink(out, _note)
        out.write("buffered\n")  # (held in the stream's buffer)
        sink.write("line\n")
    assert path.read_text() == "buffered\nline\n"


def test_a_stream_without_a_file_counts_the_lines_it_could_not_take() -> None:
    class FullStream(io.StringIO):
        full = False

        def write(self, text: str) -> int:
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(text)

    out = FullStream()
    sink = LogSink(out, lambda lost, why: f"LOST {lost} ({why})\n")
    out.full = True
    sink.write("one\ntwo\n")
    assert sink.lost == 2
    out.full = False
    sink.write("three\n")
    assert out.getvalue() == "LOST 2 (the log: No space left on device)\nthree\n"
