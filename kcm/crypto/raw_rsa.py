"""RSASSA-PKCS1-v1_5 over an already encoded digest, by the system's OpenSSL.

A Sign of Digested Data that names no hash signs the client's bytes T as they are
(RFC 8017 §9.2 from step 3: :func:`kcm.crypto.signatures.sign`, the OASIS
TC-RSA-SIGN-DIGESTEDDATA cases). pyca/cryptography has no primitive for it, and the
exponentiation in Python held the interpreter's lock for 25 ms at a time and 56 ms in all
for an RSA-4096 key: every thread of kcm-core, its reactor and its writer included, waited
while a tenant's batch of them ran. OpenSSL's ``EVP_PKEY_sign`` with PKCS#1 padding and no
digest is that scheme (blinded, in the Chinese remainder form), 11 ms for RSA-4096, and a
call through :mod:`ctypes` releases the lock.

The same holds for OpenSSL's validation of an RSA private key (the primality of its
factors, the agreement of its values: what pyca/cryptography's loaders run, 0.2 s for
RSA-4096 with the lock held): :func:`pairwise_check` runs ``EVP_PKEY_pairwise_check``
(``RSA_check_key``'s tests) with the lock released.

The library is the system's ``libcrypto`` (OpenSSL 3, which Python's own :mod:`ssl` uses);
where it cannot be loaded, :func:`sign_encoded` and :func:`pairwise_check` are None and the
caller computes in Python, or with pyca/cryptography.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["pairwise_check", "sign_encoded"]

_EVP_PKEY_RSA = 6
_RSA_PKCS1_PADDING = 1
_VOID = ctypes.c_void_p


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.d2i_PrivateKey.restype = _VOID
        lib.d2i_PrivateKey.argtypes = [ctypes.c_int, _VOID, ctypes.POINTER(ctypes.c_char_p),
                                       ctypes.c_long]
        lib.EVP_PKEY_CTX_new.restype = _VOID
        lib.EVP_PKEY_CTX_new.argtypes = [_VOID, _VOID]
        lib.EVP_PKEY_sign_init.argtypes = [_VOID]
        lib.EVP_PKEY_CTX_set_rsa_padding.argtypes = [_VOID, ctypes.c_int]
        lib.EVP_PKEY_sign.argtypes = [_VOID, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                      ctypes.c_char_p, ctypes.c_size_t]
        lib.EVP_PKEY_CTX_free.argtypes = [_VOID]
        lib.EVP_PKEY_pairwise_check.argtypes = [_VOID]
        lib.EVP_PKEY_free.argtypes = [_VOID]
        lib.ERR_clear_error.argtypes = []
    except (OSError, AttributeError):
        return None  # (not OpenSSL 3's libcrypto)
    return lib


def _signer(lib: ctypes.CDLL) -> Callable[[rsa.RSAPrivateKey, bytes], bytes | None]:
    def sign_encoded(key: rsa.RSAPrivateKey, encoded: bytes) -> bytes | None:
        """The PKCS#1 v1.5 signature of ``encoded`` (at most the modulus' length less 11
        bytes: the caller checks) by ``key``; None if OpenSSL refused (its errors
        cleared)."""
        der = key.private_bytes(serialization.Encoding.DER,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        cursor = ctypes.c_char_p(der)
        pkey = lib.d2i_PrivateKey(_EVP_PKEY_RSA, None, ctypes.byref(cursor), len(der))
        ctx = lib.EVP_PKEY_CTX_new(pkey, None) if pkey else None
        try:
            size = ctypes.c_size_t(key.key_size // 8 + 1)
            out = ctypes.create_string_buffer(size.value)
            if ctx and lib.EVP_PKEY_sign_init(ctx) == 1 \
                    and lib.EVP_PKEY_CTX_set_rsa_padding(ctx, _RSA_PKCS1_PADDING) == 1 \
                    and lib.EVP_PKEY_sign(ctx, out, ctypes.byref(size), encoded,
                                          len(encoded)) == 1:
                return out.raw[:size.value]
            lib.ERR_clear_error()
            return None
        finally:
            if ctx:
                lib.EVP_PKEY_CTX_free(ctx)
            if pkey:
                lib.EVP_PKEY_free(pkey)

    return sign_encoded


def _checker(lib: ctypes.CDLL) -> Callable[[bytes], bool | None]:
    def pairwise_check(der: bytes) -> bool | None:
        """Whether the RSA private key ``der`` (PKCS#1 DER) is valid, as OpenSSL's
        ``RSA_check_key`` judges (its factors prime, its values consistent); None if
        OpenSSL could not tell (the DER unreadable to it; its errors cleared)."""
        cursor = ctypes.c_char_p(der)
        pkey = lib.d2i_PrivateKey(_EVP_PKEY_RSA, None, ctypes.byref(cursor), len(der))
        ctx = lib.EVP_PKEY_CTX_new(pkey, None) if pkey else None
        try:
            verdict = lib.EVP_PKEY_pairwise_check(ctx) if ctx else -1
            lib.ERR_clear_error()
            return None if verdict < 0 else verdict == 1
        finally:
            if ctx:
                lib.EVP_PKEY_CTX_free(ctx)
            if pkey:
                lib.EVP_PKEY_free(pkey)

    return pairwise_check


_LIB = _load()
#: ``sign_encoded(key, encoded)``, or None where the system's OpenSSL 3 is not there.
sign_encoded: Callable[[rsa.RSAPrivateKey, bytes], bytes | None] | None = \
    None if _LIB is None else _signer(_LIB)
#: ``pairwise_check(der)``, or None where the system's OpenSSL 3 is not there.
pairwise_check: Callable[[bytes], bool | None] | None = \
    None if _LIB is None else _checker(_LIB)
