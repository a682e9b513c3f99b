"""Register and Get in the Key Format Types KMIP converts between, through kcm-core's request
handler, in process: RSA keys registered as PKCS#1, PKCS#8, X.509 or Transparent RSA are
used (Encrypt / Decrypt) and returned in each other format (symmetric keys' formats are in
test_core_objects.py)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.crypto.rsa_keys import load_private, load_public, rsa_key_block_in_format
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
)
from kcm.kmip.objects import KeyBlock, KeyValue
from kcm.kmip.payloads import DecryptRequest, EncryptRequest, GetRequest, RegisterRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness
from tests.integration.test_core_crypto import failed, ok, one

_F = KeyFormatType
PRIVATE_FORMATS = [_F.PKCS_1, _F.PKCS_8, _F.TRANSPARENT_RSA_PRIVATE_KEY]
PUBLIC_FORMATS = [_F.PKCS_1, _F.X_509, _F.TRANSPARENT_RSA_PUBLIC_KEY]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _block(key: rsa.RSAPrivateKey | rsa.RSAPublicKey, fmt: int) -> KeyBlock:
    private = isinstance(key, rsa.RSAPrivateKey)
    der = (key.private_bytes(serialization.Encoding.DER,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()) if private
           else key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1))
    block = KeyBlock(key_format_type=_F.PKCS_1, key_value=KeyValue(key_material=der),
                     cryptographic_algorithm=CryptographicAlgorithm.RSA,
                     cryptographic_length=2048)
    object_type = ObjectType.PRIVATE_KEY if private else ObjectType.PUBLIC_KEY
    return rsa_key_block_in_format(object_type, block, fmt)


def _register(core: CoreHarness, key: rsa.RSAPrivateKey | rsa.RSAPublicKey, fmt: int,
              mask: int) -> str:
    private = isinstance(key, rsa.RSAPrivateKey)
    tag, object_type = ((Tag.PRIVATE_KEY, ObjectType.PRIVATE_KEY) if private
                        else (Tag.PUBLIC_KEY, ObjectType.PUBLIC_KEY))
    managed_object = Item(tag, ItemType.STRUCTURE, [_block(key, fmt).to_item((2, 1))])
    return ok(one(core, Operation.REGISTER, RegisterRequest(
        object_type=object_type, object=managed_object, attributes=[
            Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(mask)),
            Attribute.of(Tag.ACTIVATION_DATE, int(time.time()) - 60)]))).unique_identifier


def _got_block(core: CoreHarness, uid: str, fmt: int) -> KeyBlock:
    answer = ok(one(core, Operation.GET, GetRequest(unique_identifier=uid, key_format_type=fmt)))
    return KeyBlock.from_item(answer.object.find(Tag.KEY_BLOCK))


@pytest.mark.parametrize("private_format", PRIVATE_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("public_format", PUBLIC_FORMATS, ids=lambda f: f.name)
def test_registered_rsa_keys_work_in_every_format(core: CoreHarness, rsa_key, private_format,
                                                  public_format) -> None:
    private_uid = _register(core, rsa_key, private_format, CryptographicUsageMask.DECRYPT)
    public_uid = _register(core, rsa_key.public_key(), public_format,
                           CryptographicUsageMask.ENCRYPT)
    sealed = ok(one(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=public_uid,
                                                            data=b"formats"))).data
    assert ok(one(core, Operation.DECRYPT, DecryptRequest(
        unique_identifier=private_uid, data=sealed))).data == b"formats"
    numbers = rsa_key.private_numbers()
    for fmt in PRIVATE_FORMATS:
        block = _got_block(core, private_uid, fmt)
        assert block.key_format_type == fmt
        assert load_private(block).private_numbers() == numbers
    for fmt in PUBLIC_FORMATS:
        block = _got_block(core, public_uid, fmt)
        assert block.key_format_type == fmt
        assert load_public(block).public_numbers() == numbers.public_numbers
    failed(one(core, Operation.GET, GetRequest(unique_identifier=public_uid,
                                               key_format_type=_F.PKCS_8)),
           ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED)
    failed(one(core, Operation.GET, GetRequest(unique_identifier=private_uid,
                                               key_format_type=_F.RAW)),
           ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED)
