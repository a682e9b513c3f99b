"""The OASIS XML encoding, one rule at a time: types, names per version, placeholders, errors."""

from __future__ import annotations

import pytest

from kcm.kmip.tags import Tag
from kcm.kmip.xml_encoding import (
    FixedPlaceholders,
    XmlEncodingError,
    item_to_xml,
    items_from_xml,
    items_to_xml,
    message_version,
)
from kcm.ttlv import encode
from kcm.ttlv.types import Item, ItemType, structure

NOW = 1_600_000_000


def leaf(xml: str) -> Item:
    """The one item of a single-element document."""
    [item] = items_from_xml(xml)
    return item


def message(version: tuple[int, int], body: str, kind: str = "Request") -> str:
    """A message element whose header declares ``version``, around ``body``."""
    return (
        f"<{kind}Message><{kind}Header><ProtocolVersion>"
        f'<ProtocolVersionMajor type="Integer" value="{version[0]}"/>'
        f'<ProtocolVersionMinor type="Integer" value="{version[1]}"/>'
        f"</ProtocolVersion></{kind}Header>{body}</{kind}Message>"
    )


def payload_of(item: Item) -> list[Item]:
    """The children of the last child of a message (its body)."""
    return item.value[-1].value  # type: ignore[index,return-value]


def round_trip(item: Item) -> Item:
    [again] = items_from_xml(item_to_xml(item))
    return again


# ---------------------------------------------------------------------------
# Types


@pytest.mark.parametrize(
    ("xml", "tag", "item_type", "value"),
    [
        ('<BatchCount type="Integer" value="3"/>', Tag.BATCH_COUNT, ItemType.INTEGER, 3),
        ('<BatchCount type="Integer" value="-2147483648"/>', Tag.BATCH_COUNT, ItemType.INTEGER,
         -(1 << 31)),
        ('<BatchCount type="Integer" value="0xFFFFFFFF"/>', Tag.BATCH_COUNT, ItemType.INTEGER, -1),
        ('<UsageLimitsTotal type="LongInteger" value="-9000000000"/>', Tag.USAGE_LIMITS_TOTAL,
         ItemType.LONG_INTEGER, -9_000_000_000),
        ('<LeaseTime type="Interval" value="4294967295"/>', Tag.LEASE_TIME, ItemType.INTERVAL,
         0xFFFFFFFF),
        ('<Operation type="Enumeration" value="Create"/>', Tag.OPERATION, ItemType.ENUMERATION, 1),
        ('<Operation type="Enumeration" value="0x8000000A"/>', Tag.OPERATION,
         ItemType.ENUMERATION, 0x8000000A),
        ('<Sensitive type="Boolean" value="true"/>', Tag.SENSITIVE, ItemType.BOOLEAN, True),
        ('<Sensitive type="Boolean" value="false"/>', Tag.SENSITIVE, ItemType.BOOLEAN, False),
        ('<NameValue type="TextString" value="a &lt;b&gt; &amp; &quot;c&quot;"/>', Tag.NAME_VALUE,
         ItemType.TEXT_STRING, 'a <b> & "c"'),
        ('<NameValue type="TextString" value=""/>', Tag.NAME_VALUE, ItemType.TEXT_STRING, ""),
        ('<KeyMaterial type="ByteString" value="00aBFf"/>', Tag.KEY_MATERIAL,
         ItemType.BYTE_STRING, b"\x00\xab\xff"),
        ('<KeyMaterial type="ByteString" value=""/>', Tag.KEY_MATERIAL, ItemType.BYTE_STRING, b""),
        ('<Modulus type="BigInteger" value="00000000000000ff"/>', Tag.MODULUS,
         ItemType.BIG_INTEGER, 255),
        ('<Modulus type="BigInteger" value="ffffffffffffff00"/>', Tag.MODULUS,
         ItemType.BIG_INTEGER, -256),
        ('<InitialDate type="DateTime" value="2012-04-27T08:12:55+00:00"/>', Tag.INITIAL_DATE,
         ItemType.DATE_TIME, 1335514375),
        ('<InitialDate type="DateTime" value="2012-04-27T08:12:55Z"/>', Tag.INITIAL_DATE,
         ItemType.DATE_TIME, 1335514375),
        ('<InitialDate type="DateTime" value="2012-04-27T18:12:55+10:00"/>', Tag.INITIAL_DATE,
         ItemType.DATE_TIME, 1335514375),
        ('<InitialDate type="DateTime" value="2012-04-27T03:42:55-04:30"/>', Tag.INITIAL_DATE,
         ItemType.DATE_TIME, 1335514375),
        ('<InitialDate type="DateTime" value="2012-04-27T08:12:55"/>', Tag.INITIAL_DATE,
         ItemType.DATE_TIME, 1335514375),
        ('<InitialDate type="DateTime" value="1969-12-31T23:59:59+00:00"/>', Tag.INITIAL_DATE,
         ItemType.DATE_TIME, -1),
        ('<InitialDate type="DateTime" value="0x000000004F9A54E7"/>', Tag.INITIAL_DATE,
         ItemType.DATE_TIME, 1335514343),
        ('<InitialDate type="DateTimeExtended" value="2012-04-27T08:12:55.000123+00:00"/>',
         Tag.INITIAL_DATE, ItemType.DATE_TIME_EXTENDED, 1335514375_000123),
        ('<InitialDate type="DateTimeExtended" value="2012-04-27T08:12:55.5Z"/>',
         Tag.INITIAL_DATE, ItemType.DATE_TIME_EXTENDED, 1335514375_500000),
        ('<InitialDate type="DateTimeExtended" value="1335514375000001"/>',
         Tag.INITIAL_DATE, ItemType.DATE_TIME_EXTENDED, 1335514375_000001),
    ],
)
def test_each_type_reads_and_round_trips(xml: str, tag: int, item_type: ItemType,
                                         value: object) -> None:
    item = leaf(xml)
    assert (item.tag, item.type, item.value) == (tag, item_type, value)
    assert type(item.value) is type(value)
    assert round_trip(item) == item
    encode(item)  # every value read fits its wire form


