"""A SQLite database file of one name only (kcm.core.store.sqlite_links): a hard link has a
WAL of its own, and two WALs corrupt the database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kcm.core.store.engine import open_engine
from kcm.core.store.sqlite_links import SqliteFileLinked, linked_refusal


def test_a_file_of_one_name_or_none_yet_is_used(tmp_path: Path) -> None:
    assert linked_refusal(str(tmp_path / "kcm.db")) is None
    (tmp_path / "kcm.db").write_bytes(b"")
    assert linked_refusal(str(tmp_path / "kcm.db")) is None
    os.symlink(tmp_path / "kcm.db", tmp_path / "alias.db")  # (resolved: no second name)
    assert linked_refusal(str(tmp_path / "alias.db")) is None
    open_engine(f"sqlite:///{tmp_path / 'kcm.db'}").dispose()


def test_a_file_of_two_names_is_refused_by_every_engine_saying_what_to_do(
        tmp_path: Path) -> None:
    (tmp_path / "kcm.db").write_bytes(b"")
    os.link(tmp_path / "kcm.db", tmp_path / "copy.db")
    real = os.path.realpath(tmp_path / "kcm.db")
    refusal = linked_refusal(str(tmp_path / "kcm.db"))
    assert refusal == (
        "the SQLite database file has 2 names (hard links), and SQLite keeps a WAL per "
        "name, which corrupts it: with kcm-core stopped, remove the other names (find "
        f"-samefile) or replace it by a copy: {real}")
    assert refusal.isascii()
    for name in ("kcm.db", "copy.db"):
        with pytest.raises(SqliteFileLinked):
            open_engine(f"sqlite:///{tmp_path / name}")


def test_a_symbolic_link_to_a_name_of_a_linked_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kcm.db").write_bytes(b"")
    os.link(tmp_path / "kcm.db", tmp_path / "copy.db")
    os.symlink(tmp_path / "copy.db", tmp_path / "alias.db")  # (the file's, not the link's)
    assert "has 2 names" in linked_refusal(str(tmp_path / "alias.db"))


def test_a_path_that_cannot_be_looked_at_is_left_to_sqlite_to_say(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    assert linked_refusal(str(tmp_path / "file" / "kcm.db")) is None  # (not a directory)
