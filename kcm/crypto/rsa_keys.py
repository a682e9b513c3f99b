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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.kmip.enums import KeyFormatType, ObjectType, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.objects import KeyBlock, KeyValue
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

__all__ = [
    "RSA_LENGTHS", "RsaKeyPair", "generate_key_pair", "load_private", "load_public",
    "rsa_key_block_in_format",
]

#: RSA modulus sizes in bits the server generates.
RSA_LENGTHS = frozenset({1024, 2048, 3072, 4096})
_PUBLIC_EXPONENT = 65537


@dataclass(frozen=True, slots=True)
class RsaKeyPair:
    """A fresh key pair, each key in PKCS#1 DER."""

    private_der: bytes
    public_der: bytes


def generate_key_pair(length: int) -> RsaKeyPair:
    """A new RSA key pair with a modulus of ``length`` bits (one of :data:`RSA_LENGTHS`)."""
    private_key = rsa.generate_private_key(public_exponent=_PUBLIC_EXPONENT, key_size=length)
    return RsaKeyPair(_private_pkcs1(private_key), _public_pkcs1(private_key.public_key()))


def rsa_key_block_in_format(object_type: int, block: KeyBlock, wanted: int) -> KeyBlock:
    """An RSA Public or Private Key's key block in Key Format Type ``wanted``.

    Public keys: PKCS#1, X.509 (SubjectPublicKeyInfo) and Transparent RSA Public Key;
    private keys: PKCS#1, PKCS#8 and Transparent RSA Private Key. Anything else, and
    a wrapped key block, is Key Format Type Not Supported.
    """
    if block.key_format_type == wanted:
        return block
    if block.key_wrapping_data is not None or not isinstance(block.key_value, KeyValue):
        raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        "a wrapped key cannot be converted")
    private = object_type == ObjectType.PRIVATE_KEY
    key = load_private(block) if private else load_public(block)
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
                   wire_order=None)


def load_private(block: KeyBlock) -> rsa.RSAPrivateKey | None:
    """The RSA private key in an unwrapped key block; None when the block holds no RSA
    private key in a format read here."""
    key = _load(block, private=True)
    return key if isinstance(key, rsa.RSAPrivateKey) else None


def load_public(block: KeyBlock) -> rsa.RSAPublicKey | None:
    """The RSA public key in an unwrapped key block; None when the block holds no RSA
    public key in a format read here."""
    key = _load(block, private=False)
    return key if isinstance(key, rsa.RSAPublicKey) else None


#: private? -> (the formats of DER or PEM bytes, the transparent format).
_READABLE = {
    True: ((KeyFormatType.PKCS_1, KeyFormatType.PKCS_8),
           KeyFormatType.TRANSPARENT_RSA_PRIVATE_KEY),
    False: ((KeyFormatType.PKCS_1, KeyFormatType.X_509),
            KeyFormatType.TRANSPARENT_RSA_PUBLIC_KEY),
}


def _load(block: KeyBlock, *, private: bool) -> object:
    material = block.key_value.key_material  # type: ignore[union-attr]
    fmt = block.key_format_type
    encoded, transparent = _READABLE[private]
    try:
        if isinstance(material, bytes) and fmt in encoded:
            return _load_der_or_pem(material, private=private)
        if isinstance(material, Item) and fmt == transparent:
            numbers = _big_integers(material)
            if private:
                return _private_from_numbers(numbers)
            return rsa.RSAPublicNumbers(numbers[Tag.PUBLIC_EXPONENT],
                                        numbers[Tag.MODULUS]).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm, KeyError):
        kind = "private" if private else "public"
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        f"the {kind} key material cannot be read") from None
    return None


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
        return loader(material, password=None)
    return (serialization.load_pem_public_key if pem
            else serialization.load_der_public_key)(material)


def _private_from_numbers(numbers: dict[int, int]) -> rsa.RSAPrivateKey:
    n, e, d = numbers[Tag.MODULUS], numbers[Tag.PUBLIC_EXPONENT], numbers[Tag.PRIVATE_EXPONENT]
    p, q = numbers.get(Tag.P), numbers.get(Tag.Q)
    if p is None or q is None:
        p, q = rsa.rsa_recover_prime_factors(n, e, d)
    return rsa.RSAPrivateNumbers(
        p, q, d, numbers.get(Tag.PRIME_EXPONENT_P) or rsa.rsa_crt_dmp1(d, p),
        numbers.get(Tag.PRIME_EXPONENT_Q) or rsa.rsa_crt_dmq1(d, q),
        numbers.get(Tag.CRT_COEFFICIENT) or rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n)).private_key()
