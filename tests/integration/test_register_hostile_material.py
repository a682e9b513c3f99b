"""Register of material made to slip past its checks: key material said to be RSA that
cannot be read is refused (not stored under the length the client states), and a
certificate whose extensions or key the reader refuses is stored undescribed, never a
General Failure."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kcm.kmip.enums import (
    CertificateType,
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.payloads import RegisterRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, core  # noqa: F401  (fixture)
from tests.integration.test_core_material_guards import WEAK_512_E3
from tests.integration.test_core_objects import V21, attributes_of, one


def _register(harness: CoreHarness, obj: Item, object_type: int):
    return one(harness, Operation.REGISTER, RegisterRequest(
        object_type=object_type, attributes=[], object=obj), version=V21)


def _key_block(tag: int, fmt: int, material: bytes, algorithm: int | None,
               length: int | None) -> Item:
    fields = [Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION, int(fmt)),
              Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [
                  Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, material)])]
    if algorithm is not None:
        fields.append(Item(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION, int(algorithm)))
    if length is not None:
        fields.append(Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, length))
    return Item(tag, ItemType.STRUCTURE, [Item(Tag.KEY_BLOCK, ItemType.STRUCTURE, fields)])


@pytest.mark.parametrize("tamper", [lambda der: der + b"\x00", lambda der: der[:-1]],
                         ids=["trailing-byte", "cut-short"])
def test_rsa_material_that_cannot_be_read_is_refused(core: CoreHarness,  # noqa: F811
                                                     tamper) -> None:
    # As sent, the 512-bit e=3 key said to be 4,096 bits is refused for its size; one
    # byte more or less made it unreadable, and it was stored as RSA-4096.
    item = _register(core, _key_block(Tag.PRIVATE_KEY, KeyFormatType.PKCS_1,
                                      tamper(WEAK_512_E3), CryptographicAlgorithm.RSA, 4096),
                     ObjectType.PRIVATE_KEY)
    assert item.result_status == ResultStatus.OPERATION_FAILED
    assert item.result_reason == ResultReason.CRYPTOGRAPHIC_FAILURE
    assert item.result_message == "the private key material cannot be read"


def test_unreadable_material_of_no_stated_algorithm_is_still_stored_as_sent(
        core: CoreHarness) -> None:  # noqa: F811
    item = _register(core, _key_block(Tag.PRIVATE_KEY, KeyFormatType.PKCS_8, b"\x30\x03abc",
                                      None, None), ObjectType.PRIVATE_KEY)
    assert item.result_status == ResultStatus.SUCCESS, item.result_message


def _certificate(extensions=()) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(datetime.datetime(2020, 1, 1))
               .not_valid_after(datetime.datetime(2030, 1, 1)))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _duplicate_extension() -> bytes:
    """A SAN and an IAN whose OID is made the SAN's: two SAN extensions."""
    return _certificate([x509.SubjectAlternativeName([x509.DNSName("a.example")]),
                         x509.IssuerAlternativeName([x509.DNSName("a.example")])]).replace(
        bytes.fromhex("0603551d12"), bytes.fromhex("0603551d11"))


def _unknown_key_algorithm() -> bytes:
    """The key's algorithm OID changed to one no reader here knows (as ML-DSA's is)."""
    return _certificate().replace(bytes.fromhex("2a864886f70d0101010500"),
                                  bytes.fromhex("2a864886f70d0101630500"), 1)


@pytest.mark.parametrize("der", [_duplicate_extension, _unknown_key_algorithm],
                         ids=["duplicate-extension", "unknown-key-algorithm"])
def test_a_certificate_the_reader_refuses_in_part_is_stored_undescribed(
        core: CoreHarness, der) -> None:  # noqa: F811
    item = _register(core, Item(Tag.CERTIFICATE, ItemType.STRUCTURE, [
        Item(Tag.CERTIFICATE_TYPE, ItemType.ENUMERATION, int(CertificateType.X_509)),
        Item(Tag.CERTIFICATE_VALUE, ItemType.BYTE_STRING, der())]), ObjectType.CERTIFICATE)
    assert item.result_status == ResultStatus.SUCCESS, item.result_message
    uid = item.response_payload.unique_identifier
    described = attributes_of(core, uid, Tag.CERTIFICATE_LENGTH, Tag.CRYPTOGRAPHIC_ALGORITHM)
    assert Tag.CERTIFICATE_LENGTH in described


