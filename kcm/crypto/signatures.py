"""RSA signatures as KMIP's Sign and Signature Verify define them (KMIP 1.4 §4.31, §4.32;
2.1 §6.1.49, §6.1.50). Pure: no stored objects, no I/O; randomness is the caller's.

* The scheme (:func:`resolve_signature`): RSA with PKCS#1 v1.5 or PSS padding and the
  SHA-1/SHA-2/SHA-3 hashes, named by a Digital Signature Algorithm or by Cryptographic
  Algorithm, Padding Method and Hashing Algorithm. The request's parameters win over the
  key's Cryptographic Parameters attribute; what neither says is PKCS#1 v1.5 with SHA-256.
  PSS takes the Salt Length given (else the digest's length when signing, any when
  verifying) and MGF1 with the Mask Generator Hashing Algorithm (else the message hash).
  Anything else is Unsupported Cryptographic Parameters.
* The input (:func:`signature_input`): Data is the message; Digested Data is signed or
  verified as the digest it is, or, when no parameter names the hash and the padding is
  PKCS#1 v1.5, as the encoded digest itself (the DigestInfo the client built).
* :func:`sign` and :func:`verify`; what the library refuses is Cryptographic Failure.
* A signing stream's state (:func:`pack_stream`, :func:`unpack_stream`): the scheme and
  the data so far, for the Correlation Value (:mod:`kcm.crypto.sealed_state`).
"""

from __future__ import annotations

import hmac
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa, utils

from kcm.crypto import raw_rsa
from kcm.crypto.errors import cryptographic_failure, unsupported
from kcm.crypto.hashing import HASHES
from kcm.crypto.parameters import merge_parameters
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    DigitalSignatureAlgorithm,
    HashingAlgorithm,
    PaddingMethod,
    ResultReason,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label

__all__ = [
    "DIGEST", "ENCODED", "MESSAGE", "SignatureSpec", "pack_stream", "resolve_signature",
    "sign", "signature_input", "unpack_stream", "verify",
]

_RSA = CryptographicAlgorithm.RSA
_DSA = DigitalSignatureAlgorithm

#: The PKCS#1 v1.5 Digital Signature Algorithms and the hash each names.
_PKCS1_SIGNATURES: dict[int, int] = {
    _DSA.SHA_1_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA_1,
    _DSA.SHA_224_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA_224,
    _DSA.SHA_256_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA_256,
    _DSA.SHA_384_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA_384,
    _DSA.SHA_512_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA_512,
    _DSA.SHA3_256_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA3_256,
    _DSA.SHA3_384_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA3_384,
    _DSA.SHA3_512_WITH_RSA_ENCRYPTION: HashingAlgorithm.SHA3_512,
}
#: Digital Signature Algorithm -> (padding, hash); None: the hash comes from the parameters.
_SIGNATURE_ALGORITHMS: dict[int, tuple[int, int | None]] = {
    **{named: (PaddingMethod.PKCS1_V1_5, hashing)
       for named, hashing in _PKCS1_SIGNATURES.items()},
    _DSA.RSASSA_PSS: (PaddingMethod.PSS, None),
}
_DEFAULT_PADDING = PaddingMethod.PKCS1_V1_5
_DEFAULT_HASH = HashingAlgorithm.SHA_256
_SIGNATURE_FIELDS = ("padding_method", "hashing_algorithm", "digital_signature_algorithm",
                     "cryptographic_algorithm", "salt_length", "mask_generator",
                     "mask_generator_hashing_algorithm")

#: What a request's bytes are: the message, its digest, or the digest already encoded.
MESSAGE, DIGEST, ENCODED = "message", "digest", "encoded"


@dataclass(frozen=True, slots=True)
class SignatureSpec:
    """A resolved RSA signature scheme."""

    padding: int  # PaddingMethod.PKCS1_V1_5 or PSS
    hashing: int  # HashingAlgorithm
    salt_length: int | None  # PSS: bytes; None: the digest length (sign), any (verify)
    mgf_hashing: int  # PSS: the MGF1 hash
    hash_named: bool = True  # False: no parameter named the hash (SHA-256 by default)

    def hash(self) -> hashes.HashAlgorithm:
        return HASHES[self.hashing]()

    def padding_for(self, *, signing: bool) -> asym_padding.AsymmetricPadding:
        if self.padding == PaddingMethod.PKCS1_V1_5:
            return asym_padding.PKCS1v15()
        salt: Any
        if self.salt_length is not None:
            salt = self.salt_length
        else:
            salt = asym_padding.PSS.DIGEST_LENGTH if signing else asym_padding.PSS.AUTO
        return asym_padding.PSS(mgf=asym_padding.MGF1(HASHES[self.mgf_hashing]()),
                                salt_length=salt)


