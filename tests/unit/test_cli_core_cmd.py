"""``kcm core`` commands that write with L1 refuse another database's L1 key, names no
certificate can carry, and a database whose schema is newer than this release's."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text

from kcm.cli import main
from kcm.core.service import L1_CHECK_META
from kcm.core.store.engine import Store
from kcm.core.store.migrate import head_revision
from kcm.core.store.schema import AuditLog, Meta, Tenant


def write_config(root: Path, name: str, l1_key: Path) -> Path:
    config = root / name
    config.write_text(f'[core]\ndatabase = "sqlite:///{root / "kcm.db"}"\n'
                      f'l1_key_file = "{l1_key}"\n')
    return config


@pytest.fixture
def deployment(tmp_path: Path, capsys) -> Path:
    """An initialised deployment with tenant demo and its service app."""
    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    config = write_config(root, "core.toml", root / "l1.key")
    for argv in (["core", "init"], ["core", "bootstrap", "demo", "app"]):
        assert main([*argv, "-c", str(config)]) == 0
    capsys.readouterr()
    return config


def kcm(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def in_database(config: Path, fn):
    store = Store(f"sqlite:///{config.parent / 'kcm.db'}")
    try:
        return store.run_sync(fn)
    finally:
        store.stopService()


def audit_records(config: Path) -> int:
    return in_database(config, lambda s: s.scalar(select(func.count()).select_from(AuditLog)))


@pytest.mark.parametrize("argv", [
    ["core", "tenant", "add", "acme"],
    ["core", "tenant", "rotate", "demo"],
    ["core", "tenant", "remove", "demo", "--yes"],
    ["core", "tenant", "policy", "demo", "--interval", "90d"],
    ["core", "service", "add", "demo", "web"],
    ["core", "service", "rotate", "demo", "app"],
    ["core", "service", "policy", "demo", "app", "--max-uses", "1000"],
    ["core", "policy", "--interval", "90d"],
    ["core", "bootstrap", "acme", "web"],
])
def test_another_l1_key_is_refused_before_anything_is_written(deployment: Path, capsys,
                                                              argv: list[str]) -> None:
    other_key = deployment.parent / "other-l1.key"
    fd = os.open(other_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
    os.close(fd)
    wrong = write_config(deployment.parent, "wrong.toml", other_key)
    records = audit_records(deployment)
    status, out, err = kcm(capsys, *argv, "-c", str(wrong))
    assert (status, out) == (2, "")
    assert err.endswith("is not the L1 key of this database\n") and err.count("\n") == 1
    assert str(other_key) in err
    assert audit_records(deployment) == records
    assert kcm(capsys, "audit", "verify", "-c", str(deployment))[0] == 0
    assert in_database(deployment, lambda s: s.scalars(select(Tenant.name)).all()) == ["demo"]


def test_a_database_without_a_check_value_is_not_written_with_l1(deployment: Path,
                                                                   capsys) -> None:
    in_database(deployment, lambda s: s.execute(delete(Meta).where(Meta.key == L1_CHECK_META)))
    assert kcm(capsys, "core", "tenant", "add", "acme", "-c", str(deployment)) == (
        2, "", "kcm core tenant add: error: the database was not initialised: run "
               "`kcm core init` first\n")


@pytest.mark.parametrize(("argv", "shown"), [
    (["core", "tenant", "add", "Bad Name"], "tenant name 'Bad Name'"),
    (["core", "tenant", "add", "a/b"], "tenant name 'a/b'"),
    (["core", "tenant", "add", ".."], "tenant name '..'"),
    (["core", "tenant", "add", "."], "tenant name '.'"),
    (["core", "tenant", "add", ""], "tenant name ''"),
    (["core", "tenant", "add", "x\x1b[31m\nforged"], "tenant name 'x\\x1b[31m\\nforged'"),
    (["core", "tenant", "add", "caf\u00e9"], "tenant name 'caf\\xe9'"),
    (["core", "service", "add", "demo", "a b"], "service name 'a b'"),
    (["core", "service", "add", "bad/tenant", "app"], "tenant name 'bad/tenant'"),
    (["core", "bootstrap", "demo", "app/../x"], "service name 'app/../x'"),
    (["core", "bootstrap", "x y" * 10_000, "app"], "tenant name '" + "x y" * 21 + "x'..."),
])
def test_names_no_certificate_can_carry_are_refused(deployment: Path, capsys, argv,
                                                    shown: str) -> None:
    records = audit_records(deployment)
    status, out, err = kcm(capsys, *argv, "-c", str(deployment))
    assert (status, out) == (2, "")
    assert shown in err and err.count("\n") == 1 and err.isascii() and "\x1b" not in err
    assert len(err) < 250
    assert "is not one a certificate can carry" in err
    assert audit_records(deployment) == records


def test_names_a_certificate_can_carry_are_taken(deployment: Path, capsys) -> None:
    status, out, _ = kcm(capsys, "core", "bootstrap", "Acme-2.eu_west", "web.v2", "-c",
                         str(deployment))
    assert status == 0 and out.startswith("tenant Acme-2.eu_west, service web.v2: ")


def test_init_says_a_newer_schema_is_newer(deployment: Path, capsys) -> None:
    in_database(deployment, lambda s: s.execute(
        text("UPDATE alembic_version SET version_num = '9999'")))
    assert kcm(capsys, "core", "init", "-c", str(deployment)) == (
        2, "", f"kcm core init: error: the database's schema revision 9999 is newer than this "
               f"kcm's ({head_revision()}): run the kcm release that wrote it, or a later one\n")


@pytest.mark.parametrize("command", [
    ("core", "tenant", "add", "acme"), ("core", "service", "add", "demo", "web"),
    ("core", "bootstrap", "acme", "web"), ("core", "tenant", "list"),
    ("audit", "verify"), ("audit", "tail")])
@pytest.mark.parametrize(("revision", "says"), [
    ("9999", "is newer than this kcm's"), ("0001", "is older than this kcm's")])
def test_commands_use_a_database_of_this_release_s_schema_only(
        deployment: Path, capsys, command: tuple[str, ...], revision: str, says: str) -> None:
    """An older kcm never writes into a schema a newer one made (nor reads it), nor into one
    `kcm core init` has not upgraded yet: one line, exit 2, nothing written."""
    in_database(deployment, lambda s: s.execute(
        text(f"UPDATE alembic_version SET version_num = '{revision}'")))
    before = in_database(deployment, lambda s: s.scalar(text("SELECT count(*) FROM audit_log")))
    status, out, err = kcm(capsys, *command, "-c", str(deployment))
    assert status == 2 and out == "" and says in err and err.count("\n") == 1, err
    assert in_database(deployment, lambda s: s.scalar(
        text("SELECT count(*) FROM audit_log"))) == before


def test_kcm_core_says_a_newer_schema_is_newer(deployment: Path) -> None:
    """kcm-core's store upgrades the schema when it starts: its one-line start failure."""
    from kcm.core.store.migrate import SchemaTooNew
    from kcm.process import start_failure_reason

    in_database(deployment, lambda s: s.execute(
        text("UPDATE alembic_version SET version_num = '9999'")))
    store = Store(f"sqlite:///{deployment.parent / 'kcm.db'}", migrate=True)
    with pytest.raises(SchemaTooNew) as refused:
        store.startService()
    assert start_failure_reason(object(), "kcm-store", refused.value) == (
        f"the database's schema revision 9999 is newer than this kcm's ({head_revision()}): "
        "run the kcm release that wrote it, or a later one")


