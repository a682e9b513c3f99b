"""RSA keys: generated, read from and written to the Key Format Types KMIP names
(KMIP 1.4 §2.1.7, 2.1 §2.1.3). Pure: no stored objects, no I/O.

* :func:`generate_key_pair` makes a pair of 1024, 2048, 3072 or 4096 bits (public exponent
  65537), in PKCS#1 DER.
* :func:`rsa_key_block_in_format` converts a key block between PKCS#1, PKCS#8 (private),
  X.509 SubjectPublicKeyInfo (public) and the Transparent RSA Public / Private Key forms;
  anything else, and a wrapped key block, is Key Format Type Not Supported.
* :func:`load_private` / :func:`load_public` read a key block's material (DER or PEM, or
  the transparent numbers; missing CRT values are recomputed); material that cannot be
  read is Cryptographic Failure.
* :func:`check_registered_key` is Register's check of an RSA key, made once: a modulus of
  :data:`RSA_MIN_BITS` to :data:`RSA_MAX_BITS` bits (the sizes Create Key Pair makes), an
  odd public exponent of at least 3 and below 2^256, values that agree with each other,
  OpenSSL's full validation of a private key (the primality of its factors), and a stated
  Cryptographic Length equal to the modulus size.

Reading a key costs what its numbers make it cost: OpenSSL's validation of a private key
tests its factors for primality, a fifth of a second for 4096 bits and seconds beyond (with
the GIL released where the system's OpenSSL is called directly, :mod:`kcm.crypto.raw_rsa`;
held by pyca/cryptography's). So material is read first without it, and what bounds the
cost of using the key is checked in Python (a modulus of at most :data:`RSA_MAX_BITS` bits,
factors whose product is the modulus, exponents below their moduli); material the server
has not checked (``stored=False``: what Register is given, a wrapped key unwrapped) then
gets all of Register's checks, and material it stores (``stored=True``: checked when
registered, or made here) is used without OpenSSL's validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.crypto.raw_rsa import pairwise_check
from kcm.kmip.enums import CryptographicAlgorithm, KeyFormatType, ObjectType, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.objects import KeyBlock, KeyValue
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

__all__ = [
    "RSA_LENGTHS", "RSA_MAX_BITS", "RSA_MAX_EXPONENT_BITS", "RSA_MIN_BITS", "RsaKeyPair",
    "check_registered_key", "generate_key_pair", "load_private", "load_public",
    "private_key_der", "rsa_key_block_in_format", "validate_private",
]

#: RSA modulus sizes in bits the server generates.
RSA_LENGTHS = frozenset({1024, 2048, 3072, 4096})
#: The smallest and the largest modulus of an RSA key registered (those Create Key Pair
#: makes); no stored key larger than :data:`RSA_MAX_BITS` is used either.
RSA_MIN_BITS = min(RSA_LENGTHS)
RSA_MAX_BITS = max(RSA_LENGTHS)
#: The longest public exponent of an RSA key registered or used, in bits (FIPS 186-5: e <
#: 2^256; Create Key Pair makes 65537).
RSA_MAX_EXPONENT_BITS = 256
_PUBLIC_EXPONENT = 65537
_RSA = CryptographicAlgorithm.RSA


@dataclass(frozen=True, slots=True)
class RsaKeyPair:
    """A fresh key pair, each key in PKCS#1 DER."""

    private_der: bytes
    public_der: bytes


def generate_key_pair(length: int) -> RsaKeyPair:
    """A new RSA key pair with a modulus of ``length`` bits (one of :data:`RSA_LENGTHS`)."""
    private_key = rsa.generate_private_key(public_exponent=_PUBLIC_EXPONENT, key_size=length)
    return RsaKeyPair(_private_pkcs1(private_key), _public_pkcs1(private_key.public_key()))


