"""``kcm config check`` finds, on real files (a development PKI, a database and L1 key file
made by ``kcm core init``), what would stop kcm-core or kcm-gateway from starting, one line
each, and writes nothing."""

from __future__ import annotations

import base64
import datetime as dt
import gc
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from kcm.cli import main
from kcm.core.store.engine import Store
from kcm.core.store.migrate import head_revision
from kcm.pki import PkiPaths, init_pki, issue_certificate, load_ca, write_certificate

NOW = dt.datetime.now(dt.UTC)


def core_config(root: Path, pki: PkiPaths, *, l1_key: Path | None = None,
                extra: str = "") -> Path:
    config = root / "core.toml"
    config.write_text(
        f'[core]\ndatabase = "sqlite:///{root / "kcm.db"}"\n'
        f'l1_key_file = "{l1_key or root / "l1.key"}"\n{extra}'
        f'[core.tls]\ncert = "{pki.core.cert}"\nkey = "{pki.core.key}"\nca = "{pki.ca.cert}"\n'
        # Caps that fit any shell's ulimit -n: the good configuration passes everywhere.
        "[core.limits]\nmax_connections = 100\nmax_link_connections = 8\n")
    return config


def gateway_config(root: Path, pki: PkiPaths, *, cert: Path | None = None,
                   key: Path | None = None) -> Path:
    config = root / "gateway.toml"
    config.write_text(
        '[gateway]\ncore = ["tcp:127.0.0.1:5697", "tcp:127.0.0.2:5697"]\n'
        f'[gateway.tls]\ncert = "{cert or pki.gateway.cert}"\n'
        f'key = "{key or pki.gateway.key}"\nca = "{pki.ca.cert}"\n'
        "[gateway.limits]\nmax_connections = 100\n")
    return config


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return init_pki(tmp_path / "pki")


@pytest.fixture
def core(tmp_path: Path, pki: PkiPaths, capsys) -> Path:
    """An initialised kcm-core deployment's configuration."""
    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    config = core_config(root, pki)
    assert main(["core", "init", "-c", str(config)]) == 0
    capsys.readouterr()
    gc.collect()  # closes init's connections: the database as a stopped core leaves it
    assert not (root / "kcm.db-wal").exists()
    return config


def check(capsys, config: Path) -> tuple[int, list[str]]:
    status = main(["config", "check", "-c", str(config)])
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert all(line.isascii() and line.split(": ", 1)[0] in ("ok", "warning", "error")
               for line in lines), lines
    return status, lines


def found(lines: list[str], level: str, *parts: str) -> str:
    """The one line of ``level`` holding every one of ``parts``."""
    matching = [line for line in lines
                if line.startswith(f"{level}: ") and all(part in line for part in parts)]
    assert len(matching) == 1, lines
    return matching[0]


def set_revision(config: Path, revision: str) -> None:
    store = Store(f"sqlite:///{config.parent / 'kcm.db'}")
    try:
        store.run_sync(lambda s: s.execute(
            text("UPDATE alembic_version SET version_num = :v"), {"v": revision}))
    finally:
        store.stopService()


def test_a_good_core_configuration_passes_and_nothing_is_written(core: Path, capsys) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in core.parent.iterdir()}
    status, lines = check(capsys, core)
    assert status == 0
    assert [line for line in lines if not line.startswith("ok: ")] == []
    for part in ("[core] loads", "core.tls.key: mode 0600", "the key is the certificate's",
                 "core.tls.cert: valid until", "chains to core.tls.ca",
                 "a core's certificate", "core.l1_key_file: the L1 key file",
                 "is reachable", f"schema at {head_revision()}",
                 "its check value is the database's", "limits.max_link_connections (108)"):
        found(lines, "ok", part)
    assert {p.name: p.stat().st_mtime_ns for p in core.parent.iterdir()} == before


def test_a_good_gateway_configuration_passes(tmp_path: Path, pki: PkiPaths, capsys) -> None:
    status, lines = check(capsys, gateway_config(tmp_path, pki))
    assert status == 0
    assert [line for line in lines if not line.startswith("ok: ")] == []
    found(lines, "ok", "[gateway] loads")
    found(lines, "ok", "tcp:127.0.0.1:5697, tcp:127.0.0.2:5697")
    found(lines, "ok", "names gateway gw1 (spiffe://kcm.test/gateway/gw1)")
    found(lines, "ok", "fit for serverAuth and clientAuth")
    found(lines, "ok", "gateway: limits.max_connections (100)")