@pytest.mark.parametrize("argv", [
    ["core", "init"],
    ["core", "tenant", "list"],
    ["core", "bootstrap", "demo", "app"],
    ["core", "policy"],
    ["audit", "verify"],
    ["audit", "export"],
])
def test_a_command_without_a_configuration_refuses_to_run(tmp_path: Path, monkeypatch,
                                                          capsys, argv) -> None:
    """Without -c or KCM_CORE_CONFIG a command never acts on the built-in defaults
    (var/kcm-core.db and var/l1.key of the working directory): kcm core init would make a
    new L1 key and database there."""
    monkeypatch.delenv("KCM_CORE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    status, out, err = kcm(capsys, *argv)
    assert status == 2
    assert err.startswith(f"kcm {argv[0]} ")
    assert err.endswith(": error: no configuration: give -c FILE (the kcm-core "
                        "configuration) or set KCM_CORE_CONFIG\n")
    assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_kcm_core_config_names_the_configuration(deployment: Path, monkeypatch,
                                                  capsys) -> None:
    monkeypatch.setenv("KCM_CORE_CONFIG", str(deployment))
    status, out, _ = kcm(capsys, "core", "tenant", "list")
    assert status == 0
    assert out.startswith("demo  created ")


def test_init_names_the_deployment_and_init_restored_raises_its_generation(
        deployment: Path, capsys) -> None:
    from kcm.core.lineage import read_lineage

    status, out, _ = kcm(capsys, "core", "init", "-c", str(deployment))
    assert status == 0
    lineage = in_database(deployment, read_lineage)
    assert f"deployment {lineage.deployment}, restore generation 0\n" in out
    status, out, _ = kcm(capsys, "core", "init", "--restored", "-c", str(deployment))
    assert status == 0
    assert (f"deployment {lineage.deployment}, restore generation 1 (raised: a restored "
            "copy)\n") in out
    status, out, _ = kcm(capsys, "core", "init", "-c", str(deployment))
    assert "restore generation 1\n" in out


def test_init_restored_refuses_an_empty_database(tmp_path: Path, capsys) -> None:
    root = tmp_path / "new"
    root.mkdir(mode=0o700)
    config = write_config(root, "core.toml", root / "l1.key")
    status, _, err = kcm(capsys, "core", "init", "--restored", "-c", str(config))
    assert status != 0 and "the database is empty" in err
    assert not (root / "l1.key").exists()


def test_init_restored_of_a_copy_without_a_deployment_id_gives_it_the_originals(
        deployment: Path, capsys) -> None:
    """A backup taken before this release (the one "Upgrades" takes first) has no deployment
    id: restored, it is given the one its L1 key gives, which is the original's (upgraded
    since), so a gateway that followed the original takes the copy for its restore."""
    from kcm.core.lineage import DEPLOYMENT_META, GENERATION_META

    status, out, _ = kcm(capsys, "core", "init", "-c", str(deployment))
    original = re.search(r"deployment ([0-9a-f]{32}), restore generation 0\n", out)
    assert status == 0 and original is not None
    in_database(deployment, lambda s: s.execute(delete(Meta).where(
        Meta.key.in_((DEPLOYMENT_META, GENERATION_META)))))
    status, out, _ = kcm(capsys, "core", "init", "--restored", "-c", str(deployment))
    assert status == 0
    assert (f"deployment {original[1]}, restore generation 1 (raised: a restored copy)\n"
            in out)
    assert ("note: the copy had no deployment id (backed up before this release): it is "
            "given the one its L1 key gives, the original's unless the L1 key was rotated "
            "after the backup; a gateway that then refuses its cores as another deployment "
            "needs a restart\n") in out
    status, out, _ = kcm(capsys, "core", "init", "--restored", "-c", str(deployment))
    assert status == 0 and "restore generation 2" in out and "note:" not in out
