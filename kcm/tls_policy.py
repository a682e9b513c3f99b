"""Which TLS versions and TLS 1.2 cipher suites a KCM listener accepts: the ``[core.tls]``
and ``[gateway.tls]`` settings ``min_version``, ``profile`` and ``ciphers``. Pure: names
and OpenSSL cipher strings, checked here, applied by :mod:`kcm.tls`.

* ``min_version``: ``"1.2"`` (the default) or ``"1.3"``. TLS 1.3's suites are all AEAD
  and OpenSSL's default set is kept.
* ``profile``: ``"default"`` — TLS 1.2 with ECDHE key exchange and AEAD ciphers only
  (:data:`DEFAULT_TLS12_CIPHERS`); ``"kmip-compat"`` — those, then the TLS 1.2 suites the
  KMIP 1.4 and 2.1 profiles name for their TLS 1.2 authentication suites that the default
  leaves out (:data:`KMIP_COMPAT_EXTRA_CIPHERS`: RSA key exchange and ECDHE with AES-CBC
  and SHA-2 MACs), for appliances that offer nothing else. Server preference keeps the
  AEAD suites first for every client that offers them.
* ``ciphers``: an OpenSSL cipher string for TLS 1.2 that replaces the profile's list
  (only with the default profile, and only when TLS 1.2 is allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_TLS12_CIPHERS", "KMIP_COMPAT_EXTRA_CIPHERS", "TLS_MIN_VERSIONS", "TLS_PROFILES",
    "TlsPolicy",
]

#: The OpenSSL cipher string for TLS 1.2: forward-secret ECDHE with AEAD ciphers only.
DEFAULT_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

#: OpenSSL names of the KMIP profiles' TLS 1.2 suites beyond the default: in order,
#: TLS_RSA_WITH_AES_128_CBC_SHA256, TLS_RSA_WITH_AES_256_CBC_SHA256,
#: TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384,
#: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256, TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384.
KMIP_COMPAT_EXTRA_CIPHERS = ("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
                             "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:"
                             "AES128-SHA256:AES256-SHA256")

#: Profile name -> its TLS 1.2 cipher string.
TLS_PROFILES: dict[str, str] = {
    "default": DEFAULT_TLS12_CIPHERS,
    "kmip-compat": f"{DEFAULT_TLS12_CIPHERS}:{KMIP_COMPAT_EXTRA_CIPHERS}",
}

#: ``min_version`` values.
TLS_MIN_VERSIONS = ("1.2", "1.3")

#: The command-line options (twistd ``optParameters``) of the TLS policy, the same for both
#: planes' KMIP listeners.
TLS_POLICY_OPTIONS = [
    ["tls-min-version", None, None, "Lowest TLS version a KMIP client may use: 1.2 "
                                    "(default) or 1.3."],
    ["tls-profile", None, None, "TLS 1.2 suites for KMIP clients: default (ECDHE with "
                                "AEAD) or kmip-compat (adds the KMIP profiles' CBC suites)."],
    ["tls-ciphers", None, None, "OpenSSL cipher string for TLS 1.2 that replaces the "
                                "profile's list."],
    ["tls-crl", None, None, "File of CRLs (PEM or DER) client certificates are checked "
                            "against; read again when it changes."],
    ["tls-crl-refresh", None, None, "Seconds between two looks at the CRL file for changes "
                                    "(default 30)."],
]


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """The versions and TLS 1.2 suites a listener accepts; the defaults are KCM's."""

    min_version: str = "1.2"
    profile: str = "default"
    ciphers: str | None = None

    def __post_init__(self) -> None:
        if self.min_version not in TLS_MIN_VERSIONS:
            raise ValueError(f"tls.min_version must be one of {', '.join(TLS_MIN_VERSIONS)}")
        if self.profile not in TLS_PROFILES:
            raise ValueError(f"tls.profile must be one of {', '.join(TLS_PROFILES)}")
        if self.ciphers is not None:
            if not isinstance(self.ciphers, str) or not self.ciphers.strip():
                raise ValueError("tls.ciphers must be a non-empty OpenSSL cipher string")
            if self.profile != "default":
                raise ValueError("tls.ciphers replaces the profile's list: set one of "
                                 "tls.ciphers and tls.profile")
        if self.min_version == "1.3" and (self.profile != "default" or self.ciphers):
            raise ValueError("tls.min_version 1.3 turns TLS 1.2 off, so TLS 1.2 suites "
                             "(tls.profile, tls.ciphers) cannot apply")

    @property
    def tls12_ciphers(self) -> str:
        """The OpenSSL cipher string for TLS 1.2."""
        return self.ciphers if self.ciphers is not None else TLS_PROFILES[self.profile]