def test_structure_is_the_default_type_and_may_be_spelled_out() -> None:
    plain = leaf('<Name><NameValue type="TextString" value="x"/></Name>')
    spelled = leaf('<Name type="Structure"><NameValue type="TextString" value="x"/></Name>')
    assert plain == spelled == structure(Tag.NAME, Item(Tag.NAME_VALUE, ItemType.TEXT_STRING, "x"))
    assert leaf("<Attributes/>") == structure(Tag.ATTRIBUTES)


def test_written_values_follow_the_oasis_files() -> None:
    item = structure(
        Tag.REQUEST_PAYLOAD,
        Item(Tag.INITIAL_DATE, ItemType.DATE_TIME, 1335514375),
        Item(Tag.INITIAL_DATE, ItemType.DATE_TIME_EXTENDED, 1335514375_000123),
        Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, b"\x01\xab"),
        Item(Tag.OBJECT_TYPE, ItemType.ENUMERATION, 2),
        Item(Tag.OPERATION, ItemType.ENUMERATION, 0x8000000A),
        Item(Tag.CRYPTOGRAPHIC_USAGE_MASK, ItemType.INTEGER, 12),
        Item(Tag.CRYPTOGRAPHIC_USAGE_MASK, ItemType.INTEGER, 0),
        Item(Tag.SENSITIVE, ItemType.BOOLEAN, True),
        Item(Tag.NAME_VALUE, ItemType.TEXT_STRING, "<&>\""),
        Item(0x540001, ItemType.INTEGER, 7),
    )
    assert item_to_xml(item) == (
        "<RequestPayload>\n"
        '  <InitialDate type="DateTime" value="2012-04-27T08:12:55+00:00"/>\n'
        '  <InitialDate type="DateTimeExtended" value="2012-04-27T08:12:55.000123+00:00"/>\n'
        '  <KeyMaterial type="ByteString" value="01ab"/>\n'
        '  <ObjectType type="Enumeration" value="SymmetricKey"/>\n'
        '  <Operation type="Enumeration" value="0x8000000A"/>\n'
        '  <CryptographicUsageMask type="Integer" value="Encrypt Decrypt"/>\n'
        '  <CryptographicUsageMask type="Integer" value="0"/>\n'
        '  <Sensitive type="Boolean" value="true"/>\n'
        '  <NameValue type="TextString" value="&lt;&amp;>&quot;"/>\n'
        '  <TTLV tag="0x540001" type="Integer" value="7"/>\n'
        "</RequestPayload>\n"
    )
    assert round_trip(item) == item