def check_registered_key(object_type: int, block: KeyBlock, *, algorithm: int | None,
                         length: int | None,
                         validate: Callable[[rsa.RSAPrivateKey], None] | None = None
                         ) -> int | None:
    """Register's check of a Public or Private Key (see the module's docstring), made once:
    the server uses what passed without validating it again. An RSA key that fails is
    refused: Invalid Field for a size, exponent or stated Cryptographic Length (``length``)
    the server does not accept, Cryptographic Failure for material that is not a valid key.

    Material the server cannot use is stored as sent, as Register always has: a wrapped
    key block (checked if it is ever unwrapped to be converted), a format not read here
    (Raw, PKCS#12, an EC or DSA key's), and what no parser here reads (an encrypted PKCS#8
    key, bytes that are no key) unless its Cryptographic Algorithm says RSA: every use of
    it fails as it would now, at no more cost. Material said to be RSA, in a format read
    here, that cannot be read is refused (Cryptographic Failure).

    ``validate(key)``: OpenSSL's validation of a private key, the costly part
    (:func:`validate_private` when not given; kcm-core's Register has it computed on the
    tenant's worker before the group commit).

    Returns the modulus size in bits of an RSA key read (None for anything else): a key
    registered without a Cryptographic Algorithm is an RSA key of that length all the same
    (KMIP 1.4 §2.1.3: the algorithm "if available from the Key Value").
    """
    if block.key_wrapping_data is not None or not isinstance(block.key_value, KeyValue):
        return None
    private = object_type == ObjectType.PRIVATE_KEY
    try:
        read = _read(block, private=private)
        if read is None:
            return None
        if isinstance(read, dict):  # a transparent RSA key: built once its numbers pass
            read = _checked(read, private=private, registering=True)
    except _Unreadable:
        if algorithm == _RSA and _malformed(block.key_value.key_material):
            # Said to be RSA, in a format read here, and not even well-formed (cut short,
            # trailing bytes, a component missing): stored, it would be described as what
            # it is not. Well-formed DER no parser here reads (an encrypted PKCS#8 key, a
            # multi-prime RSA key) is stored as sent.
            raise
        return None
    if not isinstance(read, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if algorithm == _RSA:
            raise KmipError(ResultReason.INVALID_FIELD,
                            "the key material is not an RSA key, as its Cryptographic "
                            "Algorithm says")
        return None  # another algorithm's key, which the server does not use
    if algorithm is not None and algorithm != _RSA:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the key material is an RSA key, not "
                        f"{enum_label(CryptographicAlgorithm, algorithm)}")
    key = _checked(read, private=private, registering=True)
    if isinstance(key, rsa.RSAPrivateKey):
        (validate or validate_private)(key)
    if length is not None and length != key.key_size:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Cryptographic Length {length} does not match the {key.key_size}-bit "
                        "RSA key")
    return key.key_size


def rsa_key_block_in_format(object_type: int, block: KeyBlock, wanted: int, *,
                            stored: bool = False) -> KeyBlock:
    """An RSA Public or Private Key's key block in Key Format Type ``wanted``.

    Public keys: PKCS#1, X.509 (SubjectPublicKeyInfo) and Transparent RSA Public Key;
    private keys: PKCS#1, PKCS#8 and Transparent RSA Private Key. Anything else, and
    a wrapped key block, is Key Format Type Not Supported. ``stored``: as
    :func:`load_private`.
    """
    if block.key_format_type == wanted:
        return block
    if block.key_wrapping_data is not None or not isinstance(block.key_value, KeyValue):
        raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        "a wrapped key cannot be converted")
    private = object_type == ObjectType.PRIVATE_KEY
    key = (load_private(block, stored=stored) if private
           else load_public(block, stored=stored))
    if key is None:
        raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        f"cannot convert a {enum_label(KeyFormatType, block.key_format_type)} "
                        "key")
    material: bytes | Item
    if isinstance(key, rsa.RSAPrivateKey):
        if wanted == KeyFormatType.PKCS_1:
            material = _private_pkcs1(key)
        elif wanted == KeyFormatType.PKCS_8:
            material = key.private_bytes(serialization.Encoding.DER,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        elif wanted == KeyFormatType.TRANSPARENT_RSA_PRIVATE_KEY:
            material = _transparent_private(key)
        else:
            _not_supported(block, wanted)
    else:
        if wanted == KeyFormatType.PKCS_1:
            material = _public_pkcs1(key)
        elif wanted == KeyFormatType.X_509:
            material = key.public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        elif wanted == KeyFormatType.TRANSPARENT_RSA_PUBLIC_KEY:
            numbers = key.public_numbers()
            material = Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
                Item(Tag.MODULUS, ItemType.BIG_INTEGER, numbers.n),
                Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, numbers.e)])
        else:
            _not_supported(block, wanted)
    return replace(block, key_format_type=wanted,
                   key_value=KeyValue(key_material=material,
                                      attributes=block.key_value.attributes),
                   cryptographic_algorithm=_RSA, cryptographic_length=key.key_size,
                   wire_order=None)


