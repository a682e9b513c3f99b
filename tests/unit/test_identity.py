"""Principals from SPIFFE IDs, certificates and the policy file's subject map."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from kcm.identity import (
    Principal,
    Role,
    SubjectMap,
    core_certificate_refusal,
    parse_spiffe_id,
    principal_from_certificate,
    validate_trust_domain,
)
from kcm.pki import CertificateAuthority, generate_key, issue_certificate, new_ca

TD = "kcm.test"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return new_ca(now=NOW)


def _cert(ca: CertificateAuthority, *uris: str, cn: str = "x", org: str | None = "KCM Dev"
          ) -> x509.Certificate:
    return issue_certificate(ca, cn, organization=org, uris=uris, now=NOW).cert


# --- SPIFFE IDs -------------------------------------------------------------------------------


def test_service_uri() -> None:
    uri = "spiffe://kcm.test/tenant/acme/service/db"
    p = parse_spiffe_id(uri, trust_domain=TD)
    assert p == Principal(Role.SERVICE, TD, tenant="acme", service="db", uri=uri)
    assert p.id == uri
    assert p.path == "tenant/acme/service/db"
    assert p.spiffe_id == uri


def test_admin_uri() -> None:
    uri = "spiffe://kcm.test/tenant/acme/admin/alice"
    p = parse_spiffe_id(uri, trust_domain=TD)
    assert p == Principal(Role.ADMIN, TD, tenant="acme", name="alice", uri=uri)
    assert p.service is None


def test_gateway_uri() -> None:
    uri = "spiffe://kcm.test/gateway/gw-1.eu"
    p = parse_spiffe_id(uri, trust_domain=TD)
    assert p == Principal(Role.GATEWAY, TD, name="gw-1.eu", uri=uri)
    assert p.tenant is None


def test_operator_uri() -> None:
    uri = "spiffe://kcm.test/operator/ops_team"
    p = parse_spiffe_id(uri, trust_domain=TD)
    assert p == Principal(Role.OPERATOR, TD, name="ops_team", uri=uri)
    assert p.tenant is None


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://other.test/tenant/acme/service/db",  # another trust domain
        "spiffe://KCM.test/tenant/acme/service/db",  # trust domains are lowercase
        "spiffe://kcm.test:443/tenant/acme/service/db",  # port
        "spiffe://user@kcm.test/tenant/acme/service/db",  # user info
        "SPIFFE://kcm.test/tenant/acme/service/db",  # scheme must be lowercase
        "https://kcm.test/tenant/acme/service/db",
        "spiffe://kcm.test",
        "spiffe://kcm.test/",
        "spiffe:///tenant/acme/service/db",
        "spiffe://kcm.test/tenant/acme/service/db/",  # trailing slash
        "spiffe://kcm.test//tenant/acme/service/db",
        "spiffe://kcm.test/tenant//service/db",  # empty segment
        "spiffe://kcm.test/tenant/acme/service/d%62",  # percent-encoding
        "spiffe://kcm.test/tenant/acme/service/db?x=1",
        "spiffe://kcm.test/tenant/acme/service/db#frag",
        "spiffe://kcm.test/tenant/ac me/service/db",
        "spiffe://kcm.test/tenant/ácme/service/db",
        "spiffe://kcm.test/tenant/../service/db",
        "spiffe://kcm.test/tenant/./service/db",
        "spiffe://kcm.test/tenant/acme/service",  # too short
        "spiffe://kcm.test/tenant/acme/service/db/extra",  # too long
        "spiffe://kcm.test/tenant/acme/operator/bob",  # operators belong to no tenant
        "spiffe://kcm.test/tenant/acme",
        "spiffe://kcm.test/gateway",
        "spiffe://kcm.test/gateway/gw1/extra",
        "spiffe://kcm.test/operator/",
        "spiffe://kcm.test/core/core1",  # not a client role
        "spiffe://kcm.test/Tenant/acme/service/db",  # role words are exact
    ],
)
def test_not_a_principal(uri: str) -> None:
    assert parse_spiffe_id(uri, trust_domain=TD) is None


@pytest.mark.parametrize("td", ["", "Kcm.test", "kcm test", ".kcm", "kcm.", "kcm/test"])
def test_configured_trust_domain_must_be_valid(td: str) -> None:
    with pytest.raises(ValueError):
        validate_trust_domain(td)
    with pytest.raises(ValueError):
        parse_spiffe_id("spiffe://x/gateway/g", trust_domain=td)


def test_principal_invariants() -> None:
    with pytest.raises(ValueError):
        Principal(Role.SERVICE, TD, tenant="t", uri="u")  # no service
    with pytest.raises(ValueError):
        Principal(Role.GATEWAY, TD, tenant="t", name="g", uri="u")  # gateways have no tenant
    with pytest.raises(ValueError):
        Principal(Role.ADMIN, TD, tenant="t", uri="u")  # no name
    with pytest.raises(ValueError):
        Principal(Role.OPERATOR, TD, name="o")  # from nowhere


def test_principal_is_frozen_and_hashable() -> None:
    p = Principal(Role.OPERATOR, TD, name="o", uri="spiffe://kcm.test/operator/o")
    with pytest.raises(AttributeError):
        p.name = "x"  # type: ignore[misc]
    assert {p: 1}[Principal(Role.OPERATOR, TD, name="o", uri="spiffe://kcm.test/operator/o")]


# --- certificates -----------------------------------------------------------------------------


def test_certificate_with_one_spiffe_id(ca: CertificateAuthority) -> None:
    cert = _cert(ca, "spiffe://kcm.test/tenant/demo/service/app")
    p = principal_from_certificate(cert, trust_domain=TD, subject_map=None)
    assert p is not None
    assert (p.role, p.tenant, p.service) == (Role.SERVICE, "demo", "app")
    assert p.subject is None


def test_other_uri_schemes_are_ignored(ca: CertificateAuthority) -> None:
    cert = _cert(ca, "https://example.com/x", "spiffe://kcm.test/gateway/gw1")
    p = principal_from_certificate(cert, trust_domain=TD)
    assert p is not None and p.role is Role.GATEWAY


def test_two_spiffe_ids_name_nobody(ca: CertificateAuthority) -> None:
    cert = _cert(ca, "spiffe://kcm.test/tenant/demo/service/app",
                 "spiffe://kcm.test/tenant/demo/service/app2")
    assert principal_from_certificate(cert, trust_domain=TD) is None
    # Even the same ID twice is not "exactly one".
    cert = _cert(ca, "spiffe://kcm.test/gateway/gw1", "spiffe://kcm.test/gateway/gw1")
    assert principal_from_certificate(cert, trust_domain=TD) is None


def test_wrong_trust_domain(ca: CertificateAuthority) -> None:
    cert = _cert(ca, "spiffe://evil.test/tenant/demo/service/app")
    assert principal_from_certificate(cert, trust_domain=TD) is None


def test_bad_spiffe_id_is_not_rescued_by_subject(ca: CertificateAuthority) -> None:
    subjects = SubjectMap.from_mapping({"CN=db1,O=Acme": "tenant/acme/service/db"})
    cert = _cert(ca, "spiffe://evil.test/operator/root", cn="db1", org="Acme")
    assert principal_from_certificate(cert, trust_domain=TD, subject_map=subjects) is None
    cert = _cert(ca, "SPIFFE://kcm.test/operator/root", cn="db1", org="Acme")
    assert principal_from_certificate(cert, trust_domain=TD, subject_map=subjects) is None


def test_no_san_and_no_map(ca: CertificateAuthority) -> None:
    assert principal_from_certificate(_cert(ca), trust_domain=TD) is None


def _leaf_with(ca: CertificateAuthority, *extensions: x509.ExtensionType, cn: str = "x",
               uris: tuple[str, ...] = ("spiffe://kcm.test/tenant/demo/service/app",)
               ) -> x509.Certificate:
    """A certificate issued by ``ca`` with a SAN of ``uris`` and ``extensions`` (critical)."""
    own = generate_key()
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca.cert.subject).public_key(own.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(minutes=5))
               .not_valid_after(NOW + dt.timedelta(days=5)))
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=True)
    return builder.sign(ca.key, hashes.SHA256())


_KEY_CERT_SIGN = x509.KeyUsage(digital_signature=True, content_commitment=False,
                               key_encipherment=False, data_encipherment=False,
                               key_agreement=False, key_cert_sign=True, crl_sign=False,
                               encipher_only=False, decipher_only=False)


def test_a_ca_certificate_names_nobody(ca: CertificateAuthority) -> None:
    """An X509-SVID leaf has cA=false: a CA's certificate (cA=TRUE, or keyCertSign) with a
    valid SPIFFE ID, or a subject the map names, is no client identity."""
    subjects = SubjectMap.from_mapping({"CN=db1": "tenant/acme/service/db"})
    for extension in (x509.BasicConstraints(ca=True, path_length=None), _KEY_CERT_SIGN):
        cert = _leaf_with(ca, extension)
        assert principal_from_certificate(cert, trust_domain=TD) is None
        cert = _leaf_with(ca, extension, cn="db1", uris=())
        assert principal_from_certificate(cert, trust_domain=TD, subject_map=subjects) is None
    assert principal_from_certificate(ca.cert, trust_domain=TD) is None
    # The same certificate without them names its principal.
    cert = _leaf_with(ca, x509.BasicConstraints(ca=False, path_length=None))
    assert principal_from_certificate(cert, trust_domain=TD) is not None


def test_only_a_certificate_without_uri_sans_or_ca_flag_may_be_the_cores(
        ca: CertificateAuthority) -> None:
    core = issue_certificate(ca, "kcm-core", dns_names=["localhost"],
                             ip_addresses=["127.0.0.1"], server=True, client=False, now=NOW)
    assert core_certificate_refusal(core.cert) is None
    gateway = issue_certificate(ca, "gw1", uris=["spiffe://kcm.test/gateway/gw1"],
                                dns_names=["localhost"], ip_addresses=["127.0.0.1"],
                                server=True, client=True, now=NOW)
    why = core_certificate_refusal(gateway.cert)
    assert why is not None and "spiffe://kcm.test/gateway/gw1" in why
    assert "URI SAN" in (core_certificate_refusal(_cert(ca, "https://example.com/x")) or "")
    assert core_certificate_refusal(ca.cert) == "its certificate is a CA's"
    ca_flagged = _leaf_with(ca, x509.BasicConstraints(ca=True, path_length=None), uris=())
    assert core_certificate_refusal(ca_flagged) == "its certificate is a CA's"


def test_spiffe_id_wins_over_subject(ca: CertificateAuthority) -> None:
    subjects = SubjectMap.from_mapping({"CN=db1,O=Acme": "tenant/acme/service/db"})
    cert = _cert(ca, "spiffe://kcm.test/tenant/demo/service/app", cn="db1", org="Acme")
    p = principal_from_certificate(cert, trust_domain=TD, subject_map=subjects)
    assert p is not None and p.tenant == "demo"


# --- subject map ------------------------------------------------------------------------------


def test_subject_map_lookup(ca: CertificateAuthority) -> None:
    subjects = SubjectMap.from_mapping({
        "CN=db1,O=Acme": "tenant/acme/service/db",
        "CN=hsm-admin,O=Acme": "tenant/acme/admin/hsm-admin",
        "CN=ops,O=Example Corp": "operator/ops",
    })
    assert len(subjects) == 3
    p = principal_from_certificate(_cert(ca, cn="db1", org="Acme"), trust_domain=TD,
                                   subject_map=subjects)
    assert p == Principal(Role.SERVICE, TD, tenant="acme", service="db",
                          subject="CN=db1,O=Acme")
    assert p.id == "subject:CN=db1,O=Acme"
    assert p.spiffe_id == "spiffe://kcm.test/tenant/acme/service/db"
    p = principal_from_certificate(_cert(ca, cn="hsm-admin", org="Acme"), trust_domain=TD,
                                   subject_map=subjects)
    assert p is not None and (p.role, p.name) == (Role.ADMIN, "hsm-admin")
    p = principal_from_certificate(_cert(ca, cn="ops", org="Example Corp"), trust_domain=TD,
                                   subject_map=subjects)
    assert p is not None and p.role is Role.OPERATOR


def test_subject_map_matches_whole_subject_case_sensitively(ca: CertificateAuthority) -> None:
    subjects = SubjectMap.from_mapping({"CN=db1,O=Acme": "tenant/acme/service/db"})
    for cn, org in (("db1", None), ("db1", "acme"), ("DB1", "Acme"), ("db1", "Acme Corp")):
        cert = _cert(ca, cn=cn, org=org)
        assert principal_from_certificate(cert, trust_domain=TD, subject_map=subjects) is None


@pytest.mark.parametrize(
    ("subject", "path"),
    [
        ("CN=db1,O=Acme", "tenant/acme/service"),
        ("CN=db1,O=Acme", "/tenant/acme/service/db"),
        ("CN=db1,O=Acme", "tenant/acme/service/d b"),
        ("CN=gw,O=Acme", "gateway/gw1"),  # gateways need a SPIFFE ID
        ("not a dn", "tenant/acme/service/db"),
        ("CN=db1, O=Acme", "tenant/acme/service/db"),  # RFC 4514 has no spaces after commas
        ("", "operator/ops"),
    ],
)
def test_subject_map_rejects_bad_entries(subject: str, path: str) -> None:
    with pytest.raises(ValueError):
        SubjectMap.from_mapping({subject: path})


def test_subject_map_rejects_duplicates() -> None:
    # Two spellings of one subject: escaped and hex-encoded values parse to the same name.
    with pytest.raises(ValueError, match="twice"):
        SubjectMap.from_mapping({
            "CN=a\\,b,O=Acme": "tenant/acme/service/one",
            "CN=a\\2cb,O=Acme": "tenant/acme/service/two",
        })


def test_subject_map_from_toml(tmp_path, ca: CertificateAuthority) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[subjects]\n"CN=legacy-client,O=KCM Dev" = "tenant/demo/service/legacy"\n'
        "\n[other]\nignored = true\n"
    )
    subjects = SubjectMap.from_toml(policy)
    p = principal_from_certificate(_cert(ca, cn="legacy-client"), trust_domain=TD,
                                   subject_map=subjects)
    assert p is not None and (p.tenant, p.service) == ("demo", "legacy")


def test_subject_map_from_toml_without_table(tmp_path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[other]\nx = 1\n")
    assert len(SubjectMap.from_toml(policy)) == 0
    policy.write_text('subjects = "nope"\n')
    with pytest.raises(ValueError):
        SubjectMap.from_toml(policy)


def test_subject_map_document_is_canonical_and_round_trips() -> None:
    entries = {"CN=ops,O=Example Corp": "operator/ops", "CN=db1,O=Acme": "tenant/acme/service/db"}
    first = SubjectMap.from_mapping(entries)
    reordered = SubjectMap.from_mapping(dict(reversed(list(entries.items()))))
    assert first.document() == reordered.document()
    assert first.document() == ('{"CN=db1,O=Acme":"tenant/acme/service/db",'
                                '"CN=ops,O=Example Corp":"operator/ops"}')
    again = SubjectMap.from_document(first.document())
    assert again.document() == first.document()
    name = x509.Name.from_rfc4514_string("CN=db1,O=Acme")
    assert again.lookup(name, trust_domain="kcm.test") == first.lookup(name,
                                                                      trust_domain="kcm.test")
    assert SubjectMap({}).document() == "{}"
    for bad in ("nope", "[]", '{"CN=x": "gateway/g"}', '{"CN=x": 1}'):
        with pytest.raises(ValueError):
            SubjectMap.from_document(bad)


def test_a_subject_cryptography_cannot_read_names_nobody(ca: CertificateAuthority) -> None:
    """A subject OpenSSL verifies and cryptography will not read (here a TeletexString whose
    bytes are not what cryptography decodes, as old appliances write Latin-1): the lookup
    raised ValueError out of the handshake, a traceback for every connection and no answer
    for the client. It names nobody, as an unreadable SAN does."""
    from cryptography.hazmat.primitives.serialization import Encoding

    der = _cert(ca, cn="QQQQ").public_bytes(Encoding.DER)
    assert der.count(b"\x0c\x04QQQQ") == 1
    unreadable = x509.load_der_x509_certificate(
        der.replace(b"\x0c\x04QQQQ", b"\x14\x04\xff\xfe\xff\xfe"))
    with pytest.raises(ValueError):
        unreadable.subject  # noqa: B018 - what the lookup reads
    subjects = SubjectMap.from_mapping({"CN=QQQQ,O=KCM Dev": "tenant/acme/service/db"})
    assert principal_from_certificate(unreadable, trust_domain=TD, subject_map=subjects) is None