def test_big_integer_keeps_a_padded_width_for_byte_exactness() -> None:
    padded = "00000000000000000000000000000000fca682ce8e12caba"
    item = leaf(f'<Modulus type="BigInteger" value="{padded}"/>')
    assert (item.value, item.width) == (0xFCA682CE8E12CABA, 24)
    assert encode(item)[8:] == bytes.fromhex(padded)
    assert f'value="{padded}"' in item_to_xml(item)
    minimal = leaf('<Modulus type="BigInteger" value="0000000000000000fca682ce8e12caba"/>')
    assert minimal.width is None  # the sign byte makes 16 bytes the minimum
    assert leaf('<Modulus type="BigInteger" value="ff"/>').value == -1


def test_mask_integers_read_flag_names_in_any_order_or_numbers() -> None:
    for text in ("Encrypt Decrypt", "Decrypt Encrypt", "Encrypt|Decrypt", "12", "0x0000000C"):
        xml = f'<CryptographicUsageMask type="Integer" value="{text}"/>'
        assert leaf(xml).value == 12, text


def test_tags_without_a_name_are_ttlv_elements_with_a_tag_attribute() -> None:
    xml = (
        '<TTLV tag="0x540010">'
        '<TTLV tag="0x540011" name="x-n" type="TextString" value="v"/></TTLV>'
    )
    item = leaf(xml)
    assert item == structure(0x540010, Item(0x540011, ItemType.TEXT_STRING, "v"))
    assert item_to_xml(item) == (
        '<TTLV tag="0x540010">\n  <TTLV tag="0x540011" type="TextString" value="v"/>\n</TTLV>\n'
    )
    assert round_trip(item) == item
    with pytest.raises(XmlEncodingError, match="tag attribute"):
        leaf('<TTLV type="Integer" value="1"/>')


def test_text_with_white_space_and_markup_survives() -> None:
    item = Item(Tag.NAME_VALUE, ItemType.TEXT_STRING, "a\tb\r\nc <d> & 'e' \"f\" \u00e9")
    assert round_trip(item) == item
    with pytest.raises(XmlEncodingError, match="U\\+0001"):
        item_to_xml(Item(Tag.NAME_VALUE, ItemType.TEXT_STRING, "\x01"))


# ---------------------------------------------------------------------------
# Names by protocol version and by sibling


def test_each_message_is_read_with_its_own_protocol_version() -> None:
    body = '<BatchItem><ObjectType type="Enumeration" value="Template"/></BatchItem>'
    doc = f"<KMIP>{message((1, 2), body)}</KMIP>"
    [item] = items_from_xml(doc)
    assert message_version(item) == (1, 2)
    assert payload_of(item)[0].value == 6
    # Template left the enumeration in KMIP 2.0.
    with pytest.raises(XmlEncodingError, match=r"RequestMessage\[1\].*line 1.*'Template'"):
        items_from_xml(f"<KMIP>{message((1, 4), body)}{message((2, 0), body)}</KMIP>")
    written = item_to_xml(item)
    assert 'value="Template"' in written
    as_21 = item_to_xml(item, version=(2, 1))
    assert 'value="0x00000006"' in as_21


def test_messages_without_a_header_version_use_2_1() -> None:
    assert message_version(leaf("<RequestMessage/>")) == (2, 1)
    unsupported = leaf(message((9, 9), ""))
    assert message_version(unsupported) == (2, 1)


def test_kmip_1_attribute_values_take_the_named_attributes_enumeration_and_mask() -> None:
    body = (
        "<BatchItem><TemplateAttribute>"
        '<Attribute><AttributeName type="TextString" value="Cryptographic Algorithm"/>'
        '<AttributeValue type="Enumeration" value="AES"/></Attribute>'
        '<Attribute><AttributeName type="TextString" value="Cryptographic Usage Mask"/>'
        '<AttributeValue type="Integer" value="Decrypt Encrypt"/></Attribute>'
        '<Attribute><AttributeName type="TextString" value="x-custom"/>'
        '<AttributeValue type="Integer" value="5"/></Attribute>'
        "</TemplateAttribute></BatchItem>"
    )
    [item] = items_from_xml(message((1, 4), body))
    template = payload_of(item)[0]
    values = [attribute.value[1].value for attribute in template.value]  # type: ignore[index]
    assert values == [3, 12, 5]
    written = item_to_xml(item)
    assert '<AttributeValue type="Enumeration" value="AES"/>' in written
    assert '<AttributeValue type="Integer" value="Encrypt Decrypt"/>' in written
    assert items_from_xml(written) == [item]


