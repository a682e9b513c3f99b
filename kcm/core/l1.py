"""The L1 master key, wherever it is kept: the one interface the keyring uses, and the choice
of where from the configuration.

Two implementations, each in its own module:

* :mod:`kcm.core.l1_file`: the key in a 0600 file (the default) or in an environment
  variable, held in process memory;
* :mod:`kcm.core.l1_pkcs11`: a non-extractable AES-256 key in a PKCS#11 token (an HSM;
  SoftHSM2 in the tests), used through the token for every operation.

Both wrap in the same blob format (:mod:`kcm.core.keys`, AES-256-GCM, version 1), so the
keyring neither knows nor cares which one it holds.
"""

from __future__ import annotations

from typing import Any, Protocol

from kcm.core.keys import L1Error, RandomBytes

__all__ = ["L1_CHECK_META", "L1Error", "L1Key", "l1_refusal", "l1_setting", "open_configured_l1",
           "open_l1"]


class L1Key(Protocol):
    """What the keyring needs of L1. None of it reveals the key itself."""

    #: Names the key for messages ("L1 key file var/l1.key"); never holds a secret.
    description: str

    def check_value(self) -> str:
        """A short public fingerprint (hex), stored by ``kcm core init`` and compared at
        start-up to detect a wrong L1."""

    def audit_key(self) -> bytes:
        """The 32-byte key that MACs the audit chain, derived from L1 (the same every
        time)."""

    def wrap(self, plaintext: bytes, *, aad: bytes, random_bytes: RandomBytes,
             version: int = ...) -> bytes:
        """``plaintext`` wrapped under L1, bound to ``aad`` (a :func:`keys.wrap` blob of
        ``version``, by default the current one; ``aad`` must be that version's)."""

    def unwrap(self, blob: bytes, *, aad: bytes) -> bytes:
        """The plaintext of ``blob``; :class:`kcm.core.keys.UnwrapError` unless L1 wrapped it
        with exactly ``aad`` (that of the blob's version)."""


def open_l1(l1_key_file: str, l1_pkcs11: str | None, *, create: bool = False,
            l1_key_env: str | None = None) -> tuple[L1Key, bool]:
    """The configured L1: the PKCS#11 key ``l1_pkcs11`` names if set, else the key in the
    environment variable ``l1_key_env`` if set, else the key file.

    With ``create`` (``kcm core init``), a missing key is created first (a new key file, or a
    new token key; never an environment variable); returns the key and whether it was
    created. Raises :class:`L1Error` with a message fit for an operator.
    """
    if l1_pkcs11:
        from kcm.core import l1_pkcs11 as pkcs11_l1

        return pkcs11_l1.open_token_key(l1_pkcs11, create=create)
    from kcm.core import l1_file

    if l1_key_env:
        return l1_file.open_key_env(l1_key_env, create=create)
    return l1_file.open_key_file(l1_key_file, create=create)


def l1_setting(config: Any) -> str:
    """The setting that says where the configured L1 is (for messages): ``l1_pkcs11``,
    ``l1_key_env`` or ``l1_key_file``."""
    if config.l1_pkcs11:
        return "l1_pkcs11"
    return "l1_key_env" if config.l1_key_env else "l1_key_file"


def open_configured_l1(config: Any, *, create: bool = False) -> tuple[L1Key, bool]:
    """:func:`open_l1` of a :class:`kcm.core.config.CoreConfig`."""
    return open_l1(config.l1_key_file, config.l1_pkcs11, create=create,
                   l1_key_env=config.l1_key_env)


#: The meta row where ``kcm core init`` records the L1 key's check value.
L1_CHECK_META = "l1.kcv"


def l1_refusal(expected: str | None, l1: L1Key) -> str | None:
    """Why ``l1`` is not the L1 of a database whose recorded check value is ``expected``
    (None: ``kcm core init`` recorded none), or None if it is: the one rule kcm-core's start,
    the operator commands that use L1 and ``kcm config check`` apply."""
    if expected is None:
        return "the database was not initialised: run `kcm core init` first"
    if expected != l1.check_value():
        return f"the {l1.description} is not the L1 key of this database"
    return None
