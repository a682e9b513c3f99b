"""One kcm-core per SQLite file (kcm.core.sqlite_owner): the lock beside the database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from kcm.core.service import StartupError
from kcm.core.sqlite_owner import (
    SqliteOwner,
    lock_path,
    shared_mode,
    sqlite_database_file,
    take,
)


def test_a_second_owner_of_one_file_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    first = SqliteOwner(url)
    first.startService()
    try:
        with pytest.raises(StartupError) as refused:
            SqliteOwner(url).startService()
        assert str(refused.value) == (
            f"another kcm-core (pid {os.getpid()}) serves {tmp_path / 'kcm.db'}: stop it "
            "first; one kcm-core per SQLite file (several cores need PostgreSQL, "
            "docs/deploy.md)")
        assert str(refused.value).isascii()
    finally:
        first.stopService()
    second = SqliteOwner(url)  # released at stop
    second.startService()
    second.stopService()
    assert oct(os.stat(lock_path(str(tmp_path / "kcm.db"))).st_mode & 0o777) == "0o600"


def test_two_spellings_of_one_file_share_the_lock(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    fd = take(str(tmp_path / "data" / "kcm.db"))
    try:
        with pytest.raises(StartupError):
            SqliteOwner(f"sqlite:///{tmp_path / 'alias' / 'kcm.db'}").startService()
        with pytest.raises(StartupError):
            SqliteOwner(f"sqlite:///{tmp_path / 'data' / '.' / 'kcm.db'}").startService()
        other = SqliteOwner(f"sqlite:///{tmp_path / 'data' / 'other.db'}")  # its own
        other.startService()
        other.stopService()
    finally:
        os.close(fd)


def test_other_databases_take_no_lock(tmp_path: Path) -> None:
    assert sqlite_database_file("postgresql+psycopg://kcm@db/kcm") is None
    assert sqlite_database_file("sqlite://") is None
    owner = SqliteOwner("postgresql+psycopg://kcm@db/kcm")
    owner.startService()
    owner.stopService()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="root only")
def test_a_lock_file_made_by_root_is_the_database_owners(tmp_path: Path) -> None:
    database = tmp_path / "kcm.db"
    database.touch()
    os.chown(database, 65534, 65534)
    os.close(take(str(database)))
    status = os.stat(lock_path(str(database)))
    assert (status.st_uid, status.st_gid) == (65534, 65534)


def test_a_database_others_may_read_is_warned_about(tmp_path: Path) -> None:
    database = tmp_path / "kcm.db"
    assert shared_mode(str(database)) is None  # not made yet
    database.touch(mode=0o600)
    os.chmod(database, 0o600)
    assert shared_mode(str(database)) is None
    os.chmod(database, 0o644)
    assert shared_mode(str(database)) == 0o644
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    owner = SqliteOwner(f"sqlite:///{database}")
    try:
        owner.startService()
        owner.stopService()
    finally:
        globalLogPublisher.removeObserver(lines.append)
    [warning] = [formatEvent(e) for e in lines if e.get("log_level") == LogLevel.warn]
    assert warning == (f"the database file {database} has mode 0644: other users may read its "
                       "wrapped keys and audit log; chmod 600 it (docs/operations.md, "
                       '"Storage")')


def test_a_database_in_a_missing_directory_is_left_to_the_store(tmp_path: Path) -> None:
    """No lock file is made in a directory that does not exist: the store's start refuses
    such a database in its own words (kcm-store: ...), as before the lock."""
    owner = SqliteOwner(f"sqlite:///{tmp_path}/none/kcm.db")
    owner.startService()
    try:
        assert not (tmp_path / "none").exists()
    finally:
        owner.stopService()


def test_a_lock_file_that_is_a_link_or_a_pipe_is_refused_untouched(tmp_path: Path) -> None:
    """Whoever may write in the database's directory could make the lock file's name a hard
    link to another file (or a symbolic one, or a pipe): a core run as root would truncate
    that file and give it to the database's owner. It is refused, the file left as it was."""
    database = str(tmp_path / "kcm.db")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, lock_path(database))
    with pytest.raises(StartupError, match="is not a plain file of its own"):
        take(database)
    assert victim.read_text() == "precious\n"
    os.unlink(lock_path(database))
    os.symlink(victim, lock_path(database))
    with pytest.raises(OSError):  # (O_NOFOLLOW: ELOOP)
        take(database)
    assert victim.read_text() == "precious\n"
    os.unlink(lock_path(database))
    os.mkfifo(lock_path(database))
    with pytest.raises(StartupError, match="is not a plain file of its own"):
        take(database)
    os.unlink(lock_path(database))
    os.close(take(database))  # a plain file: taken


