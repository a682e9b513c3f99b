"""kcm-core reads plain requests and writes their answers without the message tree
(kcm.kernel.plain_messages): what it reads equals what the general decoder reads, and what
it writes equals what the general encoder writes, over generated requests and answers; and
it does read and write them (the equalities are not vacuous)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kcm.core.config import CoreLimits
from kcm.core.request_handler import _encoded, _plain_request
from kcm.kernel.plain_messages import (
    READABLE_VERSIONS,
    read_create_payload,
    read_discover_versions,
    read_get_attributes,
    read_request,
    read_request_python,
    response_item,
)
from kcm.kernel.responses import encode_items
from kcm.kmip.attributes import (
    VENDOR_TAG,
    Attribute,
    AttributeReference,
    CryptographicParameters,
    Link,
    Name,
)
from kcm.kmip.enums import (
    AsynchronousIndicator,
    BlockCipherMode,
    CryptographicAlgorithm,
    KeyFormatType,
    LinkType,
    NameType,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    State,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    decode_request,
    encode_request,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.payloads import (
    CreateRequest,
    CreateResponse,
    DecryptRequest,
    DecryptResponse,
    DiscoverVersionsRequest,
    DiscoverVersionsResponse,
    EncryptRequest,
    EncryptResponse,
    GetAttributeListRequest,
    GetAttributesRequest,
    GetAttributesResponse,
    GetRequest,
    GetResponse,
    QueryRequest,
)
from kcm.kmip.protocol_version import ProtocolVersion
from kcm.kmip.tags import Tag
from kcm.testing.requests import item, request
from kcm.ttlv import Item, ItemType, decode, encode

LIMITS = CoreLimits()
VERSIONS = st.sampled_from([(1, 2), (1, 3), (1, 4), (2, 0), (2, 1)])
binary = st.binary(max_size=80)
uids = st.sampled_from(["6f1d0c8a-5b7e-4a8e-9a3c-2f4b6d8e0a1c", "k", "l4.1.AAAA", "é"])
batch_ids = st.one_of(st.none(), st.binary(min_size=1, max_size=9))
parameters = st.one_of(st.none(), st.builds(
    CryptographicParameters,
    block_cipher_mode=st.sampled_from([None, BlockCipherMode.GCM, BlockCipherMode.CBC]),
    cryptographic_algorithm=st.sampled_from([None, CryptographicAlgorithm.AES]),
    tag_length=st.sampled_from([None, 16])))
encrypts = st.builds(lambda u, p, d, iv, aad, b: item(Operation.ENCRYPT, EncryptRequest(
    unique_identifier=u, cryptographic_parameters=p, data=d, iv_counter_nonce=iv,
    authenticated_encryption_additional_data=aad), b),
    uids, parameters, st.one_of(st.none(), binary),
    st.one_of(st.none(), st.binary(min_size=12, max_size=16)),
    st.one_of(st.none(), binary), batch_ids)
decrypts = st.builds(lambda u, p, d, iv, aad, tag, b: item(Operation.DECRYPT, DecryptRequest(
    unique_identifier=u, cryptographic_parameters=p, data=d, iv_counter_nonce=iv,
    authenticated_encryption_additional_data=aad, authenticated_encryption_tag=tag), b),
    uids, parameters, binary, st.one_of(st.none(), st.binary(min_size=12, max_size=12)),
    st.one_of(st.none(), binary), st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
    batch_ids)
gets = st.builds(lambda u, f, b: item(Operation.GET, GetRequest(
    unique_identifier=u, key_format_type=f), b),
    uids, st.sampled_from([None, KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY]),
    batch_ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(encrypts, decrypts, gets), min_size=1, max_size=3), VERSIONS,
       st.one_of(st.none(), st.integers(1, 1 << 20)))
def test_a_plain_request_reads_as_the_general_decoder_reads_it(
        items: list, version: tuple[int, int], maximum_response_size: int | None) -> None:
    wire = request(*items, version=version, maximum_response_size=maximum_response_size)
    plain = _plain_request(wire, LIMITS)
    assert plain is not None
    assert plain == decode_request(decode(wire))


@given(st.binary(max_size=300))
def test_bytes_that_are_not_a_plain_request_are_left_to_the_general_decoder(
        wire: bytes) -> None:
    assert _plain_request(wire, LIMITS) is None


def test_what_the_general_decoder_alone_reads_is_left_to_it() -> None:
    encrypt = item(Operation.ENCRYPT, EncryptRequest(unique_identifier="k", data=b"x"))
    for wire in (request(encrypt, version=(1, 1)),  # not a plain version
                 request(encrypt, continuation=1),  # a header field it does not read
                 request(item(Operation.ENCRYPT, EncryptRequest(data=b"x")))):  # placeholder
        assert _plain_request(wire, LIMITS) is None
    many = request(*[encrypt] * 3)
    assert _plain_request(many, CoreLimits(max_batch_items=2)) is None


def test_what_the_general_decoder_refuses_in_the_header_or_an_item_is_left_to_it() -> None:
    """A critical Message Extension, an undefined Batch Error Continuation Option, an
    Asynchronous Indicator of either type: never read here, whichever reader runs (the
    compiled scan where it is built, and the Python one)."""
    extension = Item(Tag.MESSAGE_EXTENSION, ItemType.STRUCTURE, [
        Item(Tag.VENDOR_IDENTIFICATION, ItemType.TEXT_STRING, "acme"),
        Item(Tag.CRITICALITY_INDICATOR, ItemType.BOOLEAN, True),
        Item(Tag.VENDOR_EXTENSION, ItemType.STRUCTURE, [])])
    readers = {Operation.ENCRYPT: (read_request, read_request_python),
               Operation.DISCOVER_VERSIONS: (read_discover_versions,),
               Operation.GET_ATTRIBUTES: (read_get_attributes,)}
    plain = [item(Operation.ENCRYPT, EncryptRequest(unique_identifier="k", data=b"x")),
             item(Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest()),
             item(Operation.GET_ATTRIBUTES, GetAttributesRequest(unique_identifier="k"))]
    for version in ((1, 4), (2, 0), (2, 1)):
        for one in plain:
            wires = [request(RequestBatchItem(operation=one.operation,
                                              request_payload=one.request_payload,
                                              message_extensions=[extension]),
                             version=version)]
            for fields in ({"batch_error_continuation_option": 9},
                           {"asynchronous_indicator": True},
                           {"asynchronous_indicator": int(AsynchronousIndicator.MANDATORY)}):
                header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                                       batch_count=1, **fields)
                wires.append(encode(encode_request(RequestMessage(header, [one]))))
            for reader in readers[one.operation]:
                # Read plainly without them: the declines below are not vacuous.
                assert _plain_request(request(one, version=version), LIMITS, reader)
                for wire in wires:
                    assert _plain_request(wire, LIMITS, reader) is None


def _key(material: bytes) -> SymmetricKey:
    return SymmetricKey(key_block=KeyBlock(
        key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=material),
        cryptographic_algorithm=CryptographicAlgorithm.AES,
        cryptographic_length=len(material) * 8))


payloads = st.one_of(
    st.builds(lambda u, d, iv, tag: (Operation.ENCRYPT, EncryptResponse(
        unique_identifier=u, data=d, iv_counter_nonce=iv, authenticated_encryption_tag=tag)),
        uids, st.one_of(st.none(), binary), st.one_of(st.none(), binary),
        st.one_of(st.none(), st.binary(min_size=16, max_size=16))),
    st.builds(lambda u, d: (Operation.DECRYPT, DecryptResponse(unique_identifier=u, data=d)),
              uids, st.one_of(st.none(), binary)),
    st.builds(lambda u, k: (Operation.GET, GetResponse(
        object_type=ObjectType.SYMMETRIC_KEY, unique_identifier=u, object=_key(k))),
        uids, st.sampled_from([bytes(16), bytes(range(32))])),
    st.builds(lambda u: (Operation.CREATE, CreateResponse(
        object_type=ObjectType.SYMMETRIC_KEY, unique_identifier=u)), uids))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(payloads, batch_ids), min_size=1, max_size=3), VERSIONS)
def test_a_plain_answer_is_written_as_the_general_encoder_writes_it(
        answers: list, version: tuple[int, int]) -> None:
    if version < (1, 4):  # (a tag is no field there: see the next test)
        answers = [((operation, payload), batch_id) for (operation, payload), batch_id
                   in answers if getattr(payload, "authenticated_encryption_tag", None) is None]
        if not answers:
            return
    items = [ResponseBatchItem(operation=operation, unique_batch_item_id=batch_id,
                               result_status=ResultStatus.SUCCESS, response_payload=payload)
             for (operation, payload), batch_id in answers]
    written = [response_item(int(operation), batch_id, payload)  # (answered plainly)
               for (operation, payload), batch_id in answers]
    assert _encoded(items, version) == written == encode_items(items, version)


def test_an_answer_with_a_failure_is_written_by_the_general_encoder() -> None:
    ok = ResponseBatchItem(operation=Operation.DECRYPT, result_status=ResultStatus.SUCCESS,
                           response_payload=DecryptResponse(unique_identifier="k", data=b"x"))
    failed = ResponseBatchItem(operation=Operation.DECRYPT,
                               result_status=ResultStatus.OPERATION_FAILED,
                               result_reason=ResultReason.CRYPTOGRAPHIC_FAILURE,
                               result_message="the tag does not verify")
    for version in ((1, 4), (2, 1), (1, 2), (1, 1)):
        assert _encoded([ok, failed], version) == encode_items([ok, failed], version)
        assert _encoded([ok], version) == encode_items([ok], version)


def test_an_answer_before_kmip_1_4_is_written_by_the_general_encoder() -> None:
    """Fitted to its version there (an Authenticated Encryption Tag is not a KMIP 1.2
    field), which the plain writer does not do."""
    sealed = ResponseBatchItem(
        operation=Operation.ENCRYPT, result_status=ResultStatus.SUCCESS,
        response_payload=EncryptResponse(unique_identifier="k", data=b"x",
                                         authenticated_encryption_tag=bytes(16)))
    for version in ((1, 2), (1, 3)):
        assert _encoded([sealed], version) == encode_items([sealed], version)


def test_the_same_parameters_are_read_once_and_their_number_is_bounded() -> None:
    """Cryptographic Parameters with the same bytes are decoded once and shared; a client
    that sends many different ones is still read right, and the memory stays bounded."""
    from kcm.kernel import plain_messages

    def encrypt_with(tag_length: int) -> bytes:
        return request(item(Operation.ENCRYPT, EncryptRequest(
            unique_identifier="k", data=b"x", cryptographic_parameters=CryptographicParameters(
                block_cipher_mode=BlockCipherMode.GCM, tag_length=tag_length))),
            version=(1, 4))

    def parameters_of(wire: bytes) -> CryptographicParameters:
        plain = _plain_request(wire, LIMITS)
        assert plain is not None
        return plain.batch_items[0].request_payload.cryptographic_parameters

    first, again = parameters_of(encrypt_with(16)), parameters_of(encrypt_with(16))
    assert first is again
    for length in range(1, 3 * plain_messages._PARAMETERS_KEPT):
        assert parameters_of(encrypt_with(length)).tag_length == length
        assert len(plain_messages._PARAMETERS) <= plain_messages._PARAMETERS_KEPT


# Discover Versions (read and written plainly by kcm-core for a storeless request) ------
protocol_versions = st.lists(st.builds(ProtocolVersion, major=st.integers(-3, 5),
                                       minor=st.integers(-1, 9)), max_size=4)
discovers = st.builds(lambda v, b: item(Operation.DISCOVER_VERSIONS,
                                        DiscoverVersionsRequest(protocol_versions=v), b),
                      protocol_versions, batch_ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(discovers, min_size=1, max_size=3), VERSIONS,
       st.one_of(st.none(), st.integers(1, 1 << 20)))
def test_a_plain_discover_versions_reads_as_the_general_decoder_reads_it(
        items: list, version: tuple[int, int], maximum_response_size: int | None) -> None:
    wire = request(*items, version=version, maximum_response_size=maximum_response_size)
    plain = _plain_request(wire, LIMITS, read_discover_versions)
    assert plain is not None
    assert plain == decode_request(decode(wire))


@given(st.binary(max_size=300))
def test_bytes_that_are_not_a_plain_discover_versions_are_left_to_the_general_decoder(
        wire: bytes) -> None:
    assert _plain_request(wire, LIMITS, read_discover_versions) is None


def test_what_the_discover_versions_reader_does_not_read_is_left_to_the_general_decoder(
        ) -> None:
    discover = item(Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest())
    query = item(Operation.QUERY, QueryRequest(query_functions=[QueryFunction.QUERY_OBJECTS]))
    for wire in (request(discover, version=(1, 1)),  # not a plain version
                 request(discover, continuation=1),  # a header field it does not read
                 request(discover, query),  # another operation
                 request(query)):
        assert _plain_request(wire, LIMITS, read_discover_versions) is None
    assert _plain_request(request(discover), LIMITS, read_discover_versions) is not None
    assert _plain_request(request(*[discover] * 3), CoreLimits(max_batch_items=2),
                          read_discover_versions) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(protocol_versions, batch_ids), min_size=1, max_size=3), VERSIONS)
def test_a_discover_versions_answer_is_written_as_the_general_encoder_writes_it(
        answers: list, version: tuple[int, int]) -> None:
    items = [ResponseBatchItem(operation=Operation.DISCOVER_VERSIONS,
                               unique_batch_item_id=batch_id,
                               result_status=ResultStatus.SUCCESS,
                               response_payload=DiscoverVersionsResponse(protocol_versions=v))
             for v, batch_id in answers]
    written = [response_item(int(Operation.DISCOVER_VERSIONS), batch_id,
                             DiscoverVersionsResponse(protocol_versions=v))
               for v, batch_id in answers]
    assert _encoded(items, version) == written == encode_items(items, version)


# Get Attributes (read and written plainly by kcm-core in a lean group) -----------------
references = st.lists(st.sampled_from([
    AttributeReference(Tag.STATE), AttributeReference(Tag.CRYPTOGRAPHIC_LENGTH),
    AttributeReference(Tag.NAME), AttributeReference(Tag.ACTIVATION_DATE),
    AttributeReference(Tag.KEY_FORMAT_TYPE),  # no attribute of KMIP 1.x
    AttributeReference(Tag.FRESH), AttributeReference(0x420FFF),  # no attribute at all
    AttributeReference(VENDOR_TAG, "x", "colour"),  # custom (1.x) or vendor (2.x)
    AttributeReference(VENDOR_TAG, "acme", "owner")]), max_size=4)
attribute_reads = st.builds(lambda u, r, b: item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
    unique_identifier=u, attribute_references=r), b), uids, references, batch_ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(attribute_reads, min_size=1, max_size=3), VERSIONS,
       st.one_of(st.none(), st.integers(1, 1 << 20)))
def test_a_plain_get_attributes_reads_as_the_general_decoder_reads_it(
        items: list, version: tuple[int, int], maximum_response_size: int | None) -> None:
    wire = request(*items, version=version, maximum_response_size=maximum_response_size)
    plain = _plain_request(wire, LIMITS, read_get_attributes)
    vendor_structure = version >= (2, 0) and any(
        reference.tag == VENDOR_TAG
        for batch_item in items for reference in batch_item.request_payload.attribute_references)
    assert (plain is None) == vendor_structure  # the one field it leaves to the decoder
    if plain is not None:
        assert plain == decode_request(decode(wire))


def test_a_get_attributes_names_attributes_either_way_in_any_version() -> None:
    """An Attribute Name in a KMIP 2 request, or an Attribute Reference by tag in a KMIP 1
    one, is read as the general decoder reads it."""
    for version in ((1, 2), (2, 0)):
        plain_wire = request(item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
            unique_identifier="k")), version=version)
        tree = decode(plain_wire)
        payload = tree.value[1].value[1]  # Batch Item -> Request Payload
        payload.value.extend([Item(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING, "State"),
                              Item(Tag.ATTRIBUTE_REFERENCE, ItemType.ENUMERATION,
                                   int(Tag.CRYPTOGRAPHIC_LENGTH))])
        wire = encode(tree)
        plain = _plain_request(wire, LIMITS, read_get_attributes)
        assert plain is not None
        assert plain == decode_request(decode(wire))
        assert [r.tag for r in plain.batch_items[0].request_payload.attribute_references] == [
            Tag.STATE, Tag.CRYPTOGRAPHIC_LENGTH]


@given(st.binary(max_size=300))
def test_bytes_that_are_not_a_plain_get_attributes_are_left_to_the_general_decoder(
        wire: bytes) -> None:
    assert _plain_request(wire, LIMITS, read_get_attributes) is None


def test_what_the_get_attributes_reader_does_not_read_is_left_to_the_general_decoder(
        ) -> None:
    get_attributes = item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier="k", attribute_references=[AttributeReference(Tag.STATE)]))
    list_them = item(Operation.GET_ATTRIBUTE_LIST, GetAttributeListRequest(
        unique_identifier="k"))
    for wire in (request(get_attributes, version=(1, 1)),  # not a plain version
                 request(get_attributes, continuation=1),  # a header field it does not read
                 request(get_attributes, list_them),  # another operation
                 request(item(Operation.GET_ATTRIBUTES, GetAttributesRequest())),  # placeholder
                 request(list_them)):
        assert _plain_request(wire, LIMITS, read_get_attributes) is None
    assert _plain_request(request(get_attributes), LIMITS, read_get_attributes) is not None
    assert _plain_request(request(*[get_attributes] * 3), CoreLimits(max_batch_items=2),
                          read_get_attributes) is None


attribute_values = st.lists(st.sampled_from([
    Attribute.of(Tag.STATE, State.ACTIVE),
    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256),
    Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
    Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 0xFFFFF),  # bits no version names
    Attribute.of(Tag.NAME, Name(value="payroll", type=NameType.UNINTERPRETED_TEXT_STRING)),
    Attribute(Tag.NAME, Name(value="second", type=NameType.URI).to_item(tag=Tag.NAME),
              index=1),
    Attribute.of(Tag.ACTIVATION_DATE, 1_700_000_000),
    Attribute.of(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),  # no attribute of KMIP 1.x
    Attribute.of(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
    Attribute.of(Tag.FRESH, True),
    Attribute.of(Tag.LINK, Link(link_type=LinkType.REPLACEMENT_OBJECT_LINK,
                                linked_object_identifier="k2")),
    Attribute.vendor("x", "colour", Item(VENDOR_TAG, ItemType.TEXT_STRING, "blue")),
    Attribute.vendor("acme", "owner", Item(VENDOR_TAG, ItemType.INTEGER, 7)),
]), max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(uids, st.one_of(st.none(), attribute_values), batch_ids),
                min_size=1, max_size=3), VERSIONS)
def test_a_get_attributes_answer_is_written_as_the_general_encoder_writes_it(
        answers: list, version: tuple[int, int]) -> None:
    payloads = [GetAttributesResponse(unique_identifier=uid, attributes=attributes)
                for uid, attributes, _ in answers]
    items = [ResponseBatchItem(operation=Operation.GET_ATTRIBUTES,
                               unique_batch_item_id=batch_id,
                               result_status=ResultStatus.SUCCESS, response_payload=payload)
             for payload, (_, _, batch_id) in zip(payloads, answers, strict=True)]
    written = [response_item(int(Operation.GET_ATTRIBUTES), batch_id, payload, version)
               for payload, (_, _, batch_id) in zip(payloads, answers, strict=True)]
    assert _encoded(items, version) == written == encode_items(items, version)


def test_the_python_readers_read_no_batch_item_past_the_limit_or_the_count(
        monkeypatch) -> None:
    """A request over the batch-item limit is declined on its header; one with more items
    than its Batch Count says, at the first item past the count."""
    from kcm.kernel import plain_messages
    read: list[int] = []
    real = plain_messages._batch_item
    monkeypatch.setattr(plain_messages, "_batch_item",
                        lambda wire, pos, size: read.append(pos) or real(wire, pos, size))
    get_attributes = item(Operation.GET_ATTRIBUTES, GetAttributesRequest(unique_identifier="k"))
    discover = item(Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest())
    for reader, one in ((read_get_attributes, get_attributes),
                        (read_discover_versions, discover)):
        read.clear()
        assert _plain_request(request(*[one] * 3), CoreLimits(max_batch_items=2),
                              reader) is None
        assert read == []
        tree = decode(request(*[one] * 3))
        tree.value[0].value[-1] = Item(Tag.BATCH_COUNT, ItemType.INTEGER, 1)
        assert _plain_request(encode(tree), LIMITS, reader) is None
        assert len(read) == 1


creates = st.builds(
    lambda t, a, b: item(Operation.CREATE, CreateRequest(object_type=t, attributes=a), b),
    st.sampled_from([ObjectType.SYMMETRIC_KEY, ObjectType.SECRET_DATA]), attribute_values,
    batch_ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(creates, encrypts), min_size=1, max_size=3), VERSIONS,
       st.one_of(st.none(), st.integers(1, 1 << 20)))
def test_kcm_cores_creates_read_as_the_general_decoder_reads_them(
        items: list, version: tuple[int, int], maximum_response_size: int | None) -> None:
    """kcm-core reads its Creates plainly (kcm.kernel.plain_messages.read_create_payload):
    the payload alone decoded and read by the model, not the message's tree (61 to 19 us a
    Create). What the model refuses in a version (an attribute no 1.x version has, in 1.x)
    is left to the general decoder, which refuses that item alone."""
    wire = request(*items, version=version, maximum_response_size=maximum_response_size)
    try:
        general = decode_request(decode(wire))
    except KmipError:
        assert _plain_request(wire, LIMITS) is None
        return
    assert _plain_request(wire, LIMITS) == general


def test_a_create_is_read_plainly_unless_nested_deeper_than_the_reader_reads() -> None:
    create = item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]))
    for version in ((1, 2), (1, 4), (2, 0), (2, 1)):
        wire = request(create, version=version)
        assert _plain_request(wire, LIMITS) == decode_request(decode(wire))
        assert _plain_request(wire, LIMITS, read_get_attributes) is None  # (not its reader)
        assert read_request_python(wire, read_create_payload, READABLE_VERSIONS) == \
            read_request(wire, read_create_payload, READABLE_VERSIONS)  # (both walks)
    nested: Item = Item(VENDOR_TAG, ItemType.INTEGER, 1)
    for _ in range(8):
        nested = Item(VENDOR_TAG, ItemType.STRUCTURE, [nested])
    deep = item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[Attribute.vendor("acme", "deep", nested)]))
    wire = request(deep, version=(2, 0))
    assert decode_request(decode(wire)).batch_items[0].request_payload.attributes
    assert _plain_request(wire, LIMITS) is None
