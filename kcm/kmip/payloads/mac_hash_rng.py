"""Payloads of MAC, MAC Verify, Hash, RNG Retrieve and RNG Seed
(KMIP 1.4 §4.33-§4.37; 2.1 §6.1.30, §6.1.31, §6.1.24, §6.1.47, §6.1.48)."""

from __future__ import annotations

from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import ValidityIndicator
from kcm.kmip.fields import Struct, fld, kmip_struct
from kcm.kmip.payloads._common import UID
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

_REQ = Tag.REQUEST_PAYLOAD
_RESP = Tag.RESPONSE_PAYLOAD
_BYTES = ItemType.BYTE_STRING
_BOOL = ItemType.BOOLEAN
_INT = ItemType.INTEGER


@kmip_struct(_REQ)
class MacRequest(Struct):
    """MAC: the key, how, and the data, possibly streamed."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    init_indicator: bool | None = fld(Tag.INIT_INDICATOR, _BOOL)
    final_indicator: bool | None = fld(Tag.FINAL_INDICATOR, _BOOL)


@kmip_struct(_RESP)
class MacResponse(Struct):
    """MAC response: the MAC (absent while a stream continues)."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    mac_data: bytes | None = fld(Tag.MAC_DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)


@kmip_struct(_REQ)
class MacVerifyRequest(Struct):
    """MAC Verify: the key, how, the data and the MAC to check."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    mac_data: bytes | None = fld(Tag.MAC_DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    init_indicator: bool | None = fld(Tag.INIT_INDICATOR, _BOOL)
    final_indicator: bool | None = fld(Tag.FINAL_INDICATOR, _BOOL)


@kmip_struct(_RESP)
class MacVerifyResponse(Struct):
    """MAC Verify response: Valid or Invalid (absent while a stream continues)."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    validity_indicator: ValidityIndicator | int | None = fld(Tag.VALIDITY_INDICATOR,
                                                             ValidityIndicator)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)


@kmip_struct(_REQ)
class HashRequest(Struct):
    """Hash: the Hashing Algorithm (in Cryptographic Parameters) and the data."""

    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    init_indicator: bool | None = fld(Tag.INIT_INDICATOR, _BOOL)
    final_indicator: bool | None = fld(Tag.FINAL_INDICATOR, _BOOL)


@kmip_struct(_RESP)
class HashResponse(Struct):
    """Hash response: the digest (absent while a stream continues)."""

    data: bytes | None = fld(Tag.DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)


@kmip_struct(_REQ)
class RngRetrieveRequest(Struct):
    """RNG Retrieve: how many random bytes."""

    data_length: int | None = fld(Tag.DATA_LENGTH, _INT)


@kmip_struct(_RESP)
class RngRetrieveResponse(Struct):
    """RNG Retrieve response: the random bytes."""

    data: bytes = fld(Tag.DATA, _BYTES, required=True, secret=True)


@kmip_struct(_REQ)
class RngSeedRequest(Struct):
    """RNG Seed: data to mix into the server's generator."""

    data: bytes | None = fld(Tag.DATA, _BYTES)


@kmip_struct(_RESP)
class RngSeedResponse(Struct):
    """RNG Seed response: how many of the bytes the server used."""

    data_length: int = fld(Tag.DATA_LENGTH, _INT, required=True)
