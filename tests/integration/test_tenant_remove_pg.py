"""``kcm core tenant remove`` of a tenant with more objects than a PostgreSQL statement
takes parameters (65,535): no statement of the removal binds one per object, and what is
left after the first transaction goes in batches."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import sqlalchemy

from kcm.cli import main
from kcm.testing.postgres import fresh_database

_databases = itertools.count()
OBJECTS = 70_000
TOMBSTONES = 1_500


def test_a_tenant_with_more_objects_than_a_statement_takes_parameters_is_removed(
        tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = fresh_database(postgres_url, f"kcm_remove_{os.getpid()}_{next(_databases)}")
    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    config = root / "core.toml"
    config.write_text(f'[core]\ndatabase = "{url}"\nl1_key_file = "{root / "l1.key"}"\n')
    c = ("-c", str(config))
    for argv in (["core", "init"], ["core", "bootstrap", "demo", "app"],
                 ["core", "bootstrap", "other", "billing"]):
        assert main([*argv, *c]) == 0
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as db:  # destroyed objects, some named, and L4 tombstones
            columns = ", ".join(
                column.name for column in sqlalchemy.Table(
                    "managed_objects", sqlalchemy.MetaData(), autoload_with=db).columns
                if column.name not in ("uid", "created_seq", "level", "key_version", "state",
                                       "material"))
            top = db.scalar(sqlalchemy.text("SELECT max(created_seq) FROM managed_objects"))
            l3 = db.scalar(sqlalchemy.text(
                "SELECT uid FROM managed_objects WHERE tenant = 'other' AND level = 3"))
            db.execute(sqlalchemy.text(
                f"INSERT INTO managed_objects (uid, created_seq, level, key_version, state, "
                f"material, {columns}) SELECT 'gone-' || g, :top + g, NULL, NULL, 5, NULL, "
                f"{columns} FROM managed_objects, generate_series(1, :n) g "
                "WHERE tenant = 'other' AND level = 2"), {"top": top, "n": OBJECTS})
            db.execute(sqlalchemy.text(
                "INSERT INTO object_names (uid, name, tenant, name_type) SELECT 'gone-' || g, "
                "'n', 'other', 1 FROM generate_series(1, :n, 7) g"), {"n": OBJECTS})
            db.execute(sqlalchemy.text(
                "INSERT INTO l4_tombstones (token_id, tenant, l3_uid, at, reason) SELECT "
                "'token-' || g, 'other', :l3, 0, 'revoked' FROM generate_series(1, :n) g"),
                {"l3": l3, "n": TOMBSTONES})
        capsys.readouterr()
        status = main(["core", "tenant", "remove", "other", "--yes", *c])
        out, err = capsys.readouterr()
        assert (status, err) == (0, "")
        assert out.splitlines()[-1] == (
            f"tenant other removed with its {OBJECTS + 2} keys and objects")
        with engine.connect() as db:
            for table in ("managed_objects", "object_names", "l4_tombstones"):
                assert db.scalar(sqlalchemy.text(
                    f"SELECT count(*) FROM {table} WHERE tenant = 'other'")) == 0, table
            assert db.scalar(sqlalchemy.text("SELECT count(*) FROM managed_objects")) == 2
            assert db.scalar(sqlalchemy.text("SELECT array_agg(name) FROM tenants")) == [
                "demo"]
            assert db.scalar(sqlalchemy.text(
                "SELECT count(*) FROM meta WHERE key LIKE 'tenant.removing:%'")) == 0
    finally:
        engine.dispose()
    assert main(["audit", "verify", *c]) == 0
