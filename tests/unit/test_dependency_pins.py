"""setup.cfg's floors, constraints.txt and requirements-deploy.txt agree, and each floor
raised for an API is at least the release that has it (each probed here, in the installed
release: in a virtualenv of the floors, a probe fails where its floor is too low)."""

from __future__ import annotations

import configparser
import inspect
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def declared() -> tuple[list[Requirement], list[Requirement]]:
    """setup.cfg's runtime requirements and its test extras."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")

    def parse(text: str) -> list[Requirement]:
        lines = (line.split("#")[0].strip() for line in text.splitlines())
        return [Requirement(line) for line in lines if line]

    return (parse(cfg["options"]["install_requires"]),
            parse(cfg["options.extras_require"]["test"]))


def pins(path: Path) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            name = canonicalize_name(m[1])
            assert name not in found, f"{path.name} pins {name} twice"
            found[name] = Version(m[2])
    return found


def floor(requirement: Requirement) -> Version:
    [spec] = [s for s in requirement.specifier if s.operator in (">=", "==")]
    return Version(spec.version)


def test_constraints_pin_every_declared_package_within_its_range() -> None:
    runtime, test = declared()
    pinned = pins(REPO / "constraints.txt")
    for requirement in runtime + test:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"constraints.txt does not pin {name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), requirement
    for build in ("pip", "setuptools", "wheel"):
        assert build in pinned, f"constraints.txt does not pin {build}"
    text = (REPO / "constraints.txt").read_text()
    assert "kcm==" not in text and "file:" not in text and " @ " not in text


def test_the_deploy_lock_is_the_runtime_part_of_the_constraints_with_hashes() -> None:
    runtime, _ = declared()
    pinned = pins(REPO / "constraints.txt")
    locked = pins(REPO / "requirements-deploy.txt")
    for requirement in runtime:
        assert canonicalize_name(requirement.name) in locked, requirement
    assert {"setuptools", "wheel"} <= locked.keys()  # to build kcm without build isolation
    assert "pytest" not in locked and "ruff" not in locked
    for name, version in locked.items():
        assert pinned.get(name) == version, f"{name}: {version} locked, {pinned.get(name)} pinned"
    entries = re.split(r"\n(?=[A-Za-z])", (REPO / "requirements-deploy.txt").read_text())
    for entry in entries:
        if "==" in entry.split("\n")[0]:
            assert "--hash=sha256:" in entry, entry.split("\n")[0]


#: The floors raised for an API (setup.cfg says why); each is probed below.
RAISED = {
    "twisted": Version("26.4"),
    "pyopenssl": Version("24.3"),
    "sqlalchemy": Version("2.0.11"),
    "psycopg": Version("3.2.1"),
    "ruff": Version("0.13"),
}


def test_the_floors_are_at_least_the_releases_with_the_apis_kcm_uses() -> None:
    runtime, test = declared()
    floors = {canonicalize_name(r.name): floor(r) for r in runtime + test}
    for name, needed in RAISED.items():
        assert floors[name] >= needed, f"setup.cfg's floor of {name} is below {needed}"


def test_twisteds_certificate_options_make_server_connections() -> None:
    # kcm.tls.RenewableServerTLS delegates to it: without it no listener's handshake ran.
    from twisted.internet.ssl import CertificateOptions

    assert callable(getattr(CertificateOptions, "serverConnectionForTLS", None))


def test_pyopenssl_takes_cryptographys_certificate_and_key() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pins")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate(cert)
    context.use_privatekey(key)
    context.check_privatekey()


def test_sqlalchemy_reads_a_text_value_of_a_binary_column_without_a_type_error(
        tmp_path: Path) -> None:
    # `kcm audit verify` names such a record as altered; it stopped with a TypeError.
    import sqlalchemy as sa

    path = tmp_path / "t.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (v BLOB)")
        db.execute("INSERT INTO t VALUES ('text')")
    table = sa.Table("t", sa.MetaData(), sa.Column("v", sa.LargeBinary))
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.select(table.c.v)).scalar_one() == "text"
    finally:
        engine.dispose()


def test_psycopgs_notifies_takes_a_timeout() -> None:
    # kcm.core.outbox_listener waits at most stop_check seconds for a NOTIFY.
    psycopg = pytest.importorskip("psycopg")
    assert "timeout" in inspect.signature(psycopg.Connection.notifies).parameters