def resolve_signature(key_algorithm: int | None, stored: object,
                      requested: CryptographicParameters | None) -> SignatureSpec:
    """The signature scheme for a key of ``key_algorithm`` whose stored Cryptographic
    Parameters are ``stored`` (or None): the request's over the key's over the default."""
    params = merge_parameters(stored, requested, _SIGNATURE_FIELDS)
    algorithm = params.cryptographic_algorithm
    if algorithm is None:
        algorithm = key_algorithm
    if algorithm != _RSA or (key_algorithm is not None and key_algorithm != _RSA):
        raise unsupported(f"{enum_label(CryptographicAlgorithm, algorithm)} "
                          "signatures are not supported; RSA only")
    padding = params.padding_method
    hashing = params.hashing_algorithm
    if params.digital_signature_algorithm is not None:
        named = int(params.digital_signature_algorithm)
        scheme = _SIGNATURE_ALGORITHMS.get(named)
        if scheme is None:
            raise unsupported("digital signature algorithm "
                              f"{enum_label(DigitalSignatureAlgorithm, named)} is not supported")
        scheme_padding, scheme_hash = scheme
        if (padding is not None and padding != scheme_padding) or (
                hashing is not None and scheme_hash is not None and hashing != scheme_hash):
            raise KmipError(ResultReason.INVALID_FIELD,
                            "the Digital Signature Algorithm contradicts the Padding Method "
                            "or Hashing Algorithm")
        padding = scheme_padding
        hashing = scheme_hash if scheme_hash is not None else hashing
    padding = _DEFAULT_PADDING if padding is None else int(padding)
    hash_named = hashing is not None
    hashing = _DEFAULT_HASH if hashing is None else int(hashing)
    if padding not in (PaddingMethod.PKCS1_V1_5, PaddingMethod.PSS):
        raise unsupported(f"padding method {enum_label(PaddingMethod, padding)} is "
                          "not supported for signatures")
    if hashing not in HASHES:
        raise unsupported(f"hashing algorithm {enum_label(HashingAlgorithm, hashing)} "
                          "is not supported for signatures")
    mgf = params.mask_generator_hashing_algorithm
    mgf = hashing if mgf is None else int(mgf)
    if mgf not in HASHES:
        raise unsupported(f"MGF1 with {enum_label(HashingAlgorithm, mgf)} is not supported")
    salt = params.salt_length
    if salt is not None and salt < 0:
        raise KmipError(ResultReason.INVALID_FIELD, "Salt Length cannot be negative")
    return SignatureSpec(padding, hashing, salt, mgf, hash_named)


def signature_input(spec: SignatureSpec, data: bytes | None,
                    digested: bytes | None) -> tuple[bytes, str]:
    """(the bytes to sign or verify, which of :data:`MESSAGE`, :data:`DIGEST` and
    :data:`ENCODED` they are)."""
    if data is not None and digested is not None:
        raise KmipError(ResultReason.INVALID_FIELD, "send Data or Digested Data, not both")
    if digested is not None:
        if not spec.hash_named and spec.padding == PaddingMethod.PKCS1_V1_5:
            # No hash named: the server cannot build the DigestInfo, so the Digested Data
            # is taken as the encoded digest itself (RFC 8017 §9.2 step 2 done by the
            # client), as the OASIS TC-RSA-SIGN-DIGESTEDDATA cases sign 16 bare bytes.
            return digested, ENCODED
        size = spec.hash().digest_size
        if len(digested) != size:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"Digested Data is {len(digested)} bytes; a "
                            f"{enum_label(HashingAlgorithm, spec.hashing)} digest is {size}")
        return digested, DIGEST
    if data is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    return data, MESSAGE


def sign(key: rsa.RSAPrivateKey, spec: SignatureSpec, data: bytes, form: str,
         random_bytes: Callable[[int], bytes]) -> bytes:
    """The signature of ``data`` (in ``form``) by ``key``."""
    with cryptographic_failure(TypeError):
        if form == ENCODED:
            return _sign_encoded(key, data, random_bytes)
        return key.sign(data, spec.padding_for(signing=True), _hash_for(spec, form))