# Key blocks that no Get could read back, and symmetric keys that are not what they say ----

_NO_FORMAT = [Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [
    Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, b"abc")])]
_NO_MATERIAL = [Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION, int(KeyFormatType.PKCS_8)),
                Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [])]


@pytest.mark.parametrize("fields", [_NO_FORMAT, _NO_MATERIAL], ids=["no-format", "no-material"])
@pytest.mark.parametrize(("tag", "object_type"), [
    (Tag.PRIVATE_KEY, ObjectType.PRIVATE_KEY), (Tag.PUBLIC_KEY, ObjectType.PUBLIC_KEY),
    (Tag.PGP_KEY, ObjectType.PGP_KEY)])
def test_a_key_block_no_get_could_read_is_refused(core: CoreHarness, fields,  # noqa: F811
                                                  tag: int, object_type: int) -> None:
    extra = ([Item(Tag.PGP_KEY_VERSION, ItemType.INTEGER, 4)]
             if object_type == ObjectType.PGP_KEY else [])
    item = _register(core, Item(tag, ItemType.STRUCTURE, [
        *extra, Item(Tag.KEY_BLOCK, ItemType.STRUCTURE, fields)]), object_type)
    assert item.result_status == ResultStatus.OPERATION_FAILED, "stored, and unreadable"
    assert item.result_reason in (ResultReason.INVALID_MESSAGE, ResultReason.INVALID_FIELD)


def _symmetric(fmt: int, value: Item, algorithm: int, length: int | None,
               wrapped: bool = False) -> Item:
    fields = [Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION, int(fmt)), value,
              Item(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION, int(algorithm))]
    if length is not None:
        fields.append(Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, length))
    return Item(Tag.SYMMETRIC_KEY, ItemType.STRUCTURE, [
        Item(Tag.KEY_BLOCK, ItemType.STRUCTURE, fields)])


def _raw_value(key: bytes) -> Item:
    return Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [
        Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, key)])


_A = CryptographicAlgorithm


@pytest.mark.parametrize(("obj", "why"), [
    (_symmetric(KeyFormatType.RAW, Item(Tag.KEY_VALUE, ItemType.BYTE_STRING, bytes(16)),
                _A.AES, 128), "Byte String only when the key is wrapped"),
    (_symmetric(KeyFormatType.RAW, Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [
        Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
            Item(Tag.KEY, ItemType.BYTE_STRING, bytes(16))])]), _A.AES, 128),
     "does not match the Key Material's form"),
    (_symmetric(KeyFormatType.TRANSPARENT_SYMMETRIC_KEY, _raw_value(bytes(16)), _A.AES, 128),
     "does not match the Key Material's form"),
    (_symmetric(KeyFormatType.RAW, _raw_value(bytes(32)), _A.HMAC_SHA256, 8),
     "Cryptographic Length 8 does not match the 256-bit key"),
    (_symmetric(KeyFormatType.RAW, _raw_value(bytes(16)), _A.CHACHA20, 256),
     "Cryptographic Length 256 does not match the 128-bit key"),
    (_symmetric(KeyFormatType.RAW, _raw_value(bytes(8)), _A.DES3, 64),
     "a DES3 key is 16 or 24 bytes, not 8"),
    (_symmetric(KeyFormatType.RAW, _raw_value(b""), _A.AES, None), "the key material is empty"),
], ids=["unwrapped-byte-string", "raw-holding-transparent", "transparent-holding-bytes",
        "hmac-length", "chacha-length", "single-des", "empty"])
