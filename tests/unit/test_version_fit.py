"""Each protocol version answered in its own words: what each version defines
(kcm.kmip.registry, from the spec tables and their 1.x history), the one filter that
drops the rest from answers (kcm.kernel.version_fit), and where an AEAD tag travels
before KMIP 1.4 (kcm.kernel.aead_tag)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm.kernel import aead_tag, version_fit
from kcm.kernel.responses import encode_items
from kcm.kernel.result_reasons import reason_in
from kcm.kernel.versions import SUPPORTED_VERSIONS
from kcm.kmip import registry
from kcm.kmip.attributes import Attribute, attribute_to_item
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicUsageMask,
    LinkType,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    State,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import ResponseBatchItem
from kcm.kmip.payloads import EncryptResponse, QueryResponse
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode_item

V10, V11, V12, V13, V14, V20, V21 = (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1)


@pytest.mark.parametrize(("value", "first"), [
    (Operation.CREATE, V10), (Operation.DISCOVER_VERSIONS, V11), (Operation.ENCRYPT, V12),
    (Operation.SIGNATURE_VERIFY, V12), (Operation.EXPORT, V14), (Operation.LOG, V20),
])
def test_operations_exist_from_the_version_that_added_them(value: int, first: tuple) -> None:
    for version in SUPPORTED_VERSIONS:
        assert registry.defines_value(Tag.OPERATION, value, version) == (version >= first)


@pytest.mark.parametrize(("name", "first"), [
    ("Name", V10), ("Fresh", V11), ("Original Creation Date", V12),
    ("Random Number Generator", V13), ("Sensitive", V14), ("Extractable", V14),
])
def test_attributes_exist_from_the_version_that_added_them(name: str, first: tuple) -> None:
    tag = registry.attribute_tag(name)
    for version in SUPPORTED_VERSIONS:
        assert registry.is_attribute(tag, version) == (version >= first), version


def test_key_format_type_is_an_attribute_only_from_2_0() -> None:
    assert [registry.is_attribute(Tag.KEY_FORMAT_TYPE, v) for v in (V10, V14, V20, V21)] \
        == [False, False, True, True]


def test_tags_and_values_of_each_1x_version() -> None:
    assert not registry.defines_tag(Tag.AUTHENTICATED_ENCRYPTION_TAG, V13)
    assert registry.defines_tag(Tag.AUTHENTICATED_ENCRYPTION_TAG, V14)
    assert not registry.defines_tag(Tag.LOCATED_ITEMS, V12)
    assert registry.defines_tag(Tag.LOCATED_ITEMS, V13)
    assert not registry.defines_value(Tag.OBJECT_TYPE, ObjectType.PGP_KEY, V11)
    assert registry.defines_value(Tag.OBJECT_TYPE, ObjectType.SPLIT_KEY, V10)
    assert not registry.defines_value(Tag.QUERY_FUNCTION, QueryFunction.QUERY_PROFILES, V12)
    assert registry.defines_value(Tag.QUERY_FUNCTION, QueryFunction.QUERY_PROFILES, V13)
    assert not registry.defines_value(Tag.LINK_TYPE, LinkType.PARENT_LINK, V11)
    assert not registry.defines_value(Tag.BLOCK_CIPHER_MODE, BlockCipherMode.AEAD, V13)
    assert registry.defines_value(Tag.BLOCK_CIPHER_MODE, BlockCipherMode.GCM, V10)
    assert registry.defines_value(Tag.OPERATION, 0x80000001, V10)  # extensions


#: Every Result Reason kcm raises (grep ResultReason\. kcm/).
_RAISED = (
    "INVALID_FIELD", "GENERAL_FAILURE", "INVALID_MESSAGE", "PERMISSION_DENIED",
    "CRYPTOGRAPHIC_FAILURE", "FEATURE_NOT_SUPPORTED", "KEY_FORMAT_TYPE_NOT_SUPPORTED",
    "ITEM_NOT_FOUND", "OPERATION_NOT_SUPPORTED", "OBJECT_NOT_FOUND", "KEY_VALUE_NOT_PRESENT",
    "RESPONSE_TOO_LARGE", "INVALID_OBJECT_TYPE", "ATTRIBUTE_NOT_FOUND",
    "WRONG_KEY_LIFECYCLE_STATE", "MULTI_VALUED_ATTRIBUTE", "MISSING_DATA",
    "INVALID_DATA_TYPE", "INVALID_CORRELATION_VALUE", "ILLEGAL_OPERATION",
    "UNSUPPORTED_PROTOCOL_VERSION", "OBJECT_DESTROYED", "KEY_COMPRESSION_TYPE_NOT_SUPPORTED",
    "ENCODING_OPTION_ERROR", "ATTRIBUTE_SINGLE_VALUED", "WRAPPING_OBJECT_NOT_FOUND",
    "WRAPPING_OBJECT_DESTROYED", "USAGE_LIMIT_EXCEEDED", "UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS",
    "SERVER_LIMIT_EXCEEDED", "SENSITIVE", "NUMERIC_RANGE", "NOT_EXTRACTABLE",
    "NON_UNIQUE_NAME_ATTRIBUTE", "INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK", "ATTRIBUTE_READ_ONLY",
    "ATTRIBUTE_INSTANCE_NOT_FOUND",
)


@pytest.mark.parametrize("name", _RAISED)
def test_every_result_reason_the_server_gives_is_said_in_words_of_each_version(name) -> None:
    for version in SUPPORTED_VERSIONS:
        if name == "ILLEGAL_OPERATION" and version >= V20:
            continue  # raised only as a KmipError's 1.x reason (v1_reason)
        said = reason_in(version, ResultReason[name])
        assert registry.defines_value(Tag.RESULT_REASON, said, version), version


def _get_attributes_item(version: tuple, *attributes: Attribute) -> ResponseBatchItem:
    payload = Item(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE, [
        Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, "1"),
        *[x for x in (attribute_to_item(a, version) for a in attributes) if x is not None]])
    return ResponseBatchItem(operation=Operation.GET_ATTRIBUTES,
                             result_status=ResultStatus.SUCCESS, response_payload=payload)


def _names(raw: bytes) -> list[str]:
    item = decode_item(raw)[0]
    payload = next(c for c in item.value if c.tag == Tag.RESPONSE_PAYLOAD)
    return [next(x.value for x in c.value if x.tag == Tag.ATTRIBUTE_NAME)
            for c in payload.value if c.tag == Tag.ATTRIBUTE]


def test_get_attributes_at_1x_carries_only_that_versions_attributes() -> None:
    attributes = [Attribute.of(Tag.STATE, State.ACTIVE), Attribute.of(Tag.FRESH, True),
                  Attribute.of(Tag.SENSITIVE, False), Attribute.of(Tag.KEY_FORMAT_TYPE, 1),
                  Attribute.vendor("x", "Colour", Item(Tag.ATTRIBUTE_VALUE,
                                                        ItemType.TEXT_STRING, "blue"))]
    got = {v: _names(encode_items([_get_attributes_item(v, *attributes)], v)[0])
           for v in (V10, V11, V14)}
    assert got == {V10: ["State", "x-Colour"], V11: ["State", "Fresh", "x-Colour"],
                   V14: ["State", "Fresh", "Sensitive", "x-Colour"]}


def test_query_at_1_0_lists_only_1_0_operations() -> None:
    response = QueryResponse(operations=[Operation.CREATE, Operation.DISCOVER_VERSIONS,
                                         Operation.ENCRYPT, Operation.QUERY],
                             object_types=[ObjectType.SYMMETRIC_KEY, ObjectType.PGP_KEY])
    item = ResponseBatchItem(operation=Operation.QUERY, result_status=ResultStatus.SUCCESS,
                             response_payload=response)
    raw = encode_items([item], V10)[0]
    payload = next(c for c in decode_item(raw)[0].value if c.tag == Tag.RESPONSE_PAYLOAD)
    assert [c.value for c in payload.value if c.tag == Tag.OPERATION] \
        == [Operation.CREATE, Operation.QUERY]
    assert [c.value for c in payload.value if c.tag == Tag.OBJECT_TYPE] \
        == [ObjectType.SYMMETRIC_KEY]


def test_a_mask_keeps_only_the_bits_its_version_names() -> None:
    item = Item(Tag.CRYPTOGRAPHIC_USAGE_MASK, ItemType.INTEGER,
                CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.AUTHENTICATE)
    payload = Item(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE, [item])
    assert version_fit.fit(payload, V14).value[0].value == CryptographicUsageMask.ENCRYPT
    assert version_fit.fit(payload, V21) is payload


def test_faults_name_what_does_not_fit_and_fit_answers_have_none() -> None:
    response = EncryptResponse(unique_identifier="1", data=b"c",
                               authenticated_encryption_tag=b"t" * 16)
    item = ResponseBatchItem(operation=Operation.ENCRYPT, result_status=ResultStatus.SUCCESS,
                             response_payload=response).to_item(V12)
    assert version_fit.faults(item, V12) == [f"tag 0x{Tag.AUTHENTICATED_ENCRYPTION_TAG:06X}"]
    assert version_fit.faults(version_fit.fit(item, V12), V12) == []
    assert version_fit.faults(item, V14) == []


def test_the_strict_check_refuses_an_unfitted_answer() -> None:
    from kcm.kernel.responses import _check_fits
    from kcm.ttlv import encode
    response = EncryptResponse(unique_identifier="1", data=b"c",
                               authenticated_encryption_tag=b"t" * 16)
    raw = encode(ResponseBatchItem(operation=Operation.ENCRYPT,
                                   result_status=ResultStatus.SUCCESS,
                                   response_payload=response).to_item(V12))
    with pytest.raises(AssertionError, match="does not define"):
        _check_fits(V12, [raw])


def test_the_aead_tag_ends_data_before_1_4() -> None:
    assert aead_tag.answer_data(V13, b"cipher", b"T" * 16) == (b"cipher" + b"T" * 16, None)
    assert aead_tag.answer_data(V14, b"cipher", b"T" * 16) == (b"cipher", b"T" * 16)
    assert aead_tag.request_data(V12, b"cipher" + b"T" * 12, None, 12) == (b"cipher", b"T" * 12)
    assert aead_tag.request_data(V14, b"cipher", b"T" * 16, 16) == (b"cipher", b"T" * 16)


def test_a_data_shorter_than_the_tag_before_1_4_fails_as_an_unverifiable_one() -> None:
    """(It was Invalid Message, the tag missing, where a wrong tag is Cryptographic Failure.)"""
    from kcm.crypto.symmetric import AES_GCM_DEFAULT, decrypt_once

    ciphertext, tag = aead_tag.request_data(V12, b"short", None, 16)
    assert (ciphertext, tag) == (b"", b"short")
    with pytest.raises(KmipError) as refused:
        decrypt_once(AES_GCM_DEFAULT, bytes(32), bytes(12), ciphertext, None, tag)
    assert refused.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE


def test_an_operation_its_version_does_not_define_is_not_supported_saying_since_when() -> None:
    with pytest.raises(KmipError) as refused:
        version_fit.check_operation(V11, Operation.ENCRYPT)
    assert refused.value.reason == ResultReason.OPERATION_NOT_SUPPORTED
    assert refused.value.message == "Encrypt is an operation of KMIP 1.2 and later, not of KMIP 1.1"
    version_fit.check_operation(V12, Operation.ENCRYPT)
    version_fit.check_operation(V10, Operation.DISCOVER_VERSIONS)  # how a client finds out


def test_the_batch_runner_refuses_it_before_the_executor() -> None:
    from kcm.kernel.batch import run_batch
    from kcm.kmip.messages import RequestBatchItem
    from kcm.kmip.payloads import EncryptRequest

    ran = []
    run = run_batch([RequestBatchItem(operation=Operation.ENCRYPT,
                                      request_payload=EncryptRequest(data=b"x"))],
                    lambda item, placeholder: ran.append(item), version=V10,
                    continuation=1, correlation_id="c")
    assert ran == [] and run.items[0].result_reason == ResultReason.OPERATION_NOT_SUPPORTED


_POOL = [Attribute.of(Tag.STATE, State.ACTIVE), Attribute.of(Tag.FRESH, True),
         Attribute.of(Tag.SENSITIVE, False), Attribute.of(Tag.KEY_FORMAT_TYPE, 1),
         Attribute.of(Tag.ORIGINAL_CREATION_DATE, 1_700_000_000),
         Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 0xFFFFFF),
         Attribute.of(Tag.OBJECT_TYPE, ObjectType.PGP_KEY),
         Attribute.of(Tag.SHORT_UNIQUE_IDENTIFIER, b"\x01" * 32, ItemType.BYTE_STRING)]


@given(st.lists(st.sampled_from(_POOL), max_size=8),
       st.lists(st.sampled_from(list(Operation)), max_size=10),
       st.sampled_from(SUPPORTED_VERSIONS))
def test_whatever_an_answer_holds_its_fitted_form_has_no_faults(attributes, operations,
                                                                  version) -> None:
    """A property of the one filter: after it, nothing is left that the version does not
    define, and a second pass changes nothing."""
    item = _get_attributes_item(version, *attributes).to_item(version)
    query = ResponseBatchItem(operation=Operation.QUERY, result_status=ResultStatus.SUCCESS,
                              response_payload=QueryResponse(operations=operations)
                              ).to_item(version)
    for answer in (item, query):
        fitted = version_fit.fit(answer, version)
        assert version_fit.faults(fitted, version) == []
        assert version_fit.fit(fitted, version) is fitted


@pytest.mark.parametrize("version", [V10, V11, V12, V13, V14, V20])
def test_the_1x_attribute_history_agrees_with_pykmips_independent_tables(version) -> None:
    """PyKMIP lists the attributes of each version itself (kmip.core.enums.is_attribute):
    an independent reading of KMIP 1.0-2.0 §3 (2.x §4). Every 1.x attribute it names is one
    here in that version and none other; in 2.0 every one of its attributes is a 2.0 tag."""
    from kmip.core import enums as pykmip

    kmip_version = pykmip.KMIPVersion[f"KMIP_{version[0]}_{version[1]}"]
    for tag in pykmip.Tags:
        if tag is pykmip.Tags.DEFAULT or tag.value > 0x54FFFF:
            continue
        theirs = pykmip.is_attribute(tag, kmip_version)
        if version < V20:
            assert registry.is_attribute(tag.value, version) == theirs, (tag, version)
        elif theirs:
            assert registry.is_attribute(tag.value, version), tag
