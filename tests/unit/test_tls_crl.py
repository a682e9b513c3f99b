"""tls.crl (kcm.tls_crl): the CRL file is read and checked against the CA bundle (a CRL no
CA of it signed, or a file that holds none, is refused), handed to each TLS store with
OpenSSL's CRL check, and read again when it changes (a wrong new file keeps the CRLs in
force). The handshakes themselves are tested end to end
(tests/integration/test_tls_crl_process.py)."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto

from kcm.config_file import TlsFiles
from kcm.pki import PkiPaths, init_pki, issue_crl, load_ca, new_ca
from kcm.tls_crl import RevocationLists, load_crls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki"))


def _certificate(pair) -> object:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def test_a_crl_file_is_read_in_pem_or_der_and_checked_against_the_cas(pki, tmp_path) -> None:
    ca = load_ca(pki.ca)
    crl = issue_crl(ca, [_certificate(pki.app)])
    pem = tmp_path / "crl.pem"
    pem.write_bytes(crl.public_bytes(Encoding.PEM) * 2)  # two blocks (the same CRL twice)
    assert [len(list(c)) for c in load_crls(pem, pki.ca.cert)] == [1, 1]
    der = tmp_path / "crl.der"
    der.write_bytes(crl.public_bytes(Encoding.DER))
    assert len(load_crls(der, pki.ca.cert)) == 1
    stranger = issue_crl(new_ca("Another CA", now=dt.datetime.now(dt.UTC)), [])
    (tmp_path / "other.pem").write_bytes(stranger.public_bytes(Encoding.PEM))
    with pytest.raises(ValueError, match="which no CA of .* signed"):
        load_crls(tmp_path / "other.pem", pki.ca.cert)
    (tmp_path / "junk.pem").write_bytes(b"not a CRL")
    with pytest.raises(ValueError, match="holds no CRL KCM can read"):
        load_crls(tmp_path / "junk.pem", pki.ca.cert)
    with pytest.raises(ValueError, match="cannot read the CRL file"):
        load_crls(tmp_path / "missing.pem", pki.ca.cert)


def test_the_crls_go_to_every_store_and_again_when_the_file_changes(pki, tmp_path) -> None:
    ca = load_ca(pki.ca)
    path = tmp_path / "crl.pem"
    now = dt.datetime.now(dt.UTC)
    path.write_bytes(issue_crl(ca, [], now=now - dt.timedelta(hours=1))
                     .public_bytes(Encoding.PEM))
    lists = RevocationLists(path, pki.ca.cert)
    first, second = crypto.X509Store(), crypto.X509Store()
    lists.attach(first)
    lists.attach(second)
    assert lists.refresh() is False  # unchanged
    newer = issue_crl(ca, [_certificate(pki.app)], now=now)
    path.write_bytes(newer.public_bytes(Encoding.PEM))
    os.utime(path, ns=(1, 2))  # (a change the stamp sees, whatever the clock's resolution)
    assert lists.refresh() is True
    assert [len(list(c)) for c in lists.crls] == [0, 1]
    # A wrong file is logged and keeps what is in force.
    path.write_bytes(b"oops")
    os.utime(path, ns=(3, 4))
    assert lists.refresh() is False and len(lists.crls) == 2


def test_a_crl_setting_is_a_path_and_its_refresh_a_bounded_number() -> None:
    files = {"cert": "c", "key": "k", "ca": "a"}
    assert TlsFiles(**files, crl="crl.pem").crl_refresh == 30.0
    for wrong in (0, -1, 3601, True, "5"):
        with pytest.raises(ValueError, match="tls.crl_refresh"):
            TlsFiles(**files, crl_refresh=wrong)