def test_a_symmetric_key_that_is_not_what_it_says_is_refused(core: CoreHarness,  # noqa: F811
                                                            obj: Item, why: str) -> None:
    item = _register(core, obj, ObjectType.SYMMETRIC_KEY)
    assert (item.result_reason, item.result_message) == (ResultReason.INVALID_FIELD, why) or (
        item.result_reason == ResultReason.INVALID_FIELD and why in item.result_message)


@pytest.mark.parametrize("length", [168, 192, None])
def test_a_three_key_des3_key_may_say_168_or_192_bits(core: CoreHarness,  # noqa: F811
                                                      length: int | None) -> None:
    item = _register(core, _symmetric(KeyFormatType.RAW, _raw_value(bytes(range(24))),
                                      _A.DES3, length), ObjectType.SYMMETRIC_KEY)
    assert item.result_status == ResultStatus.SUCCESS, item.result_message


def test_a_des3_key_of_8_bytes_already_stored_encrypts_nothing() -> None:
    from kcm.crypto.symmetric import encrypt_once, resolve_spec
    from kcm.kmip.errors import KmipError
    spec = resolve_spec(_A.DES3, None, None)
    with pytest.raises(KmipError) as refused:
        encrypt_once(spec, bytes(8), bytes(8), b"data", None)
    assert refused.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE


@pytest.mark.parametrize(("length", "refused"), [(64, True), (128, False), (192, False)])
def test_a_derived_des3_key_is_two_or_three_des_keys(core: CoreHarness,  # noqa: F811
                                                     length: int, refused: bool) -> None:
    from kcm.kmip.attributes import CryptographicParameters
    from kcm.kmip.enums import DerivationMethod, HashingAlgorithm
    from kcm.kmip.payloads import DerivationParameters
    from tests.integration.test_core_asymmetric import derive, put, secret
    password = put(core, secret(b"password"), ObjectType.SECRET_DATA)
    [item] = derive(core, ObjectType.SYMMETRIC_KEY, [password], DerivationMethod.PBKDF2,
                    DerivationParameters(cryptographic_parameters=CryptographicParameters(
                        hashing_algorithm=HashingAlgorithm.SHA_256), salt=b"salt",
                        iteration_count=1000), length, _A.DES3)
    if refused:
        assert item.result_reason == ResultReason.INVALID_FIELD
        assert item.result_message == "a derived DES3 key cannot be 64 bits"
    else:
        assert item.result_status == ResultStatus.SUCCESS, item.result_message


@pytest.mark.parametrize("modulus", [(1 << 2047) | (1 << 100) | 2,  # even
                                     997 * ((1 << 2040) + 1)])  # odd, a multiple of 997
def test_an_rsa_modulus_with_a_small_factor_is_refused(core: CoreHarness,  # noqa: F811
                                                       modulus: int) -> None:
    material = Item(Tag.KEY_MATERIAL, ItemType.STRUCTURE, [
        Item(Tag.MODULUS, ItemType.BIG_INTEGER, modulus),
        Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, 65537)])
    item = _register(core, Item(Tag.PUBLIC_KEY, ItemType.STRUCTURE, [
        Item(Tag.KEY_BLOCK, ItemType.STRUCTURE, [
            Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION,
                 int(KeyFormatType.TRANSPARENT_RSA_PUBLIC_KEY)),
            Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [material]),
            Item(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION, int(_A.RSA)),
            Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, modulus.bit_length())])]),
        ObjectType.PUBLIC_KEY)
    assert item.result_reason == ResultReason.INVALID_FIELD
    assert "small factor" in item.result_message


