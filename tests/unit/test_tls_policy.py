"""The TLS policy settings (kcm.tls_policy): defaults, profiles, and what is refused."""

from __future__ import annotations

import pytest

from kcm.tls_policy import (
    DEFAULT_TLS12_CIPHERS,
    KMIP_COMPAT_EXTRA_CIPHERS,
    TLS_PROFILES,
    TlsPolicy,
)


def test_the_default_is_ecdhe_with_aead_from_tls12() -> None:
    policy = TlsPolicy()
    assert (policy.min_version, policy.tls12_ciphers) == ("1.2", DEFAULT_TLS12_CIPHERS)
    assert DEFAULT_TLS12_CIPHERS == "ECDHE+AESGCM:ECDHE+CHACHA20"


def test_kmip_compat_keeps_the_default_first_and_adds_the_profile_suites() -> None:
    ciphers = TlsPolicy(profile="kmip-compat").tls12_ciphers
    assert ciphers.startswith(DEFAULT_TLS12_CIPHERS + ":")
    for suite in ("AES128-SHA256", "AES256-SHA256", "ECDHE-ECDSA-AES128-SHA256",
                  "ECDHE-RSA-AES256-SHA384"):
        assert suite in KMIP_COMPAT_EXTRA_CIPHERS.split(":")
    assert set(TLS_PROFILES) == {"default", "kmip-compat"}


def test_ciphers_replace_the_list() -> None:
    assert TlsPolicy(ciphers="ECDHE+AESGCM").tls12_ciphers == "ECDHE+AESGCM"


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"min_version": "1.1"}, "min_version"),
    ({"profile": "weak"}, "profile"),
    ({"ciphers": " "}, "ciphers"),
    ({"profile": "kmip-compat", "ciphers": "AES128-SHA256"}, "one of"),
    ({"min_version": "1.3", "profile": "kmip-compat"}, "turns TLS 1.2 off"),
    ({"min_version": "1.3", "ciphers": "ECDHE+AESGCM"}, "turns TLS 1.2 off"),
])
def test_contradictions_are_refused(kwargs: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        TlsPolicy(**kwargs)
