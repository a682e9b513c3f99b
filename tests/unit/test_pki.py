"""The development PKI: files, modes, names, key usages and chains."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from kcm.cli import main
from kcm.identity import Role, core_certificate_refusal, principal_from_certificate
from kcm.pki import (
    CertKeyPaths,
    PkiPaths,
    init_pki,
    issue_certificate,
    issue_identity,
    load_ca,
    new_ca,
)

TD = "kcm.test"
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki") / "dev")


def _load(pair: CertKeyPaths) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _store(pki: PkiPaths) -> Store:
    return Store([_load(pki.ca)])


def test_files_and_modes(pki: PkiPaths) -> None:
    names = sorted(p.name for p in pki.directory.iterdir())
    expected = sorted(
        f"{n}.{ext}" for n in ("ca", "core", "gateway", "operator", "admin", "app",
                               "other-app", "legacy") for ext in ("pem", "key")
    )
    assert names == expected
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    for pair in pki.all():
        assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600, pair.key
        assert stat.S_IMODE(pair.cert.stat().st_mode) == 0o644, pair.cert
        assert pair.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert PkiPaths.for_directory(pki.directory) == pki


def test_ca(pki: PkiPaths) -> None:
    ca = load_ca(pki.ca)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_core_is_a_server_with_host_names(pki: PkiPaths) -> None:
    cert = _load(pki.core)
    assert _ekus(cert) == {SERVER}
    assert _uris(cert) == []
    verifier = PolicyBuilder().store(_store(pki)).build_server_verifier(x509.DNSName("localhost"))
    verifier.verify(cert, [])
    for address in ("127.0.0.1", "::1"):  # (a client may connect to either loopback)
        verifier = PolicyBuilder().store(_store(pki)).build_server_verifier(
            x509.IPAddress(ipaddress.ip_address(address)))
        verifier.verify(cert, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(_store(pki)).build_client_verifier().verify(cert, [])


def test_gateway_is_server_and_client(pki: PkiPaths) -> None:
    cert = _load(pki.gateway)
    assert _ekus(cert) == {SERVER, CLIENT}
    assert _uris(cert) == ["spiffe://kcm.test/gateway/gw1"]
    PolicyBuilder().store(_store(pki)).build_server_verifier(x509.DNSName("localhost")).verify(
        cert, [])
    PolicyBuilder().store(_store(pki)).build_server_verifier(
        x509.IPAddress(ipaddress.ip_address("::1"))).verify(cert, [])
    PolicyBuilder().store(_store(pki)).build_client_verifier().verify(cert, [])


def test_only_the_cores_certificate_passes_for_a_cores(pki: PkiPaths) -> None:
    """The gateway's certificate names the same hosts, with serverAuth: what tells the core's
    from it, and from every other identity, is that it carries no URI SAN."""
    assert core_certificate_refusal(_load(pki.core)) is None
    for other in (pki.gateway, pki.operator, pki.admin, pki.app, pki.other_app, pki.ca):
        assert core_certificate_refusal(_load(other)) is not None


@pytest.mark.parametrize(
    ("which", "uri", "role"),
    [
        ("operator", "spiffe://kcm.test/operator/ops", Role.OPERATOR),
        ("admin", "spiffe://kcm.test/tenant/demo/admin/alice", Role.ADMIN),
        ("app", "spiffe://kcm.test/tenant/demo/service/app", Role.SERVICE),
        ("other_app", "spiffe://kcm.test/tenant/other/service/app", Role.SERVICE),
    ],
)
def test_client_identities(pki: PkiPaths, which: str, uri: str, role: Role) -> None:
    cert = _load(getattr(pki, which))
    assert _ekus(cert) == {CLIENT}
    assert _uris(cert) == [uri]
    verified = PolicyBuilder().store(_store(pki)).build_client_verifier().verify(cert, [])
    assert verified.chain[-1] == _load(pki.ca)
    principal = principal_from_certificate(cert, trust_domain=TD)
    assert principal is not None and principal.role is role and principal.id == uri


def test_legacy_has_only_a_subject(pki: PkiPaths) -> None:
    cert = _load(pki.legacy)
    assert _ekus(cert) == {CLIENT}
    assert _uris(cert) == []
    assert cert.subject.rfc4514_string() == "CN=legacy-client,O=KCM Dev"
    assert principal_from_certificate(cert, trust_domain=TD) is None


def test_refuses_to_overwrite(pki: PkiPaths) -> None:
    before = pki.ca.cert.read_bytes()
    with pytest.raises(FileExistsError):
        init_pki(pki.directory)
    assert pki.ca.cert.read_bytes() == before


def test_force_replaces_and_keeps_modes(tmp_path: Path) -> None:
    first = init_pki(tmp_path / "p")
    before = first.ca.cert.read_bytes()
    first.app.key.chmod(0o644)
    second = init_pki(tmp_path / "p", force=True)
    assert second.ca.cert.read_bytes() != before
    assert stat.S_IMODE(second.app.key.stat().st_mode) == 0o600
    # The new leaves chain to the new CA, not the old one.
    PolicyBuilder().store(Store([_load(second.ca)])).build_client_verifier().verify(
        _load(second.app), [])


def test_options(tmp_path: Path) -> None:
    paths = init_pki(tmp_path, trust_domain="example.org", tenant="acme", service="db",
                     hosts=("kcm.example.org", "10.0.0.1"), days=30)
    assert _uris(_load(paths.app)) == ["spiffe://example.org/tenant/acme/service/db"]
    assert _uris(_load(paths.admin)) == ["spiffe://example.org/tenant/acme/admin/alice"]
    core = _load(paths.core)
    san = core.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kcm.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    lifetime = core.not_valid_after_utc - core.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=5)


@pytest.mark.parametrize(
    "kwargs",
    [{"trust_domain": "Bad"}, {"tenant": "a/b"}, {"service": ""}, {"tenant": "a b"}],
)
def test_bad_options(tmp_path: Path, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        init_pki(tmp_path / "p", **kwargs)
    assert not (tmp_path / "p").exists()


def test_issue_arbitrary_certificates() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ca = new_ca(now=now)
    expired = issue_certificate(
        ca, "old", now=now, uris=["spiffe://kcm.test/tenant/demo/service/app"],
        not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1),
    )
    assert expired.cert.not_valid_after_utc < now
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([ca.cert])).time(now).build_client_verifier().verify(
            expired.cert, [])
    rsa_cert = issue_certificate(ca, "rsa", now=now, key_algorithm="rsa-2048")
    assert isinstance(rsa_cert.key, rsa.RSAPrivateKey) and rsa_cert.key.key_size == 2048
    assert rsa_cert.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    other_ca = new_ca("Other CA", now=now)
    stranger = issue_certificate(other_ca, "s", now=now)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([ca.cert])).time(now).build_client_verifier().verify(
            stranger.cert, [])
    with pytest.raises(ValueError):
        issue_certificate(ca, "nothing", now=now, server=False, client=False)


def test_cli_pki_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import kcm.cli

    modules = kcm.cli.SUBCOMMAND_MODULES
    if "kcm.cli.pki_cmd" not in modules:  # until the lead registers it
        kcm.cli.SUBCOMMAND_MODULES = (*modules, "kcm.cli.pki_cmd")
    try:
        assert main(["pki", "init", str(tmp_path / "p"), "--tenant", "acme"]) == 0
        assert _uris(_load(PkiPaths.for_directory(tmp_path / "p").app)) == [
            "spiffe://kcm.test/tenant/acme/service/app"]
        assert main(["pki", "init", str(tmp_path / "p")]) == 2
        assert "--force" in capsys.readouterr().err
        assert main(["pki", "init", str(tmp_path / "p"), "--force"]) == 0
        assert main(["pki", "init", str(tmp_path / "q"), "--trust-domain", "Bad"]) == 2
    finally:
        kcm.cli.SUBCOMMAND_MODULES = modules


def test_issue_identity_from_the_directorys_ca(tmp_path: Path) -> None:
    paths = init_pki(tmp_path / "p")
    pair = issue_identity(tmp_path / "p", "billing", "tenant/acme/service/billing", days=30)
    assert (pair.cert.name, pair.key.name) == ("billing.pem", "billing.key")
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    cert = _load(pair)
    assert _ekus(cert) == {CLIENT}
    assert _uris(cert) == ["spiffe://kcm.test/tenant/acme/service/billing"]
    PolicyBuilder().store(_store(paths)).build_client_verifier().verify(cert, [])
    principal = principal_from_certificate(cert, trust_domain=TD)
    assert principal is not None and principal.role is Role.SERVICE
    assert principal.tenant == "acme"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=5)
    admin = issue_identity(tmp_path / "p", "bob", "tenant/acme/admin/bob",
                           trust_domain="kcm.test")
    assert _uris(_load(admin)) == ["spiffe://kcm.test/tenant/acme/admin/bob"]


def test_issue_identity_refusals(tmp_path: Path) -> None:
    init_pki(tmp_path / "p")
    ca_before = (tmp_path / "p" / "ca.pem").read_bytes()
    for name, identity in [("ca", "operator/x"), ("a/b", "operator/x"), ("", "operator/x"),
                           ("x", "gateway/a/b"), ("x", "tenant/acme"), ("x", "nobody/x")]:
        with pytest.raises(ValueError):
            issue_identity(tmp_path / "p", name, identity)
    assert (tmp_path / "p" / "ca.pem").read_bytes() == ca_before
    with pytest.raises(FileNotFoundError):
        issue_identity(tmp_path / "none", "x", "operator/x")
    issue_identity(tmp_path / "p", "x", "operator/x")
    with pytest.raises(FileExistsError):
        issue_identity(tmp_path / "p", "x", "operator/y")
    assert _uris(_load(issue_identity(tmp_path / "p", "x", "operator/y", force=True))) == [
        "spiffe://kcm.test/operator/y"]


def test_issue_identity_takes_the_pkis_trust_domain(tmp_path: Path) -> None:
    init_pki(tmp_path / "p", trust_domain="corp.example")
    pair = issue_identity(tmp_path / "p", "billing", "tenant/acme/service/billing")
    assert _uris(_load(pair)) == ["spiffe://corp.example/tenant/acme/service/billing"]
    other = issue_identity(tmp_path / "p", "ops2", "operator/ops2", trust_domain="kcm.test")
    assert _uris(_load(other)) == ["spiffe://kcm.test/operator/ops2"]


def test_cli_pki_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_pki(tmp_path / "p")
    assert main(["pki", "issue", str(tmp_path / "p"), "billing",
                 "tenant/acme/service/billing"]) == 0
    assert "spiffe://kcm.test/tenant/acme/service/billing" in capsys.readouterr().out
    assert main(["pki", "issue", str(tmp_path / "p"), "billing",
                 "tenant/acme/service/billing"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["pki", "issue", str(tmp_path / "q"), "x", "operator/x"]) == 2
    assert "kcm pki init" in capsys.readouterr().err
    assert main(["pki", "issue", str(tmp_path / "p"), "x", "operator/x", "--host", "h"]) == 2
    assert "gateway/NAME" in capsys.readouterr().err
    assert main(["pki", "issue", str(tmp_path / "p"), "g", "gateway/g", "--host", "a b"]) == 2
    assert main(["pki", "issue", str(tmp_path / "p"), "g", "gateway/g",
                 "--host", "gw2.example", "--host", "10.0.0.2"]) == 0
    assert _dns_and_ips(_load(CertKeyPaths(tmp_path / "p" / "g.pem",
                                           tmp_path / "p" / "g.key"))) == [
        "gw2.example", "10.0.0.2"]
    assert main(["pki", "issue", str(tmp_path / "p"), "x", "operator/x", "--days", "0"]) == 2


def test_issue_identity_names_and_files_it_will_not_touch(tmp_path: Path) -> None:
    """Mutation round (review40): the name's characters; a lone NAME.key (an unrelated key)
    is not replaced without --force; a CA without its key is no CA."""
    init_pki(tmp_path / "p")
    for name in ("a.b", "-rf", "_x", ".x", "x" * 65, "a b"):
        with pytest.raises(ValueError):
            issue_identity(tmp_path / "p", name, "operator/x")
    assert issue_identity(tmp_path / "p", "x" * 64, "operator/x").cert.exists()
    (tmp_path / "p" / "lone.key").write_bytes(b"someone's key")
    with pytest.raises(FileExistsError):
        issue_identity(tmp_path / "p", "lone", "operator/x")
    assert (tmp_path / "p" / "lone.key").read_bytes() == b"someone's key"
    assert not (tmp_path / "p" / "lone.pem").exists()
    (tmp_path / "p" / "ca.key").unlink()
    with pytest.raises(FileNotFoundError, match="has no CA"):
        issue_identity(tmp_path / "p", "y", "operator/y")


def test_the_pki_s_trust_domain_is_its_gateway_s_spiffe_id_s(tmp_path: Path) -> None:
    from kcm.pki import pki_trust_domain, write_certificate

    paths = init_pki(tmp_path / "p", trust_domain="corp.example")
    ca = load_ca(paths.ca)
    now = dt.datetime.now(dt.UTC)

    def gateway(*uris: str) -> str | None:
        issued = issue_certificate(ca, "gw", now=now, uris=uris)
        write_certificate(paths.gateway, issued.cert, issued.key)
        return pki_trust_domain(tmp_path / "p")

    assert gateway("https://example.com/x", "spiffe://other.example/gateway/gw1") == \
        "other.example"
    assert gateway("https://example.com/x") is None
    assert gateway("spiffe:///gateway/gw1") is None
    assert pki_trust_domain(tmp_path / "none") is None


def _dns_and_ips(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ([str(n) for n in names.get_values_for_type(x509.DNSName)]
            + [str(n) for n in names.get_values_for_type(x509.IPAddress)])


def test_issue_a_second_gateways_certificate(tmp_path: Path) -> None:
    """docs/operations.md: give each gateway a certificate and a name of its own. ``kcm pki
    issue`` refused ``gateway/NAME``, so a second gateway of the development PKI took
    openssl and a guess at what a gateway's certificate needs: like gw1's, server and
    client, naming the hosts, passing the gateway's identity and the core's link."""
    paths = init_pki(tmp_path / "p")
    pair = issue_identity(tmp_path / "p", "gw2", "gateway/gw2")
    cert = _load(pair)
    assert _ekus(cert) == {SERVER, CLIENT}
    assert _uris(cert) == ["spiffe://kcm.test/gateway/gw2"]
    assert _dns_and_ips(cert) == ["localhost", "127.0.0.1", "::1"]
    PolicyBuilder().store(_store(paths)).build_server_verifier(x509.DNSName("localhost")).verify(
        cert, [])
    PolicyBuilder().store(_store(paths)).build_client_verifier().verify(cert, [])
    principal = principal_from_certificate(cert, trust_domain=TD)
    assert principal is not None and principal.role is Role.GATEWAY
    assert core_certificate_refusal(cert) is not None
    from kcm.gateway.service import gateway_name_of
    assert gateway_name_of(str(pair.cert), TD) == "gw2"
    hosted = issue_identity(tmp_path / "p", "gw3", "gateway/gw3", hosts=("gw3.example",))
    assert _dns_and_ips(_load(hosted)) == ["gw3.example"]
    client = _load(issue_identity(tmp_path / "p", "o", "operator/o"))
    assert _ekus(client) == {CLIENT} and _dns_and_ips(client) == []