def load_private(block: KeyBlock, *, stored: bool = False) -> rsa.RSAPrivateKey | None:
    """The RSA private key in an unwrapped key block; None when the block holds no RSA
    private key in a format read here. ``stored``: material the server stores, used
    without OpenSSL's validation; else material it has not checked, which gets
    Register's checks (the module's docstring)."""
    key = _parse(block, private=True, registering=not stored)
    if not isinstance(key, rsa.RSAPrivateKey):
        return None
    return key if stored else _validated(key)


def load_public(block: KeyBlock, *, stored: bool = False) -> rsa.RSAPublicKey | None:
    """The RSA public key in an unwrapped key block; None when the block holds no RSA
    public key in a format read here. ``stored``: as :func:`load_private` (a public key
    has no costly validation; only the checks differ)."""
    key = _parse(block, private=False, registering=not stored)
    return key if isinstance(key, rsa.RSAPublicKey) else None


#: private? -> (the formats of DER or PEM bytes, the transparent format).
_READABLE = {
    True: ((KeyFormatType.PKCS_1, KeyFormatType.PKCS_8),
           KeyFormatType.TRANSPARENT_RSA_PRIVATE_KEY),
    False: ((KeyFormatType.PKCS_1, KeyFormatType.X_509),
            KeyFormatType.TRANSPARENT_RSA_PUBLIC_KEY),
}


def _parse(block: KeyBlock, *, private: bool, registering: bool) -> object:
    """The key in ``block`` (None when it is not in a format read here), an RSA key checked
    as :func:`_checked` does."""
    read = _read(block, private=private)
    if read is None:
        return None
    return _checked(read, private=private, registering=registering)


def _read(block: KeyBlock, *, private: bool) -> object:
    """What ``block`` holds, read without OpenSSL's validation: a key (of any algorithm)
    from DER or PEM, the numbers of a transparent RSA key (tag -> value), or None when the
    block is not in a format read here. Unreadable material is Cryptographic Failure."""
    material = block.key_value.key_material  # type: ignore[union-attr]
    fmt = block.key_format_type
    encoded, transparent = _READABLE[private]
    try:
        if isinstance(material, bytes) and fmt in encoded:
            return _load_der_or_pem(material, private=private)
        if isinstance(material, Item) and fmt == transparent:
            return _big_integers(material)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _unreadable(private) from None
    return None


def _checked(read: object, *, private: bool, registering: bool) -> object:
    """The key :func:`_read` read; an RSA key checked for what bounds the cost of using it
    (and, ``registering``, for Register's size and exponent: :func:`_check_public`), a
    transparent one built from its numbers once they pass."""
    if isinstance(read, dict):
        try:
            if private:
                return _private_from_numbers(read, registering=registering)
            n, e = read[Tag.MODULUS], read[Tag.PUBLIC_EXPONENT]
            _check_public(n, e, registering=registering)
            return rsa.RSAPublicNumbers(e, n).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm, KeyError):
            raise _unreadable(private) from None
    if isinstance(read, rsa.RSAPrivateKey):
        _check_private(read.private_numbers(), registering=registering)
    elif isinstance(read, rsa.RSAPublicKey):
        numbers = read.public_numbers()
        _check_public(numbers.n, numbers.e, registering=registering)
    return read


