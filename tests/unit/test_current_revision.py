""":func:`kcm.core.store.migrate.current_revision` reads ``alembic_version`` itself: what
kcm-core and every `kcm` command ask at start, without importing Alembic (a tenth of a
core's start) for it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kcm.core.store.migrate import current_revision


def _database(path: Path, revisions: list[str] | None) -> str:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE tenants (name TEXT)")
        if revisions is not None:
            connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
            connection.executemany("INSERT INTO alembic_version VALUES (?)",
                                   [(r,) for r in revisions])
    connection.close()
    return f"sqlite:///{path}"


def test_the_one_revision_recorded_or_none(tmp_path: Path) -> None:
    assert current_revision(f"sqlite:///{tmp_path / 'missing.db'}") is None
    assert current_revision(_database(tmp_path / "none.db", None)) is None
    assert current_revision(_database(tmp_path / "empty.db", [])) is None
    assert current_revision(_database(tmp_path / "one.db", ["0017"])) == "0017"


def test_several_revisions_recorded_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="records 2 schema revisions"):
        current_revision(_database(tmp_path / "two.db", ["0016", "0017"]))


def test_reading_the_revision_imports_no_alembic(tmp_path: Path) -> None:
    url = _database(tmp_path / "one.db", ["0017"])
    code = ("import sys; from kcm.core.store.migrate import current_revision, schema_refusal; "
            f"current_revision({url!r}); import kcm.core.tap; "
            "assert 'alembic' not in sys.modules, sorted(m for m in sys.modules "
            "if m.startswith('alembic'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