def verify(key: rsa.RSAPublicKey, spec: SignatureSpec, data: bytes, form: str,
           signature: bytes) -> bool:
    """Whether ``signature`` is ``key``'s over ``data`` (in ``form``)."""
    try:
        with cryptographic_failure(TypeError):
            if form == ENCODED:
                recovered = key.recover_data_from_signature(signature,
                                                            asym_padding.PKCS1v15(), None)
                return hmac.compare_digest(recovered, data)
            key.verify(signature, data, spec.padding_for(signing=False),
                       _hash_for(spec, form))
    except InvalidSignature:
        return False
    return True


def _hash_for(spec: SignatureSpec, form: str) -> hashes.HashAlgorithm | utils.Prehashed:
    return utils.Prehashed(spec.hash()) if form == DIGEST else spec.hash()


#: The DER DigestInfo prefixes of RFC 8017 §9.2, note 1: T is one of these and a digest.
_DIGEST_INFO_PREFIXES: dict[bytes, hashes.HashAlgorithm] = {
    bytes.fromhex("3021300906052b0e03021a05000414"): hashes.SHA1(),
    bytes.fromhex("302d300d06096086480165030402040500041c"): hashes.SHA224(),
    bytes.fromhex("3031300d060960864801650304020105000420"): hashes.SHA256(),
    bytes.fromhex("3041300d060960864801650304020205000430"): hashes.SHA384(),
    bytes.fromhex("3051300d060960864801650304020305000440"): hashes.SHA512(),
}


def _sign_encoded(key: rsa.RSAPrivateKey, encoded: bytes,
                  random_bytes: Callable[[int], bytes]) -> bytes:
    """RSASSA-PKCS1-v1_5 over an already encoded digest T (RFC 8017 §8.2.1, §9.2 from
    step 3). A T that is a DigestInfo of a known hash is signed by OpenSSL (the same
    signature: the scheme is deterministic); any other T by the system's OpenSSL
    (:mod:`kcm.crypto.raw_rsa`: pyca/cryptography has no such primitive), or where that
    cannot be loaded by the exponentiation here, in the Chinese remainder form and
    blinded."""
    for prefix, algorithm in _DIGEST_INFO_PREFIXES.items():
        if encoded.startswith(prefix) and len(encoded) == len(prefix) + algorithm.digest_size:
            return key.sign(encoded[len(prefix):], asym_padding.PKCS1v15(),
                            utils.Prehashed(algorithm))
    numbers = key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    size = (n.bit_length() + 7) // 8
    if len(encoded) > size - 11:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        f"Digested Data of {len(encoded)} bytes is too long for the key")
    message = int.from_bytes(b"\x00\x01" + b"\xff" * (size - 3 - len(encoded)) + b"\x00"
                             + encoded, "big")
    signed = None if raw_rsa.sign_encoded is None else raw_rsa.sign_encoded(key, encoded)
    if signed is not None:  # (OpenSSL's, the interpreter's lock released: kcm.crypto.raw_rsa)
        if len(signed) != size or pow(int.from_bytes(signed, "big"), e, n) != message:
            raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, "the signature did not verify")
        return signed
    while True:
        blind = int.from_bytes(random_bytes(size), "big") % n
        if blind > 1 and math.gcd(blind, n) == 1:
            break
    blinded = message * pow(blind, e, n) % n
    p, q = numbers.p, numbers.q
    s_p, s_q = pow(blinded % p, numbers.dmp1, p), pow(blinded % q, numbers.dmq1, q)
    signature = (s_q + q * ((s_p - s_q) * numbers.iqmp % p)) * pow(blind, -1, n) % n
    if pow(signature, e, n) != message:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, "the signature did not verify")
    return signature.to_bytes(size, "big")


# Streams ----------------------------------------------------------------------------
_STREAM_HEAD = struct.Struct(">BIIiI")  # signing, padding, hashing, salt (-1: none), MGF hash


def pack_stream(signing: bool, spec: SignatureSpec, data: bytes) -> bytes:
    """A signing or verifying stream's state: its direction, scheme and data so far."""
    salt = -1 if spec.salt_length is None else spec.salt_length
    return _STREAM_HEAD.pack(signing, spec.padding, spec.hashing, salt,
                             spec.mgf_hashing) + data


def unpack_stream(blob: bytes) -> tuple[bool, SignatureSpec, bytes]:
    """The state :func:`pack_stream` packed: (signing, scheme, data so far)."""
    signing, padding, hashing, salt, mgf = _STREAM_HEAD.unpack(blob[:_STREAM_HEAD.size])
    spec = SignatureSpec(padding, hashing, None if salt < 0 else salt, mgf)
    return bool(signing), spec, blob[_STREAM_HEAD.size:]
