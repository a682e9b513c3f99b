"""What kcm-core writes is the owner's alone: the data directory, the L1 key file, the SQLite
database with its WAL and shared-memory files, and a log file (issue 11, defect 8)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from kmip.core import enums

from tests.e2e_support import CoreProcess, deploy, wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_deployment_is_owner_only_and_so_is_its_log_file(tmp_path: Path) -> None:
    root = tmp_path / "core"
    core = deploy(root, f"sqlite:///{tmp_path / 'core' / 'kcm-core.db'}")
    log_file = root / "kcm-core.jsonl"
    text = core.config.read_text().replace(
        "[core.tls]", f'log_file = "{log_file}"\n[core.tls]', 1)
    core.config.write_text(text)
    core.start()
    try:
        client = core.pykmip()
        try:
            client.create(enums.CryptographicAlgorithm.AES, 128)
        finally:
            client.close()
        wait_until(lambda: log_file.exists() and '"kcm.audit"' in log_file.read_text(),
                   what="an audit event in the log file")
    finally:
        core.stop()
    assert _mode(root) == 0o700
    assert _mode(root / "l1.key") == 0o600
    assert _mode(root / "kcm-core.db") == 0o600
    for name in ("kcm-core.db-wal", "kcm-core.db-shm"):  # left by the last connection, if any
        if (root / name).exists():
            assert _mode(root / name) == 0o600, name
    assert _mode(log_file) == 0o600
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line]
    assert any(line["namespace"] == "kcm.audit" for line in lines)


def test_init_refuses_a_data_directory_other_users_can_reach(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    core = CoreProcess(shared, f"sqlite:///{shared / 'kcm-core.db'}")
    core.write_config()
    result = core.kcm("core", "init", check=False)
    assert result.returncode == 2
    assert f"chmod 700 {shared}" in result.stderr
    assert not (shared / "l1.key").exists() and not (shared / "kcm-core.db").exists()
    shared.chmod(0o700)
    assert core.kcm("core", "init").returncode == 0
    assert _mode(shared / "kcm-core.db") == 0o600


def test_init_creates_a_missing_data_directory_private(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir(mode=0o700)
    core = CoreProcess(root, f"sqlite:///{root / 'data' / 'kcm-core.db'}")
    core.write_config()
    # The L1 key file's directory (root) is private; the database's does not exist yet.
    assert core.kcm("core", "init").returncode == 0
    assert _mode(root / "data") == 0o700
    assert _mode(root / "data" / "kcm-core.db") == 0o600


def test_init_says_what_it_did_to_the_schema(tmp_path: Path) -> None:
    """An operator upgrading sees that a migration ran, and from which revision."""
    from kcm.core.store.migrate import head_revision, upgrade

    root = tmp_path / "old"
    root.mkdir(mode=0o700)
    database = f"sqlite:///{root / 'kcm-core.db'}"
    core = CoreProcess(root, database)
    core.write_config()
    head = head_revision()
    assert f"(schema created at {head})" in core.kcm("core", "init").stdout
    assert "(schema up to date)" in core.kcm("core", "init").stdout
    older = tmp_path / "older"
    older.mkdir(mode=0o700)
    upgrade(f"sqlite:///{older / 'kcm-core.db'}", "0001")
    core = CoreProcess(older, f"sqlite:///{older / 'kcm-core.db'}")
    core.write_config()
    assert f"(schema upgraded from 0001 to {head})" in core.kcm("core", "init").stdout



def test_init_never_makes_an_l1_for_a_database_that_has_one(tmp_path: Path) -> None:
    """`kcm core init` on a host of an existing deployment whose L1 key file was not
    copied yet: refused at once, naming what to do, with no key file made (one made would
    only be refused, and left behind); with another deployment's key, refused before any
    migration."""
    from kcm.core.store.migrate import current_revision
    from tests.migration_support import downgrade

    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    database = f"sqlite:///{root / 'kcm-core.db'}"
    core = CoreProcess(root, database)
    core.write_config()
    assert core.kcm("core", "init").returncode == 0
    key = root / "l1.key"
    kept = key.read_bytes()
    key.unlink()
    refused = core.kcm("core", "init", check=False)
    assert refused.returncode == 2
    assert "the database already has an L1 key: copy the deployment's L1 here" in (
        refused.stderr)
    assert not key.exists()

    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    stranger = CoreProcess(other, f"sqlite:///{other / 'kcm-core.db'}")
    stranger.write_config()
    assert stranger.kcm("core", "init").returncode == 0
    key.write_bytes((other / "l1.key").read_bytes())
    key.chmod(0o600)
    downgrade(database, "0008")  # behind: a refused init migrates nothing
    refused = core.kcm("core", "init", check=False)
    assert refused.returncode == 2 and "is not the L1 key of this database" in refused.stderr
    assert current_revision(database) == "0008"
    key.write_bytes(kept)
    assert core.kcm("core", "init").returncode == 0
    assert current_revision(database) != "0008"