def test_kmip_2_attribute_reference_names_a_tag() -> None:
    body = (
        '<BatchItem><AttributeReference type="Enumeration" value="ActivationDate"/>'
        '<AttributeReference type="Enumeration" value="0x00540001"/></BatchItem>'
    )
    [item] = items_from_xml(message((2, 1), body))
    assert [c.value for c in payload_of(item)] == [Tag.ACTIVATION_DATE, 0x540001]
    written = item_to_xml(item)
    assert 'value="ActivationDate"' in written and 'value="0x00540001"' in written


# ---------------------------------------------------------------------------
# Placeholders

PLACEHOLDER_DOC = """<KMIP>
<ResponseMessage>
  <ResponseHeader>
    <TimeStamp type="DateTime" value="$NOW"/>
  </ResponseHeader>
  <BatchItem>
    <UniqueIdentifier type="TextString" value="$UNIQUE_IDENTIFIER_0"/>
    <ActivationDate type="DateTime" value="$NOW-3600"/>
    <DeactivationDate type="DateTime" value="$NOW+20"/>
    <KeyMaterial type="ByteString" value="$KEY_MATERIAL_0"/>
    <IVCounterNonce type="ByteString" value="$IV_COUNTER_NONCE"/>
    <CorrelationValue type="ByteString" value="$CORRELATION_VALUE"/>
  </BatchItem>
</ResponseMessage>
</KMIP>
"""


def test_placeholders_without_a_resolver_are_refused_by_name() -> None:
    with pytest.raises(XmlEncodingError, match=r"\$NOW") as caught:
        items_from_xml(PLACEHOLDER_DOC)
    assert caught.value.line == 4
    assert caught.value.path == "KMIP/ResponseMessage[0]/ResponseHeader/TimeStamp"


def test_fixed_placeholders_give_deterministic_values() -> None:
    placeholders = FixedPlaceholders(now=NOW)
    [item] = items_from_xml(PLACEHOLDER_DOC, placeholders=placeholders)
    timestamp = item.value[0].value[0]  # type: ignore[index]
    uid, activation, deactivation, key, iv, correlation = payload_of(item)
    assert timestamp.value == NOW
    assert uid.value == "$UNIQUE_IDENTIFIER_0"
    assert activation.value == NOW - 3600 and deactivation.value == NOW + 20
    assert len(key.value) == 16 and key.value != iv.value != correlation.value  # type: ignore
    again = items_from_xml(PLACEHOLDER_DOC, placeholders=FixedPlaceholders(now=NOW))
    assert again == [item]
    assert placeholders.substituted["$NOW-3600"] == NOW - 3600


def test_written_placeholders_reproduce_the_original_text() -> None:
    placeholders = FixedPlaceholders(now=NOW)
    items = items_from_xml(PLACEHOLDER_DOC, placeholders=placeholders)
    written = items_to_xml(items, placeholders=placeholders)
    assert written.split() == PLACEHOLDER_DOC.split()
    without = items_to_xml(items)
    assert "$NOW" not in without and "2020-09-13T12:26:40+00:00" in without


def test_placeholders_that_have_no_value_of_the_type_are_refused() -> None:
    with pytest.raises(XmlEncodingError, match=r"\$UNIQUE_IDENTIFIER_0"):
        items_from_xml('<InitialDate type="DateTime" value="$UNIQUE_IDENTIFIER_0"/>',
                       placeholders=FixedPlaceholders(now=NOW))
    with pytest.raises(XmlEncodingError, match=r"\$FLAG"):
        items_from_xml('<Sensitive type="Boolean" value="$FLAG"/>',
                       placeholders=FixedPlaceholders(now=NOW))


def test_text_that_only_starts_with_a_dollar_is_literal() -> None:
    assert leaf('<NameValue type="TextString" value="$5 off"/>').value == "$5 off"


# ---------------------------------------------------------------------------
# Document shape and errors


