"""The L1 key is checked against a database before kcm-core upgrades its schema, at every
older revision this release upgrades (the check value is read from ``meta``, there since
0001): another key is refused with the revision left as it was; the database's key, a
database at this release's revision and a new one are let through (the latter two without
opening the key)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from kcm.core.l1 import L1_CHECK_META
from kcm.core.l1_before_migration import migration_refusal, recorded_l1_check
from kcm.core.l1_file import FileL1
from kcm.core.store.engine import open_engine
from kcm.core.store.migrate import alembic_config, current_revision, head_revision, upgrade

OURS, THEIRS = FileL1(os.urandom(32)), FileL1(os.urandom(32), "L1 key file other.key")


def _older_revisions() -> list[str]:
    scripts = ScriptDirectory.from_config(alembic_config())
    return sorted(r.revision for r in scripts.walk_revisions() if r.revision != head_revision())


def _never_opened() -> FileL1:
    raise AssertionError("the key was opened")


@pytest.mark.parametrize("revision", _older_revisions())
def test_another_key_is_refused_at_every_older_revision(tmp_path: Path, revision: str) -> None:
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    upgrade(url, revision)
    engine = open_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO meta (key, value) VALUES (?, ?)",
                                   (L1_CHECK_META, OURS.check_value()))
    engine.dispose()
    assert recorded_l1_check(url) == OURS.check_value()
    assert migration_refusal(url, lambda: THEIRS) == (
        "the L1 key file other.key is not the L1 key of this database (its schema, at "
        f"revision {revision}, was not upgraded)")
    assert current_revision(url) == revision
    assert migration_refusal(url, lambda: OURS) is None


def test_no_check_where_no_upgrade_of_an_older_revision_is_due(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    assert migration_refusal(url, _never_opened) is None  # a new database: the store's
    upgrade(url)
    assert migration_refusal(url, _never_opened) is None  # this release's: the MasterKey's
