"""Payloads of Encrypt and Decrypt (KMIP 1.4 §4.29-4.30, 2.1 §6.1.18, §6.1.12)."""

from __future__ import annotations

from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.fields import Struct, fld, kmip_struct
from kcm.kmip.payloads._common import UID
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

_BYTES = ItemType.BYTE_STRING
_BOOL = ItemType.BOOLEAN


@kmip_struct(Tag.REQUEST_PAYLOAD)
class EncryptRequest(Struct):
    """Encrypt: key, parameters, data, IV and, for streaming/AEAD, the extra fields."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    data: bytes | None = fld(Tag.DATA, _BYTES, secret=True)
    iv_counter_nonce: bytes | None = fld(Tag.IV_COUNTER_NONCE, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    init_indicator: bool | None = fld(Tag.INIT_INDICATOR, _BOOL)
    final_indicator: bool | None = fld(Tag.FINAL_INDICATOR, _BOOL)
    authenticated_encryption_additional_data: bytes | None = fld(
        Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, _BYTES)


@kmip_struct(Tag.RESPONSE_PAYLOAD)
class EncryptResponse(Struct):
    """Encrypt response: ciphertext, the IV the server chose, AEAD tag."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    iv_counter_nonce: bytes | None = fld(Tag.IV_COUNTER_NONCE, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    authenticated_encryption_tag: bytes | None = fld(Tag.AUTHENTICATED_ENCRYPTION_TAG, _BYTES)


@kmip_struct(Tag.REQUEST_PAYLOAD)
class DecryptRequest(Struct):
    """Decrypt: as Encrypt, plus the AEAD tag to verify."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    iv_counter_nonce: bytes | None = fld(Tag.IV_COUNTER_NONCE, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    init_indicator: bool | None = fld(Tag.INIT_INDICATOR, _BOOL)
    final_indicator: bool | None = fld(Tag.FINAL_INDICATOR, _BOOL)
    authenticated_encryption_additional_data: bytes | None = fld(
        Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, _BYTES)
    authenticated_encryption_tag: bytes | None = fld(Tag.AUTHENTICATED_ENCRYPTION_TAG, _BYTES)


@kmip_struct(Tag.RESPONSE_PAYLOAD)
class DecryptResponse(Struct):
    """Decrypt response: the plaintext."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    data: bytes | None = fld(Tag.DATA, _BYTES, secret=True)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
