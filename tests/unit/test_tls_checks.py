"""The checks a renewed certificate must pass (kcm.tls_checks): a chain through an
intermediate CA, and the time given, not the clock's; and how a file is seen to have
changed (kcm.file_stamp)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kcm.file_stamp import file_stamp
from kcm.tls_checks import chain_problem

NOW = dt.datetime.now(dt.UTC)


def _certificate(name: str, issuer: tuple[x509.Certificate, object] | None, *, ca: bool,
                 days: int = 30) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(hours=1))
               .not_valid_after(NOW + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    return builder.sign(issuer_key, hashes.SHA256()), key


def test_a_certificate_chains_through_the_intermediate_sent_after_it() -> None:
    root = _certificate("root", None, ca=True)
    intermediate = _certificate("intermediate", root, ca=True)
    leaf, _ = _certificate("kcm-core", intermediate, ca=False)
    assert chain_problem([leaf, intermediate[0]], [root[0]], NOW) is None
    assert "issuer" in chain_problem([leaf], [root[0]], NOW)  # (the intermediate missing)


def test_the_chain_is_checked_at_the_time_given() -> None:
    root = _certificate("root", None, ca=True, days=3650)
    leaf, _ = _certificate("kcm-core", root, ca=False, days=1)
    assert chain_problem([leaf], [root[0]], NOW) is None
    assert "expired" in chain_problem([leaf], [root[0]], NOW + dt.timedelta(days=2))
    assert chain_problem([leaf], [root[0]], None) is None  # (dates not checked)


def test_a_file_renamed_over_another_of_the_same_size_and_time_is_a_change(
        tmp_path: Path) -> None:
    """(As ``rsync -a`` or ``cp -p`` then ``mv`` may leave it: only the inode differs.)"""
    path, staged = tmp_path / "core.pem", tmp_path / "core.pem.new"
    path.write_bytes(b"a" * 100)
    staged.write_bytes(b"b" * 100)
    stat = os.stat(path)
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = file_stamp(path)
    staged.replace(path)
    assert file_stamp(path) != before
    assert file_stamp(tmp_path / "missing") is None