def test_a_wrapped_key_whose_mac_cannot_be_checked_is_not_unwrapped(
        core: CoreHarness) -> None:  # noqa: F811
    from cryptography.hazmat.primitives import keywrap

    from kcm.kmip.enums import EncodingOption, KeyWrapType, WrappingMethod
    from kcm.kmip.objects import (
        EncryptionKeyInformation,
        KeyBlock,
        KeyValue,
        KeyWrappingData,
        SymmetricKey,
    )
    from kcm.kmip.payloads import GetRequest
    from tests.integration.test_core_objects import KEK, PAST, WRAP_MASK, aes_key, register
    kek = register(core, aes_key(KEK), [WRAP_MASK, PAST])
    wrapped = SymmetricKey(key_block=KeyBlock(
        key_format_type=KeyFormatType.RAW,
        key_value=KeyValue(key_material=keywrap.aes_key_wrap(KEK, b"A" * 16)),
        cryptographic_algorithm=_A.AES, cryptographic_length=128,
        key_wrapping_data=KeyWrappingData(
            wrapping_method=WrappingMethod.ENCRYPT,
            encryption_key_information=EncryptionKeyInformation(unique_identifier=kek),
            mac_signature=bytes(32), encoding_option=EncodingOption.NO_ENCODING)))
    uid = register(core, wrapped)
    got = one(core, Operation.GET, GetRequest(unique_identifier=uid,
                                              key_wrap_type=KeyWrapType.NOT_WRAPPED))
    assert got.result_reason == ResultReason.FEATURE_NOT_SUPPORTED


def test_an_rsa_key_registered_without_its_algorithm_is_described_and_usable(
        core: CoreHarness) -> None:  # noqa: F811
    """KMIP 1.4 §2.1.3: the Cryptographic Algorithm may be left out when the Key Value
    says it. Register read the key as RSA-2048 and stored no algorithm: no Sign, no
    conversion, no Locate by algorithm could use it."""
    from kcm.kmip.attributes import Attribute
    from kcm.kmip.enums import CryptographicUsageMask
    from kcm.kmip.payloads import GetRequest, SignRequest
    from tests.integration.test_core_objects import PAST

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(serialization.Encoding.DER,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    item = one(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.PRIVATE_KEY,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                                 int(CryptographicUsageMask.SIGN)), PAST],
        object=_key_block(Tag.PRIVATE_KEY, KeyFormatType.PKCS_1, der, None, None)),
        version=V21)
    assert item.result_status == ResultStatus.SUCCESS, item.result_message
    uid = item.response_payload.unique_identifier
    assert attributes_of(core, uid, Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH) == {
        Tag.CRYPTOGRAPHIC_ALGORITHM: [_A.RSA], Tag.CRYPTOGRAPHIC_LENGTH: [2048]}
    signed = one(core, Operation.SIGN, SignRequest(unique_identifier=uid, data=b"x"))
    assert signed.result_status == ResultStatus.SUCCESS, signed.result_message
    converted = one(core, Operation.GET, GetRequest(unique_identifier=uid,
                                                    key_format_type=KeyFormatType.PKCS_8))
    assert converted.result_status == ResultStatus.SUCCESS, converted.result_message


@pytest.mark.parametrize(("algorithm", "size", "length"), [
    (_A.DES3, 16, 112), (_A.DES3, 16, 128), (_A.DES3, 24, 168), (_A.DES, 8, 56),
    (_A.DES, 8, 64)])
def test_des_keys_may_state_their_length_without_parity_bits(
        core: CoreHarness, algorithm: int, size: int, length: int) -> None:  # noqa: F811
    item = _register(core, _symmetric(KeyFormatType.RAW, _raw_value(bytes(range(size))),
                                      algorithm, length), ObjectType.SYMMETRIC_KEY)
    assert item.result_status == ResultStatus.SUCCESS, item.result_message


def test_well_formed_rsa_material_no_parser_here_reads_is_still_stored(
        core: CoreHarness) -> None:  # noqa: F811
    """An encrypted PKCS#8 RSA key (what `openssl pkcs8 -topk8 -v2 aes-256-cbc` makes) is
    well-formed DER: stored as sent, as before; only malformed material is refused."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sealed = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.BestAvailableEncryption(b"pass phrase"))
    item = _register(core, _key_block(Tag.PRIVATE_KEY, KeyFormatType.PKCS_8, sealed, _A.RSA,
                                      2048), ObjectType.PRIVATE_KEY)
    assert item.result_status == ResultStatus.SUCCESS, item.result_message
