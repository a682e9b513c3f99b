"""``kcm.cli.main`` run inside another program (a test, a tool) closes what each command
opened: after commands that read and write the database, this process holds no session on
it (PostgreSQL would otherwise refuse to drop it, or to copy it as a template)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import sqlalchemy

from kcm.cli import main
from kcm.pki import init_pki
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import CoreProcess


def test_commands_run_in_process_leave_no_session_on_the_database(
        postgres_url: str, tmp_path: Path) -> None:
    url = fresh_database(postgres_url, "kcm_cli_in_process")
    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    core = CoreProcess(root, url)
    init_pki(root / "pki")
    core.write_config()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        for command in (["core", "init"], ["core", "tenant", "add", "demo"],
                        ["core", "service", "add", "demo", "app"], ["core", "tenant", "list"],
                        ["audit", "verify"]):
            assert main([*command, "-c", str(core.config)]) == 0, out.getvalue()
    assert "audit log intact" in out.getvalue()
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            sessions = connection.scalar(sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'kcm_cli_in_process'"))
            assert sessions == 0
            connection.execute(sqlalchemy.text("DROP DATABASE kcm_cli_in_process"))
    finally:
        admin.dispose()