def test_wrapper_ignores_comments_and_annotation_text() -> None:
    doc = (
        "<KMIP>\n<!-- c -->\n#\n# [[DeriveKey using SHA_256]]\n#\n"
        '<RequestMessage/>\n<ResponseMessage/>\n</KMIP>'
    )
    assert [i.tag for i in items_from_xml(doc)] == [Tag.REQUEST_MESSAGE, Tag.RESPONSE_MESSAGE]


def test_items_to_xml_lays_out_a_document_like_the_oasis_files() -> None:
    items = [structure(Tag.REQUEST_MESSAGE), structure(Tag.RESPONSE_MESSAGE)]
    assert items_to_xml(items) == (
        "<KMIP>\n\n<RequestMessage/>\n\n<ResponseMessage/>\n\n</KMIP>\n"
    )
    assert items_from_xml(items_to_xml(items)) == items


@pytest.mark.parametrize(
    ("xml", "match", "line"),
    [
        ("<KMIP>\n<RequestMessage>\n</KMIP>", "malformed XML: mismatched tag", 3),
        ("<KMIP></KMIP>\n<KMIP/>", "malformed XML: junk after document element", 2),
        ("<KMIP></KMIP></KMIP>", "malformed XML: not well-formed", 1),
        ("", "malformed XML: no element found", 1),
        ('<KMIP>\n<NoSuchTag type="Integer" value="1"/></KMIP>',
         "unknown element name 'NoSuchTag'", 2),
        ('<BatchCount type="Float" value="1"/>', "unknown type 'Float'", 1),
        ('<BatchCount type="Integer"/>', "Integer needs a value", 1),
        ('<BatchCount type="Integer" value="1" extra="2"/>', "unexpected attribute 'extra'", 1),
        ('<BatchCount type="Integer" value="one"/>', "not a decimal integer", 1),
        ('<BatchCount type="Integer" value="2147483648"/>', "out of range for Integer", 1),
        ('<LeaseTime type="Interval" value="-1"/>', "out of range for Interval", 1),
        ('<CryptographicUsageMask type="Integer" value="Encrypt Bogus"/>', "Bogus", 1),
        ('<Operation type="Enumeration" value="Frobnicate"/>', "Frobnicate", 1),
        ('<Sensitive type="Boolean" value="yes"/>', "not true or false", 1),
        ('<KeyMaterial type="ByteString" value="abc"/>', "hex digits", 1),
        ('<Modulus type="BigInteger" value=""/>', "hex digits", 1),
        ('<InitialDate type="DateTime" value="27/04/2012"/>', "xsd:dateTime", 1),
        ('<InitialDate type="DateTime" value="2012-04-27T08:12:55.5Z"/>', "fractions", 1),
        ('<InitialDate type="DateTime" value="2012-13-27T08:12:55Z"/>', "month", 1),
        ('<Name value="x"/>', "a Structure has no value", 1),
        ('<BatchCount type="Integer" value="1"><X/></BatchCount>', "no child elements", 1),
        ("<Name>\n  text\n</Name>", "unexpected text 'text'", 2),
    ],
)
def test_errors_name_the_element_and_line(xml: str, match: str, line: int) -> None:
    with pytest.raises(XmlEncodingError, match=match) as caught:
        items_from_xml(xml)
    assert caught.value.line == line
    assert isinstance(caught.value, ValueError)


def test_error_path_names_the_message_and_element() -> None:
    doc = "<KMIP>\n<RequestMessage/>\n<RequestMessage>\n<BatchItem>\n<Bad/></BatchItem>" \
          "</RequestMessage></KMIP>"
    with pytest.raises(XmlEncodingError) as caught:
        items_from_xml(doc)
    assert caught.value.path == "KMIP/RequestMessage[1]/BatchItem/Bad"
    assert str(caught.value).startswith("KMIP/RequestMessage[1]/BatchItem/Bad (line 5): ")


def test_writing_a_value_that_does_not_fit_its_type_is_refused() -> None:
    bad = structure(Tag.BATCH_ITEM, Item(Tag.BATCH_COUNT, ItemType.INTEGER, "3"))
    with pytest.raises(XmlEncodingError, match="BatchItem/BatchCount"):
        item_to_xml(bad)
    with pytest.raises(XmlEncodingError, match="out of range"):
        item_to_xml(Item(Tag.BATCH_COUNT, ItemType.INTEGER, 1 << 40))