def _malformed(material: object) -> bool:
    """Whether key material is not even well-formed: DER whose outer element does not
    span the bytes exactly (cut short, trailing bytes), or a transparent structure a
    component of which is missing or of the wrong type. PEM is left to its parser."""
    if not isinstance(material, bytes):
        return True  # (a transparent key's numbers: read here, so not well-formed)
    if material.lstrip().startswith(b"-----"):
        return False
    if len(material) < 2 or material[0] != 0x30:
        return True
    first = material[1]
    if first < 0x80:
        start, length = 2, first
    else:
        size = first & 0x7F
        if not 0 < size <= 4 or len(material) < 2 + size:
            return True
        start, length = 2 + size, int.from_bytes(material[2:2 + size], "big")
    return start + length != len(material)


class _Unreadable(KmipError):
    """Key material no parser here reads (Cryptographic Failure)."""


def _unreadable(private: bool) -> KmipError:
    kind = "private" if private else "public"
    return _Unreadable(ResultReason.CRYPTOGRAPHIC_FAILURE,
                       f"the {kind} key material cannot be read")


#: The product of the primes below 1,000 (2 among them).
_SMALL_PRIMES_PRODUCT = math.prod(
    p for p in range(2, 1000) if all(p % d for d in range(2, math.isqrt(p) + 1)))


def _check_public(n: int, e: int, *, registering: bool) -> None:
    """A modulus of at most :data:`RSA_MAX_BITS` bits and an exponent of at most
    :data:`RSA_MAX_EXPONENT_BITS` bits, below the modulus (what a public operation costs);
    ``registering``: also at least :data:`RSA_MIN_BITS` bits and an odd exponent of at
    least 3 (Invalid Field; else Cryptographic Failure)."""
    bits = n.bit_length()
    refused = ResultReason.INVALID_FIELD if registering else ResultReason.CRYPTOGRAPHIC_FAILURE
    if bits > RSA_MAX_BITS or (registering and bits < RSA_MIN_BITS):
        raise KmipError(refused, f"RSA keys of {RSA_MIN_BITS} to {RSA_MAX_BITS} bits are "
                                 f"used here, not {bits}")
    if registering and (e < 3 or e % 2 == 0):
        raise KmipError(refused, "the RSA public exponent must be odd and at least 3")
    if e.bit_length() > RSA_MAX_EXPONENT_BITS:
        # FIPS 186-5 §5.1 and SP 800-56B: e < 2^256. A larger one makes every public
        # operation cost like a private one (a 3,071-bit e, 5 ms an Encrypt on the writer).
        raise KmipError(refused, "the RSA public exponent must be below 2^256")
    if registering and math.gcd(n, _SMALL_PRIMES_PRODUCT) != 1:
        # NIST SP 800-89 §5.3.3's partial public-key validation: an RSA modulus is odd and
        # has no prime factor below 1,000.
        raise KmipError(refused, "the RSA modulus has a small factor: it is no RSA modulus")
    if not 1 < e < n:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        "the RSA public exponent is not below the modulus")


def _check_private(numbers: rsa.RSAPrivateNumbers, *, registering: bool) -> None:
    """:func:`_check_public`, and private values that agree with the modulus: factors whose
    product it is, exponents and coefficient below their moduli (Cryptographic Failure).
    This bounds what OpenSSL's validation and every use of the key cost."""
    public = numbers.public_numbers
    n = public.n
    _check_public(n, public.e, registering=registering)
    p, q = numbers.p, numbers.q
    if not (1 < p < n and 1 < q < n and p * q == n and 0 < numbers.d < n
            and 0 < numbers.dmp1 < p and 0 < numbers.dmq1 < q and 0 < numbers.iqmp < p):
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        "the RSA private key's values do not agree with its modulus")


def _validated(key: rsa.RSAPrivateKey) -> rsa.RSAPrivateKey:
    """``key`` once OpenSSL has validated it (its factors prime, its values consistent):
    Cryptographic Failure if it is not valid. Only for a key :func:`_check_private` passed,
    which bounds the cost. Through :func:`kcm.crypto.raw_rsa.pairwise_check`, the same
    tests with the interpreter's lock released (0.2 s for RSA-4096: every thread of the
    process waited while a batch of them ran); pyca/cryptography's where it cannot tell."""
    if pairwise_check is not None:
        verdict = pairwise_check(_private_pkcs1(key))
        if verdict is not None:
            if not verdict:
                raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                                "the RSA private key is not valid")
            return key
    try:
        return key.private_numbers().private_key()
    except ValueError:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        "the RSA private key is not valid") from None


