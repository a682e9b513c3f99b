"""kcm-core's start upgrades the schema (``Store(migrate=True)``) and says so in one line
when it did something: ``schema upgraded from OLD to NEW``, or ``schema created at NEW``
for a new database; nothing on a database already at the newest revision."""

from __future__ import annotations

from pathlib import Path

from twisted.logger import capturedLogs, formatEvent

from kcm.core.store.engine import Store
from kcm.core.store.migrate import HEAD_REVISION, current_revision, upgrade


def started(url: str) -> list[str]:
    """What a migrating store's start logged."""
    store = Store(url, migrate=True)
    with capturedLogs() as events:
        store.startService()
    store.stopService()
    return [formatEvent(event) for event in events if "schema" in formatEvent(event)]


def test_a_start_that_upgrades_the_schema_logs_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    assert upgrade(url, "0011") == (None, "0011")
    assert started(url) == [f"schema upgraded from 0011 to {HEAD_REVISION}"]
    assert current_revision(url) == HEAD_REVISION
    assert started(url) == []  # at the newest revision: nothing done, nothing said
    assert upgrade(url) is None


def test_a_start_on_a_new_database_says_it_created_the_schema(tmp_path: Path) -> None:
    assert started(f"sqlite:///{tmp_path / 'new.db'}") == [
        f"schema created at {HEAD_REVISION}"]
