"""A store whose ``alembic_version`` row is gone (its tables there) is refused in one line by
kcm-core's start, ``kcm core init`` (before it looks for or makes an L1), the commands that
read it and ``kcm config check``: they ran against a schema of unknown revision, and init
failed with ``table tenants already exists``."""

from __future__ import annotations

import sqlite3

import pytest

from kcm.core.store.engine import Store
from kcm.core.store.migrate import SchemaUnknown
from tests.unit.test_cli_audit import Deployment, deployment  # noqa: F401  (fixture)

REFUSAL = "the database holds KCM's tables but no schema revision"


def _forget_revision(deployment: Deployment) -> None:  # noqa: F811
    with sqlite3.connect(deployment.root / "kcm.db") as db:
        db.execute("DELETE FROM alembic_version")


def test_a_store_without_its_revision_is_refused(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    _forget_revision(deployment)
    l1 = deployment.l1_file.read_bytes()
    deployment.l1_file.unlink()
    status, out = deployment.kcm(capsys, "core", "init")
    assert status == 2 and REFUSAL in out, out
    assert not deployment.l1_file.exists()  # no new L1 made for a database that has one
    deployment.l1_file.write_bytes(l1)
    for command in (["core", "tenant", "list"], ["config", "check"]):
        status, out = deployment.kcm(capsys, *command)
        assert status != 0 and REFUSAL in out, (command, out)
    store = Store(deployment.url, migrate=True)
    with pytest.raises(SchemaUnknown):
        store.startService()
    store.stopService()