def test_a_database_file_that_is_a_symbolic_link_is_locked_at_its_target(
        tmp_path: Path) -> None:
    """Two spellings of one file by a link to the file itself (not its directory): one lock,
    beside the real file."""
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "kcm.db"
    real.touch(mode=0o600)
    (tmp_path / "link.db").symlink_to(real)
    assert sqlite_database_file(f"sqlite:///{tmp_path / 'link.db'}") == str(real)
    fd = take(str(real))
    try:
        with pytest.raises(StartupError):
            SqliteOwner(f"sqlite:///{tmp_path / 'link.db'}").startService()
    finally:
        os.close(fd)
    assert not os.path.lexists(tmp_path / ("link.db" + ".kcm-core.lock"))


def test_an_in_memory_database_takes_no_lock(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_database_file("sqlite:///:memory:") is None
    owner = SqliteOwner("sqlite:///:memory:")
    owner.startService()
    owner.stopService()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_left_by_a_dead_core_is_taken_and_names_this_process(
        tmp_path: Path) -> None:
    """The file stays after a core dies (the kernel dropped its lock): the next core takes
    it and writes its own process id over the old one, whatever their lengths."""
    database = str(tmp_path / "kcm.db")
    Path(lock_path(database)).write_text("4194304999\n")
    os.chmod(lock_path(database), 0o600)
    owner = SqliteOwner(f"sqlite:///{database}")
    owner.startService()
    try:
        assert Path(lock_path(database)).read_text() == f"{os.getpid()}\n"
        with pytest.raises(StartupError, match=rf"\(pid {os.getpid()}\) serves"):
            take(database)
    finally:
        owner.stopService()
    owner.stopService()  # (twice: nothing more to close)
    owner.startService()  # a restart in the same process takes it again
    try:
        with pytest.raises(StartupError):
            take(database)
    finally:
        owner.stopService()


def test_a_refused_start_keeps_no_descriptor_and_names_no_unreadable_holder(
        tmp_path: Path) -> None:
    database = str(tmp_path / "kcm.db")
    fd = take(database)
    try:
        os.pwrite(fd, b"not a pid\n", 0)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(StartupError) as refused:
                take(database)
            assert str(refused.value).startswith(f"another kcm-core serves {database}: ")
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o600, 0o400])
def test_a_database_its_group_or_others_may_use_is_warned_about(tmp_path: Path,
                                                                mode: int) -> None:
    database = tmp_path / "kcm.db"
    database.touch()
    os.chmod(database, mode)
    assert shared_mode(str(database)) == (mode if mode & 0o077 else None)


def test_the_lock_is_held_until_a_read_the_store_left_behind_has_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's stop leaves a read that outlives READER_STOP_S to its thread; the lock
    was let go as the store's stop returned, while that thread still used the file, and
    a second core could open it meanwhile. It is let go once the thread has ended."""
    import threading

    from twisted.application.service import MultiService

    from kcm.core.store import engine
    from kcm.core.store.engine import Store
    from tests.unit.test_writer_thread import Reactor

    monkeypatch.setattr(engine, "READER_STOP_S", 0.05)
    database = tmp_path / "kcm.db"
    url = f"sqlite:///{database}"
    reactor = Reactor()
    store = Store(url, reactor=reactor, migrate=True, threads=1)
    core = MultiService()
    SqliteOwner(url, store).setServiceParent(core)
    store.setServiceParent(core)
    core.startService()
    reading, release = threading.Event(), threading.Event()
    store.read_plain(lambda connection: (reading.set(), release.wait(30)))
    assert reading.wait(5)
    stopped = core.stopService()  # (the store first: it leaves the read to its thread)
    assert not stopped.called
    with pytest.raises(StartupError):
        take(str(database))  # (still this core's)
    release.set()
    for _ in range(2):  # the read's outcome, then the thread's end
        reactor.run_one()
    assert stopped.called
    os.close(take(str(database)))  # (let go)


def test_a_database_file_of_several_names_is_refused_before_its_lock_is_taken(
        tmp_path: Path) -> None:
    """A hard link is another path, so another lock file (and another WAL): a core on each
    name served the one database. Neither name starts; one name alone does again."""
    from kcm.core.store.sqlite_links import linked_refusal

    database = tmp_path / "kcm.db"
    database.write_bytes(b"")
    os.link(database, tmp_path / "other.db")
    for name in (database, tmp_path / "other.db"):
        with pytest.raises(StartupError) as refused:
            SqliteOwner(f"sqlite:///{name}").startService()
        assert str(refused.value) == linked_refusal(str(name))
        assert not os.path.exists(lock_path(str(name)))
    os.unlink(tmp_path / "other.db")
    owner = SqliteOwner(f"sqlite:///{database}")
    owner.startService()
    owner.stopService()


def test_a_second_name_given_while_it_runs_is_noticed_within_the_interval_once(
        tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from kcm.core.metrics import database_state
    from kcm.core.sqlite_owner import LINK_CHECK_INTERVAL

    database = tmp_path / "kcm.db"
    database.touch(mode=0o600)
    clock = Clock()
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    owner = SqliteOwner(f"sqlite:///{database}", clock=clock)
    try:
        owner.startService()
        os.link(database, tmp_path / "other.db")
        assert owner.linked is None
        clock.advance(LINK_CHECK_INTERVAL)
        assert owner.linked is not None and "has 2 names" in owner.linked
        for _ in range(5):  # (looked at again and again: one line)
            clock.advance(LINK_CHECK_INTERVAL)
        # /readyz's check looks itself, at once.
        state = database_state(f"sqlite:///{database}")
        assert state == {"database": f"refused: {owner.linked}"}
        os.unlink(tmp_path / "other.db")
        clock.advance(LINK_CHECK_INTERVAL)
        assert owner.linked is None
        owner.stopService()
        assert not clock.getDelayedCalls()
    finally:
        globalLogPublisher.removeObserver(lines.append)
    said = [formatEvent(e) for e in lines if e.get("log_namespace") == "kcm.core.sqlite_owner"]
    assert said == [
        "a second name was given to the database file while kcm-core runs; /readyz answers "
        f"503 until it is gone: {owner_refusal(database)}",
        f"the database file {database} has one name again"]


def owner_refusal(database: Path) -> str:
    return ("the SQLite database file has 2 names (hard links), and SQLite keeps a WAL per "
            "name, which corrupts it: with kcm-core stopped, remove the other names (find "
            f"-samefile) or replace it by a copy: {os.path.realpath(database)}")


def test_the_interval_is_the_guide_s_and_a_postgresql_url_is_no_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz's look at the file's names is for SQLite alone: a PostgreSQL database named
    like a file of several names in the current directory is not refused."""
    from kcm.core import metrics
    from kcm.core.sqlite_owner import LINK_CHECK_INTERVAL

    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    assert LINK_CHECK_INTERVAL == 5.0 and "A link made while the core runs is\nnoticed " \
        "within 5 s" in guide
    (tmp_path / "kcm").touch()
    os.link(tmp_path / "kcm", tmp_path / "kcm2")
    monkeypatch.chdir(tmp_path)
    assert metrics._sqlite_linked("sqlite:///kcm") is not None
    assert metrics._sqlite_linked("postgresql+psycopg://u@localhost/kcm") is None


