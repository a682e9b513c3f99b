"""Principals from SPIFFE IDs, certificates and the policy file's subject map."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from kcm.identity import (
    Principal,
    Role,
    SubjectMap,
    parse_spiffe_id,
    principal_from_certificate,
    validate_trust_domain,
)
from kcm.pki import CertificateAuthority, issue_certificate, new_ca

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
