"""Checks of a TLS certificate file, its key and a CA bundle, the one place each is decided:
``kcm config check`` reports with them (:mod:`kcm.cli.config_cmd`, :mod:`kcm.config_file`)
and a running process takes renewed files only if they pass (:mod:`kcm.tls_renewal`).

* :func:`key_matches`: the private key is the certificate's (their public keys are equal);
* :func:`validity_problem`: the certificate is within its dates at a given time;
* :func:`chain_problem`: OpenSSL (what every peer's TLS runs) verifies the certificate,
  with the intermediates sent after it, up to a CA of the bundle, at a given time.

Pure: the certificates and keys are given, read already; time is given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

__all__ = ["NO_CHECK_TIME", "chain_problem", "key_matches", "validity_problem"]

#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which pyOpenSSL's X509StoreFlags does not name.
NO_CHECK_TIME = 0x200000

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(certificate: x509.Certificate, key: Any) -> bool:
    """Whether ``key`` (a private key) is the key of ``certificate``."""
    return bool(key.public_key().public_bytes(*_SPKI)
                == certificate.public_key().public_bytes(*_SPKI))


def validity_problem(certificate: x509.Certificate, now: dt.datetime) -> str | None:
    """Why ``certificate`` is not valid at ``now`` (not yet, or expired), or None."""
    before, after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < before:
        return f"not valid before {before:%Y-%m-%d %H:%M} UTC"
    if now >= after:
        return f"expired {after:%Y-%m-%d %H:%M} UTC"
    return None


def chain_problem(chain: Sequence[x509.Certificate], authorities: Sequence[x509.Certificate],
                  now: dt.datetime | None) -> str | None:
    """Why OpenSSL does not verify ``chain`` (a certificate, then the intermediates sent
    with it) up to a CA of ``authorities`` at ``now`` (None: the dates are not checked),
    or None when it does."""
    store = crypto.X509Store()
    for authority in authorities:
        store.add_cert(crypto.X509.from_cryptography(authority))
    if now is None:
        store.set_flags(NO_CHECK_TIME)
    else:
        store.set_time(now)
    context = crypto.X509StoreContext(
        store, crypto.X509.from_cryptography(chain[0]),
        [crypto.X509.from_cryptography(cert) for cert in chain[1:]])
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as e:
        return str(e)
    return None
