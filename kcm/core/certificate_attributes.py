"""What a Register of an X.509 certificate says about it: the attributes KMIP derives from
the certificate (1.4 §3.9-§3.16; 2.1 §4 "Certificate Attributes").

* X.509 Certificate Identifier: a structure of the Issuer Distinguished Name (DER) and the
  Certificate Serial Number (the DER INTEGER, as the OASIS case TC-CERTATTR-1-14 gives it);
* X.509 Certificate Subject and Issuer: structures of the Subject (Issuer) Distinguished
  Name (DER) and, when the certificate has the extension, its Subject (Issuer) Alternative
  Name (the extension's DER value);
* Digital Signature Algorithm, when the certificate's is one the enumeration names;
* Cryptographic Algorithm and Length: those of its public key (RSA, DSA or EC);
* the 2.x name fields (Certificate Subject CN, Certificate Issuer O, ...), which a 1.x
  answer leaves out as every 2.x attribute.

The 1.0 attributes Certificate Identifier, Subject and Issuer (text, deprecated since 1.1
and gone in 2.0) are not set.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import CryptographicAlgorithm
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

__all__ = ["x509_attributes"]

# Certificate name fields as KMIP 2.x attributes (2.1 §4.9 "Certificate Attributes").
_NAME_FIELDS: tuple[tuple[Any, int, int], ...] = (
    (NameOID.COMMON_NAME, Tag.CERTIFICATE_SUBJECT_CN, Tag.CERTIFICATE_ISSUER_CN),
    (NameOID.ORGANIZATION_NAME, Tag.CERTIFICATE_SUBJECT_O, Tag.CERTIFICATE_ISSUER_O),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, Tag.CERTIFICATE_SUBJECT_OU, Tag.CERTIFICATE_ISSUER_OU),
    (NameOID.EMAIL_ADDRESS, Tag.CERTIFICATE_SUBJECT_EMAIL, Tag.CERTIFICATE_ISSUER_EMAIL),
    (NameOID.COUNTRY_NAME, Tag.CERTIFICATE_SUBJECT_C, Tag.CERTIFICATE_ISSUER_C),
    (NameOID.STATE_OR_PROVINCE_NAME, Tag.CERTIFICATE_SUBJECT_ST, Tag.CERTIFICATE_ISSUER_ST),
    (NameOID.LOCALITY_NAME, Tag.CERTIFICATE_SUBJECT_L, Tag.CERTIFICATE_ISSUER_L),
    (NameOID.USER_ID, Tag.CERTIFICATE_SUBJECT_UID, Tag.CERTIFICATE_ISSUER_UID),
    (NameOID.SERIAL_NUMBER, Tag.CERTIFICATE_SUBJECT_SERIAL_NUMBER,
     Tag.CERTIFICATE_ISSUER_SERIAL_NUMBER),
    (NameOID.TITLE, Tag.CERTIFICATE_SUBJECT_TITLE, Tag.CERTIFICATE_ISSUER_TITLE),
    (NameOID.DOMAIN_COMPONENT, Tag.CERTIFICATE_SUBJECT_DC, Tag.CERTIFICATE_ISSUER_DC),
    (NameOID.DN_QUALIFIER, Tag.CERTIFICATE_SUBJECT_DN_QUALIFIER,
     Tag.CERTIFICATE_ISSUER_DN_QUALIFIER),
)

#: KMIP's Digital Signature Algorithm enumeration (1.4 §9.1.3.2.7) by signature OID.
_SIGNATURE_ALGORITHMS = {
    SignatureAlgorithmOID.RSA_WITH_MD5: 0x02,
    SignatureAlgorithmOID.RSA_WITH_SHA1: 0x03,
    SignatureAlgorithmOID.RSA_WITH_SHA224: 0x04,
    SignatureAlgorithmOID.RSA_WITH_SHA256: 0x05,
    SignatureAlgorithmOID.RSA_WITH_SHA384: 0x06,
    SignatureAlgorithmOID.RSA_WITH_SHA512: 0x07,
    SignatureAlgorithmOID.RSASSA_PSS: 0x08,
    SignatureAlgorithmOID.DSA_WITH_SHA1: 0x09,
    SignatureAlgorithmOID.DSA_WITH_SHA224: 0x0A,
    SignatureAlgorithmOID.DSA_WITH_SHA256: 0x0B,
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: 0x0C,
    SignatureAlgorithmOID.ECDSA_WITH_SHA224: 0x0D,
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: 0x0E,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: 0x0F,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: 0x10,
    SignatureAlgorithmOID.RSA_WITH_SHA3_256: 0x11,
    SignatureAlgorithmOID.RSA_WITH_SHA3_384: 0x12,
    SignatureAlgorithmOID.RSA_WITH_SHA3_512: 0x13,
}


def x509_attributes(certificate: x509.Certificate) -> list[Attribute]:
    """The attributes KMIP derives from ``certificate`` (see the module's description)."""
    subject, issuer = certificate.subject, certificate.issuer
    attributes = [
        _structure(Tag.X_509_CERTIFICATE_IDENTIFIER,
                   (Tag.ISSUER_DISTINGUISHED_NAME, issuer.public_bytes()),
                   (Tag.CERTIFICATE_SERIAL_NUMBER, _der_integer(certificate.serial_number))),
        _structure(Tag.X_509_CERTIFICATE_SUBJECT,
                   (Tag.SUBJECT_DISTINGUISHED_NAME, subject.public_bytes()),
                   *_alternative_name(certificate, x509.SubjectAlternativeName,
                                      Tag.SUBJECT_ALTERNATIVE_NAME)),
        _structure(Tag.X_509_CERTIFICATE_ISSUER,
                   (Tag.ISSUER_DISTINGUISHED_NAME, issuer.public_bytes()),
                   *_alternative_name(certificate, x509.IssuerAlternativeName,
                                      Tag.ISSUER_ALTERNATIVE_NAME)),
    ]
    algorithm = _SIGNATURE_ALGORITHMS.get(certificate.signature_algorithm_oid)
    if algorithm is not None:
        attributes.append(Attribute.of(Tag.DIGITAL_SIGNATURE_ALGORITHM, algorithm,
                                       ItemType.ENUMERATION))
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None  # a key type not read here (ML-DSA, GOST, SM2...): not described
    kind = (CryptographicAlgorithm.RSA if isinstance(key, rsa.RSAPublicKey)
            else CryptographicAlgorithm.DSA if isinstance(key, dsa.DSAPublicKey)
            else CryptographicAlgorithm.EC if isinstance(key, ec.EllipticCurvePublicKey)
            else None)
    if kind is not None:
        attributes += [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, int(kind)),
                       Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, key.key_size)]  # type: ignore[union-attr]
    for oid, subject_tag, issuer_tag in _NAME_FIELDS:
        for name, tag in ((subject, subject_tag), (issuer, issuer_tag)):
            for entry in name.get_attributes_for_oid(oid):
                if isinstance(entry.value, str):
                    attributes.append(Attribute.of(tag, entry.value, ItemType.TEXT_STRING))
    return attributes


def _structure(tag: int, *fields: tuple[int, bytes]) -> Attribute:
    return Attribute(tag, Item(tag, ItemType.STRUCTURE, [
        Item(field, ItemType.BYTE_STRING, value) for field, value in fields]))


def _alternative_name(certificate: x509.Certificate, kind: type[x509.ExtensionType],
                      tag: int) -> list[tuple[int, bytes]]:
    try:
        extension = certificate.extensions.get_extension_for_class(kind)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
            ValueError):
        return []  # none, or not one read here: not described
    return [(tag, extension.value.public_bytes())]


def _der_integer(value: int) -> bytes:
    """``value`` as a DER INTEGER (tag, length, two's complement content)."""
    content = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    length = len(content)
    if length < 0x80:
        header = bytes([length])
    else:
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([0x80 | len(size)]) + size
    return b"\x02" + header + content