def client_config(root: Path, pki: PkiPaths, *, cert: Path | None = None,
                  key: Path | None = None, ca: Path | None = None, extra: str = "") -> Path:
    """A [client] table whose files are named relative to the file's directory, as the SDK
    takes them."""
    config = root / "client.toml"
    config.write_text(
        '[client]\nserver = ["127.0.0.1:5698", "[::1]:5698"]\n'
        f'cert = "{os.path.relpath(cert or pki.app.cert, root)}"\n'
        f'key = "{os.path.relpath(key or pki.app.key, root)}"\n'
        f'ca = "{os.path.relpath(ca or pki.ca.cert, root)}"\n{extra}')
    return config


def test_a_file_of_a_client_table_only_is_checked(tmp_path: Path, pki: PkiPaths, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A [client] table is loaded as the SDK loads it (relative files from the file's
    directory, not the working one) and its TLS files as its clients load them."""
    monkeypatch.chdir(pki.ca.cert.parent)  # (the relative names would not be found here)
    status, lines = check(capsys, client_config(tmp_path, pki))
    assert status == 0, lines
    assert [line for line in lines if not line.startswith("ok: ")] == []
    found(lines, "ok", "[client] loads and validates")
    found(lines, "ok", "client: calls go to 127.0.0.1:5698, [::1]:5698")
    found(lines, "ok", "client.key: mode 0600")
    found(lines, "ok", f"client: {pki.app.cert}, {pki.app.key} and {pki.ca.cert} load")
    found(lines, "ok", "client.cert: valid until")
    found(lines, "ok", "client.cert: chains to client.ca")
    found(lines, "ok", "client.cert: fit for clientAuth")


def test_a_client_tables_tls_files_are_checked(tmp_path: Path, pki: PkiPaths,
                                               capsys) -> None:
    status, lines = check(capsys, client_config(tmp_path, pki, key=tmp_path / "none.key"))
    assert status == 1
    found(lines, "error", f"client.key: cannot read {tmp_path / 'none.key'}")
    status, lines = check(capsys, client_config(tmp_path, pki, key=pki.core.key))
    assert status == 1
    found(lines, "error", "client.key:", "is not the key of the certificate in")
    status, lines = check(capsys, client_config(tmp_path, pki, ca=pki.app.cert))
    assert status == 1
    found(lines, "error", "client.ca:", "holds no CA certificate")
    # The core's certificate is for serverAuth only: servers refuse it from a client.
    status, lines = check(capsys, client_config(tmp_path, pki, cert=pki.core.cert,
                                                key=pki.core.key))
    assert status == 1
    found(lines, "error", "client.cert: its extendedKeyUsage lacks clientAuth")
    pki.app.key.chmod(0o644)
    status, lines = check(capsys, client_config(tmp_path, pki))
    assert status == 1
    found(lines, "error", "client.key: TLS key file", "must not be readable by others")


def test_an_encrypted_client_key_is_an_error_without_a_pass_phrase_prompt(
        tmp_path: Path, pki: PkiPaths) -> None:
    """At a terminal too: Python's ssl (the blocking client's load) would ask for the key's
    pass phrase on it and the check would wait for an answer; the key is refused first."""
    import sys

    from tests.on_terminal import encrypted_copy, run_on_terminal

    encrypted = encrypted_copy(pki.app.key, tmp_path / "encrypted.key")
    config = client_config(tmp_path, pki, key=encrypted)
    status, text = run_on_terminal([sys.executable, "-m", "kcm", "config", "check",
                                    "-c", str(config)])
    assert "pass phrase" not in text, text
    assert status == 1, text
    assert f"error: client.key: {encrypted} is encrypted" in text, text


def test_a_client_table_beside_a_service_is_checked_too(tmp_path: Path, pki: PkiPaths,
                                                       capsys) -> None:
    config = gateway_config(tmp_path, pki)
    client = client_config(tmp_path, pki, extra="pool_size = 0\n")
    config.write_text(config.read_text() + client.read_text())
    status, lines = check(capsys, config)
    assert status == 1
    found(lines, "ok", "[gateway] loads")
    assert lines[-1] == (f"error: {config}: client.pool_size must be a whole number of at "
                         "least 1"), lines


def test_a_gateway_certificate_naming_no_gateway_is_an_error(tmp_path: Path, pki: PkiPaths,
                                                            capsys) -> None:
    config = gateway_config(tmp_path, pki, cert=pki.app.cert, key=pki.app.key)
    status, lines = check(capsys, config)
    assert status == 1
    found(lines, "error", "gateway.tls.cert:", "does not name a gateway")


def test_another_l1_key_file_is_found(core: Path, pki: PkiPaths, capsys) -> None:
    other = core.parent / "other-l1.key"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
    os.close(fd)
    status, lines = check(capsys, core_config(core.parent, pki, l1_key=other))
    assert status == 1
    assert found(lines, "error", "core.l1_key_file:") == (
        f"error: core.l1_key_file: the L1 key file {other} is not the L1 key of this database")
    assert (core.parent / "l1.key").read_bytes() not in "\n".join(lines).encode()


def test_an_l1_key_file_others_may_read_is_found(core: Path, capsys) -> None:
    os.chmod(core.parent / "l1.key", 0o644)
    status, lines = check(capsys, core)
    assert status == 1
    found(lines, "error", "core.l1_key_file:", "has mode 0644")



def test_a_log_file_kcm_core_would_refuse_is_found(core: Path, pki: PkiPaths, capsys) -> None:
    """What kcm-core refuses to append to at start (kcm.process.open_log: a symbolic link,
    another user's file, one others may read) the check names first; a file the group may
    read (logrotate's create 0640) passes."""
    root = core.parent
    own = root / "own.log"
    own.write_bytes(b"")
    own.chmod(0o600)
    grouped = root / "grouped.log"
    grouped.write_bytes(b"")
    grouped.chmod(0o640)
    loose = root / "loose.log"
    loose.write_bytes(b"")
    loose.chmod(0o644)
    link = root / "link.log"
    link.symlink_to(own)
    cases = {grouped: ("ok", "can be appended to"),
             loose: ("error", "will not be written: others may read or write it"),
             link: ("error", "will not be written: a symbolic link")}
    if os.geteuid() == 0:
        theirs = root / "theirs.log"
        theirs.write_bytes(b"")
        theirs.chmod(0o600)
        os.chown(theirs, 65534, -1)
        cases[theirs] = ("error", "will not be written: it belongs to another user")
    for path, (level, part) in cases.items():
        config = core_config(root, pki, extra=f'log_file = "{path}"\n')
        status, lines = check(capsys, config)
        assert status == (0 if level == "ok" else 1), lines
        found(lines, level, f"core.log_file: {path}", part)

def test_a_data_directory_others_may_enter_is_found_as_core_init_refuses_it(
        core: Path, capsys) -> None:
    """What releases before the 0700 rule made (a 0755 var/): an error, with kcm core
    init's own words, not an ok followed by init's refusal."""
    directory = core.parent  # the L1 key file's and the database's: one line
    found(check(capsys, core)[1], "ok", f"core: data directory {directory} is not open to "
                                        "other users (mode 0700)")
    os.chmod(directory, 0o755)
    status, lines = check(capsys, core)
    assert status == 1
    refusal = (f"the data directory {directory} is accessible by other users (mode 0755); "
               f"make it private first: chmod 700 {directory}")
    assert found(lines, "error", "data directory") == (
        f"error: core: {refusal} (kcm core init refuses it)")
    assert main(["core", "init", "-c", str(core)]) == 2
    assert capsys.readouterr().err == f"kcm core init: error: {refusal}\n"


def test_a_data_directory_core_init_cannot_make_is_named_with_what_to_do(
        tmp_path: Path, capsys) -> None:
    """Under systemd /var/lib/kcm exists only once the unit has started, and the kcm user
    cannot make it: init said `PermissionError: [Errno 13] ...`, naming nothing to do."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    directory = blocked / "kcm"
    config = tmp_path / "core.toml"
    config.write_text(f'[core]\ndatabase = "sqlite:///{directory / "kcm.db"}"\n'
                      f'l1_key_file = "{directory / "l1.key"}"\n')
    assert main(["core", "init", "-c", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"kcm core init: error: cannot make the data directory {directory}: Not a directory; "
        f"make it first, owned by this user, mode 0700 (install -d -o USER -m 0700 "
        f"{directory})\n")


@pytest.mark.parametrize(("mode", "level", "status"), [
    (0o644, "error", 1), (0o640, "warning", 0)])
def test_a_tls_key_file_others_or_its_group_may_read_is_found(
        core: Path, pki: PkiPaths, capsys, mode: int, level: str, status: int) -> None:
    os.chmod(pki.core.key, mode)
    got, lines = check(capsys, core)
    assert got == status
    found(lines, level, "core.tls.key:", f"has mode {mode:04o}")
    found(lines, "ok", "the key is the certificate's")  # the files were still checked


@pytest.mark.parametrize(("not_before", "not_after", "level", "says"), [
    (NOW - dt.timedelta(days=60), NOW - dt.timedelta(days=1), "error", "expired"),
    (NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=90), "error", "not valid before"),
    (NOW - dt.timedelta(days=60), NOW + dt.timedelta(days=10), "warning", "in 9 days"),
])
def test_a_certificate_out_of_its_dates_is_found(core: Path, pki: PkiPaths, capsys,
                                                 not_before: dt.datetime,
                                                 not_after: dt.datetime, level: str,
                                                 says: str) -> None:
    issued = issue_certificate(load_ca(pki.ca), "kcm-core", now=NOW, dns_names=["localhost"],
                               server=True, client=False, not_before=not_before,
                               not_after=not_after)
    write_certificate(pki.core, issued.cert, issued.key)
    status, lines = check(capsys, core)
    assert status == (1 if level == "error" else 0)
    found(lines, level, "core.tls.cert:", says)
    found(lines, "ok", "chains to core.tls.ca")  # its dates are said once, not twice


def test_a_certificate_of_another_ca_is_warned_about(core: Path, pki: PkiPaths,
                                                     capsys) -> None:
    other = init_pki(pki.directory.parent / "other-pki")
    write_certificate(pki.core, *_read(other.core))
    status, lines = check(capsys, core)
    assert status == 0
    found(lines, "warning", "core.tls.cert: not verified against core.tls.ca")


def test_a_core_certificate_with_a_uri_san_is_refused(core: Path, pki: PkiPaths,
                                                      capsys) -> None:
    issued = issue_certificate(load_ca(pki.ca), "kcm-core", now=NOW, dns_names=["localhost"],
                               uris=["spiffe://kcm.test/gateway/gw1"], server=True)
    write_certificate(pki.core, issued.cert, issued.key)
    status, lines = check(capsys, core)
    assert status == 1
    found(lines, "error", "core.tls.cert: gateways refuse it as a core's",
          "carries a URI SAN (spiffe://kcm.test/gateway/gw1)")


def test_a_key_of_another_certificate_is_found(core: Path, pki: PkiPaths, capsys) -> None:
    pki.core.key.write_bytes(pki.gateway.key.read_bytes())
    status, lines = check(capsys, core)
    assert status == 1
    found(lines, "error", f"core.tls.key: {pki.core.key} is not the key of the certificate")


def test_a_database_at_a_newer_revision_is_an_error(core: Path, capsys) -> None:
    set_revision(core, "9999")
    status, lines = check(capsys, core)
    assert status == 1
    found(lines, "error", "core.database: the database's schema revision 9999 is newer than "
                          f"this kcm's ({head_revision()})")


def test_a_database_behind_is_warned_about(core: Path, capsys) -> None:
    set_revision(core, "0003")
    status, lines = check(capsys, core)
    assert status == 0
    found(lines, "warning", "schema behind: kcm core init will upgrade it from 0003 to "
                            f"{head_revision()}")


def test_a_missing_database_file_is_an_error_and_is_not_created(core: Path, capsys) -> None:
    database = core.parent / "kcm.db"
    database.unlink()
    status, lines = check(capsys, core)
    assert status == 1
    found(lines, "error", f"core.database: no database at {database}",
          "kcm core init creates one")
    assert not database.exists()


@pytest.mark.parametrize(("content", "says"), [
    ("[core]\nlisten = 5696\n", "core.listen must be an endpoint string"),
    ("[core]\nlisten = \"tcp:5696\"\nbogus = 1\n", "unknown setting core.bogus"),
    ("[core\n", "core.toml: "),
    ("[core]\n[cor]\n", "unknown table 'cor'"),
    ("[client]\n", "core.toml: no client.cert"),
    ("[clinet]\n", "has no [core], [gateway] or [client] table"),
    ("[client]\nserver = \"h:1\"\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\npool_size = \"x\"\n",
     "core.toml: client.pool_size must be a whole number"),
    ("[client]\nserver = \"h:x\"\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n",
     "core.toml: client.server: 'h:x': the port is not a number"),
    ("[gateway]\ncore = \"ssl:127.0.0.1:5697\"\n", "KCM adds the TLS itself"),
])
def test_a_malformed_configuration_is_one_error_line(tmp_path: Path, capsys, content: str,
                                                     says: str) -> None:
    config = tmp_path / "core.toml"
    config.write_text(content)
    status, lines = check(capsys, config)
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines


def test_caps_above_the_open_file_limit_are_warned_about(core: Path, monkeypatch,
                                                         capsys) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (150, 4096))
    status, lines = check(capsys, core)
    assert status == 0
    found(lines, "warning", "core: limits.max_connections + limits.max_link_connections "
                            "(108) + 100 descriptors exceed ulimit -n 150")


def test_the_database_password_is_not_printed(tmp_path: Path, pki: PkiPaths,
                                              capsys) -> None:
    config = core_config(tmp_path, pki)
    config.write_text(config.read_text().replace(
        f'"sqlite:///{tmp_path / "kcm.db"}"',
        '"postgresql+psycopg://kcm:s3cret-pw@127.0.0.1:1/kcm?connect_timeout=2"'))
    status, lines = check(capsys, config)
    assert status == 1
    found(lines, "error", "core.database: postgresql+psycopg://kcm:***@127.0.0.1:1/kcm")
    assert "s3cret-pw" not in "\n".join(lines)


def test_l1_in_a_token_is_opened_read_only_when_asked(tmp_path: Path, pki: PkiPaths, softhsm,
                                                      capsys) -> None:
    uri = softhsm.uri()
    config = core_config(tmp_path, pki, extra=f"l1_pkcs11 = {json.dumps(uri)}\n")
    assert main(["core", "init", "-c", str(config)]) == 0
    capsys.readouterr()
    status, lines = check(capsys, config)
    assert status == 0 and all(line.startswith("ok: ") for line in lines), lines
    found(lines, "ok", "core.l1_pkcs11: names key 'kcm-l1'", "the token was not opened")
    assert main(["config", "check", "-c", str(config), "--open-token"]) == 0
    opened = capsys.readouterr().out.splitlines()
    found(opened, "ok", "core.l1_pkcs11: the L1 key 'kcm-l1' in PKCS#11 token", "opens")
    found(opened, "ok", "core.l1_pkcs11: its check value is the database's")
    assert softhsm.pin not in "\n".join(lines + opened)


def test_no_configuration_is_bad_usage(capsys) -> None:
    assert main(["config", "check"]) == 2
    assert "-c/--config" in capsys.readouterr().err


def _read(paths):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return (x509.load_pem_x509_certificate(paths.cert.read_bytes()),
            serialization.load_pem_private_key(paths.key.read_bytes(), password=None))


def _as_v1(config: Path) -> int:
    """Every blob's format byte made version 1's (a copy backed up before the thirty-ninth
    sitting, as the count sees it); how many."""
    store = Store(f"sqlite:///{config.parent / 'kcm.db'}", threads=1)
    try:
        return store.run_sync(lambda s: s.execute(text(
            "UPDATE managed_objects SET material = CAST(X'01' || substr(material, 2) AS BLOB) "
            "WHERE material IS NOT NULL")).rowcount)
    finally:
        store.stopService()


def test_v1_blobs_with_accept_v1_wrapping_false_are_warned_about_by_check_and_init(
        core: Path, capsys) -> None:
    assert main(["core", "tenant", "add", "demo", "-c", str(core)]) == 0
    capsys.readouterr()
    count = _as_v1(core)
    assert count >= 1
    status, lines = check(capsys, core)  # (true, the default: re-wrapped by the sweeper)
    assert status == 0 and not [line for line in lines if "core.accept_v1" in line], lines
    core.write_text(core.read_text().replace("[core]\n", "[core]\naccept_v1_wrapping = false\n"))
    status, lines = check(capsys, core)
    assert status == 0
    found(lines, "warning", f"core.accept_v1_wrapping: false, and the database holds {count} "
                            "objects wrapped in the version 1 format", "set it true until "
                            "kcm_core_v1_wrapped_objects reads 0")
    assert main(["core", "init", "--restored", "-c", str(core)]) == 0
    assert f"warning: accept_v1_wrapping is false, and the database holds {count} objects" \
        in capsys.readouterr().out


def test_a_ca_of_the_bundle_without_a_crl_is_warned_about(core: Path, pki: PkiPaths,
                                                          capsys) -> None:
    """A new CA added to tls.ca, its CRL not yet in tls.crl: kcm-core would start, and
    refuse every client certificate of it ("unable to get certificate CRL")."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from kcm.pki import certificate_pem, issue_crl, new_ca

    new = new_ca("KCM New CA", now=NOW)
    crl = core.parent / "crl.pem"
    crl.write_bytes(issue_crl(load_ca(pki.ca), []).public_bytes(Encoding.PEM))
    config = core.read_text().replace("[core.tls]\n", f'[core.tls]\ncrl = "{crl}"\n')
    core.write_text(config)
    status, lines = check(capsys, core)
    assert status == 0
    found(lines, "ok", "core.tls.crl: 1 CRL(s) of the CAs of")
    pki.ca.cert.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(new.cert))
    status, lines = check(capsys, core)
    assert status == 0
    found(lines, "warning", "core.tls.crl:", "holds no CRL of CN=KCM New CA",
          "every client certificate it issued is refused")
    crl.write_bytes(crl.read_bytes() + issue_crl(new, []).public_bytes(Encoding.PEM))
    status, lines = check(capsys, core)
    found(lines, "ok", "core.tls.crl: 2 CRL(s) of the CAs of")


def test_rows_without_a_mac_with_accept_rows_without_mac_false_are_warned_about(
        core: Path, capsys) -> None:
    assert main(["core", "tenant", "add", "demo", "-c", str(core)]) == 0
    capsys.readouterr()
    store = Store(f"sqlite:///{core.parent / 'kcm.db'}", threads=1)
    try:
        assert store.run_sync(lambda s: s.execute(text(
            "SELECT count(*) FROM managed_objects WHERE row_mac IS NULL")).scalar()) == 0
        count = store.run_sync(lambda s: s.execute(text(
            "UPDATE managed_objects SET row_mac = NULL")).rowcount)
    finally:
        store.stopService()
    assert count >= 1
    status, lines = check(capsys, core)  # (true, the default: MACed by the sweeper)
    assert status == 0 and not [line for line in lines if "without_mac" in line], lines
    core.write_text(core.read_text().replace("[core]\n",
                                             "[core]\naccept_rows_without_mac = false\n"))
    status, lines = check(capsys, core)
    assert status == 0
    found(lines, "warning", f"core.accept_rows_without_mac: false, and the database holds "
                            f"{count} objects without a row MAC", "set it true until "
                            "kcm_core_objects_without_row_mac reads 0")
    assert main(["core", "init", "--restored", "-c", str(core)]) == 0
    assert f"warning: accept_rows_without_mac is false, and the database holds {count} " \
        in capsys.readouterr().out


def test_a_tenant_cap_above_max_connections_is_warned_about(tmp_path: Path, pki: PkiPaths,
                                                            capsys) -> None:
    """max_connections_per_tenant unset follows max_connections (half of it); set above
    max_connections it bounds nothing, which config check says."""
    config = gateway_config(tmp_path, pki)
    status, lines = check(capsys, config)
    found(lines, "ok", "gateway.limits.max_connections_per_tenant: 50, half of "
                       "max_connections (100)")
    config.write_text(config.read_text() + "max_connections_per_tenant = 450\n")
    status, lines = check(capsys, config)
    assert status == 0
    found(lines, "warning", "gateway.limits.max_connections_per_tenant: 450 exceeds "
                            "max_connections (100) and bounds nothing")
    config.write_text(config.read_text().replace("= 450", "= 80"))
    status, lines = check(capsys, config)
    found(lines, "ok", "gateway.limits.max_connections_per_tenant: 80 of max_connections")