def test_a_file_moved_or_replaced_while_it_runs_is_noticed_once_and_its_return_too(
        tmp_path: Path) -> None:
    """The path no longer names the file the core opened (by device and inode): a
    refusal, one error line, /readyz's check says so; back in place, one info line."""
    from twisted.internet.task import Clock

    from kcm.core.metrics import database_state
    from kcm.core.sqlite_owner import LINK_CHECK_INTERVAL

    database = tmp_path / "kcm.db"
    database.touch(mode=0o600)
    clock = Clock()
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    owner = SqliteOwner(f"sqlite:///{database}", clock=clock)
    try:
        owner.startService()
        assert owner.refusal() is None
        os.rename(database, tmp_path / "moved.db")
        copy = tmp_path / "copy.db"
        copy.touch(mode=0o600)
        os.rename(copy, database)  # (another file at its path: a restore, say)
        clock.advance(LINK_CHECK_INTERVAL)
        assert owner.linked is not None and owner.linked.startswith(
            "the SQLite database file was moved, replaced or removed while kcm-core runs")
        assert owner.linked.endswith(f": {database}")
        for _ in range(3):
            clock.advance(LINK_CHECK_INTERVAL)
        state = database_state(f"sqlite:///{database}", file_refusal=owner.refusal)
        assert state == {"database": f"refused: {owner.linked}"}
        os.unlink(database)  # (gone altogether: still refused, no second line)
        clock.advance(LINK_CHECK_INTERVAL)
        assert owner.linked is not None
        os.rename(tmp_path / "moved.db", database)
        clock.advance(LINK_CHECK_INTERVAL)
        assert owner.linked is None and owner.refusal() is None
        owner.stopService()
    finally:
        globalLogPublisher.removeObserver(lines.append)
    said = [formatEvent(e) for e in lines if e.get("log_namespace") == "kcm.core.sqlite_owner"]
    assert said == [
        "the database file is not the one kcm-core opened; /readyz answers 503 until it is "
        "back: the SQLite database file was moved, replaced or removed while kcm-core runs: "
        "its writes go to the file it opened, not to this path; stop kcm-core and put the "
        f"database back before it starts again: {database}",
        f"the database file {database} is the one kcm-core opened again"]


def test_a_file_the_store_makes_after_the_lock_is_the_one_opened(tmp_path: Path) -> None:
    """A first start: no file when the lock is taken; the file the store then makes is
    the one opened, not a replacement."""
    database = tmp_path / "kcm.db"
    owner = SqliteOwner(f"sqlite:///{database}")
    owner.startService()
    try:
        database.touch(mode=0o600)
        assert owner.refusal() is None
        os.rename(database, tmp_path / "moved.db")
        (tmp_path / "new.db").touch(mode=0o600)
        os.rename(tmp_path / "new.db", database)
        assert owner.refusal() is not None
    finally:
        owner.stopService()