def validate_private(key: rsa.RSAPrivateKey) -> None:
    """OpenSSL's validation of ``key`` (:func:`_validated`): Cryptographic Failure if it is
    not valid."""
    _validated(key)


def private_key_der(key: rsa.RSAPrivateKey) -> bytes:
    """``key`` in PKCS#1 DER (what identifies it)."""
    return _private_pkcs1(key)


def _private_pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _public_pkcs1(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)


def _not_supported(block: KeyBlock, wanted: int) -> NoReturn:
    raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                    f"cannot return a {enum_label(KeyFormatType, block.key_format_type)} key as "
                    f"{enum_label(KeyFormatType, wanted)}")


def _transparent_private(key: rsa.RSAPrivateKey) -> Item:
    numbers = key.private_numbers()
    values = ((Tag.MODULUS, numbers.public_numbers.n),
              (Tag.PRIVATE_EXPONENT, numbers.d),
              (Tag.PUBLIC_EXPONENT, numbers.public_numbers.e),
              (Tag.P, numbers.p), (Tag.Q, numbers.q),
              (Tag.PRIME_EXPONENT_P, numbers.dmp1), (Tag.PRIME_EXPONENT_Q, numbers.dmq1),
              (Tag.CRT_COEFFICIENT, numbers.iqmp))
    return Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE,
                [Item(tag, ItemType.BIG_INTEGER, value) for tag, value in values])


def _big_integers(material: Item) -> dict[int, int]:
    return {child.tag: child.value for child in material.value  # type: ignore[union-attr]
            if child.type is ItemType.BIG_INTEGER}


def _load_der_or_pem(material: bytes, *, private: bool) -> object:
    pem = material.lstrip().startswith(b"-----")
    if private:
        loader = (serialization.load_pem_private_key if pem
                  else serialization.load_der_private_key)
        # Not validated here: :func:`_parse` bounds the cost first (see the module).
        return loader(material, password=None, unsafe_skip_rsa_key_validation=True)
    return (serialization.load_pem_public_key if pem
            else serialization.load_der_public_key)(material)


def _private_from_numbers(numbers: dict[int, int], *,
                          registering: bool) -> rsa.RSAPrivateKey:
    n, e, d = numbers[Tag.MODULUS], numbers[Tag.PUBLIC_EXPONENT], numbers[Tag.PRIVATE_EXPONENT]
    _check_public(n, e, registering=registering)  # before the factors are sought
    if not 0 < d < n:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        "the RSA private key's values do not agree with its modulus")
    p, q = numbers.get(Tag.P), numbers.get(Tag.Q)
    if (p is None or q is None) and registering:
        # Finding the factors from the exponents costs a modular exponentiation per try and
        # as many tries as the key's maker likes (primes of the form r * 2**2000 + 1 make
        # each try thousands of them): minutes of the writer thread for one Register.
        raise KmipError(ResultReason.INVALID_FIELD,
                        "a Transparent RSA Private Key must carry its primes P and Q")
    if p is None or q is None:  # (stored before Register required them)
        p, q = rsa.rsa_recover_prime_factors(n, e, d)
    elif not (1 < p < n and 1 < q < n and p * q == n):
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        "the RSA private key's values do not agree with its modulus")
    private = rsa.RSAPrivateNumbers(
        p, q, d, numbers.get(Tag.PRIME_EXPONENT_P) or rsa.rsa_crt_dmp1(d, p),
        numbers.get(Tag.PRIME_EXPONENT_Q) or rsa.rsa_crt_dmq1(d, q),
        numbers.get(Tag.CRT_COEFFICIENT) or rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n))
    _check_private(private, registering=registering)
    return private.private_key(unsafe_skip_rsa_key_validation=True)
