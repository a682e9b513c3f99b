"""The KMIP tag/enumeration registry against the spec tables and every OASIS XML test case."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kcm.kmip import _spec_tables as tables
from kcm.kmip import registry
from kcm.kmip.enums import CryptographicUsageMask, ObjectType, Operation, PKCS_11Function
from kcm.kmip.tags import Tag
from tests.vectors import vectors_dir
from tools import gen_registry

ALL_VERSIONS = [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1)]
TABLE_KEY = {v: ("1.4" if v[0] == 1 else f"{v[0]}.{v[1]}") for v in ALL_VERSIONS}

# Upstream defect (see the vectors' README): a duplicated closing </KMIP>.
MALFORMED = {"TC-ECDSA-SIGN-1-14.xml"}


def _xml_files() -> list[Path]:
    return sorted(p for p in vectors_dir().rglob("*.xml") if p.name not in MALFORMED)


# -- known names --------------------------------------------------------------------------


def test_known_tags() -> None:
    assert registry.tag_name(0x420028) == "Cryptographic Algorithm"
    assert registry.xml_name(Tag.CRYPTOGRAPHIC_ALGORITHM) == "CryptographicAlgorithm"
    assert registry.tag_from_name("Request Message") == Tag.REQUEST_MESSAGE == 0x420078
    assert registry.tag_from_name("BatchItem", (1, 0)) == Tag.BATCH_ITEM
    assert registry.xml_name(Tag.PKCS_11_FUNCTION) == "PKCS_11Function"
    assert registry.xml_name(Tag.X_509_CERTIFICATE_IDENTIFIER) == "X_509CertificateIdentifier"
    assert registry.xml_name(Tag.IV_COUNTER_NONCE) == "IVCounterNonce"
    assert registry.tag_from_name("0x540001") == 0x540001
    with pytest.raises(KeyError):
        registry.tag_from_name("NoSuchTag")


@pytest.mark.parametrize(
    "tag",
    [
        Tag.TEMPLATE_ATTRIBUTE,
        Tag.ATTRIBUTE_INDEX,
        Tag.TEMPLATE,
        Tag.COMMON_TEMPLATE_ATTRIBUTE,
        Tag.PRIVATE_KEY_TEMPLATE_ATTRIBUTE,
        Tag.CERTIFICATE_IDENTIFIER,
    ],
)
def test_tags_removed_in_2_0_resolve_only_for_1_x(tag: Tag) -> None:
    for version in [(1, 0), (1, 2), (1, 4)]:
        assert registry.tag_name(tag, version) is not None
        assert registry.tag_from_name(registry.xml_name(tag, version), version) == tag
    for version in [(2, 0), (2, 1)]:
        assert registry.tag_name(tag, version) is None
        assert registry.xml_name(tag, version) == f"0x{tag:06X}"
        with pytest.raises(KeyError):
            registry.tag_from_name(registry.xml_name(tag, (1, 4)), version)


def test_attribute_name_and_value_live_on_in_2_x() -> None:
    assert registry.tag_name(Tag.ATTRIBUTE_NAME, (2, 1)) == "Attribute Name"
    assert registry.tag_name(Tag.ATTRIBUTE_VALUE, (2, 0)) == "Attribute Value"
    assert registry.tag_name(Tag.ATTRIBUTES, (1, 4)) is None
    assert registry.tag_name(Tag.ATTRIBUTES, (2, 0)) == "Attributes"


def test_known_enumerations() -> None:
    assert registry.enumeration_of(Tag.OPERATION) == "Operation"
    assert registry.enumeration_of(Tag.MASK_GENERATOR_HASHING_ALGORITHM) == "Hashing Algorithm"
    assert registry.enumeration_of(Tag.CRYPTOGRAPHIC_LENGTH) is None
    assert registry.enumeration_of(Tag.ASYNCHRONOUS_INDICATOR, (1, 4)) is None  # a Boolean
    assert registry.enumeration_of(Tag.ASYNCHRONOUS_INDICATOR, (2, 0)) == "Asynchronous Indicator"
    assert registry.enum_name(Tag.OPERATION, 1) == "Create"
    assert registry.enum_name(Tag.OBJECT_TYPE, 2, (1, 0)) == "SymmetricKey"
    assert registry.enum_name(Tag.NAME_TYPE, 1) == "UninterpretedTextString"
    assert registry.enum_name(Tag.CRYPTOGRAPHIC_ALGORITHM, 2) == "DES3"
    assert registry.enum_name(Tag.OBJECT_TYPE, 6, (1, 4)) == "Template"
    assert registry.enum_name(Tag.OBJECT_TYPE, 6, (2, 1)) is None
    assert registry.enum_name(Tag.CRYPTOGRAPHIC_LENGTH, 1) is None
    assert registry.enum_value(Tag.OPERATION, "Create Key Pair") == Operation.CREATE_KEY_PAIR
    assert registry.enum_value(Tag.OBJECT_TYPE, "SymmetricKey") == ObjectType.SYMMETRIC_KEY
    assert registry.enum_value(Tag.OPAQUE_DATA_TYPE, "0x80000001") == 0x80000001
    assert registry.enum_value(Tag.ATTRIBUTE_REFERENCE, "ActivationDate") == Tag.ACTIVATION_DATE
    assert registry.enum_name(Tag.PKCS_11_FUNCTION, 1) == "C_Initialize"
    assert PKCS_11Function.C_FINALIZE == 2
    with pytest.raises(KeyError):
        registry.enum_value(Tag.OPERATION, "Frobnicate")


def test_masks() -> None:
    usage = Tag.CRYPTOGRAPHIC_USAGE_MASK
    assert registry.is_mask(usage) and registry.is_mask(Tag.STORAGE_STATUS_MASK, (1, 0))
    assert not registry.is_mask(Tag.PROTECTION_STORAGE_MASK, (1, 4))
    assert registry.is_mask(Tag.PROTECTION_STORAGE_MASK, (2, 0))
    assert not registry.is_mask(Tag.CRYPTOGRAPHIC_LENGTH)
    assert registry.mask_flags(usage)["Encrypt"] == CryptographicUsageMask.ENCRYPT == 4
    assert registry.mask_flags(Tag.STORAGE_STATUS_MASK)["OnLineStorage"] == 1
    assert registry.mask_to_names(usage, 12) == "Encrypt Decrypt"
    assert registry.mask_to_names(usage, 0) is None
    assert registry.mask_to_names(usage, 0x40000000) is None
    for text in ("Encrypt Decrypt", "Decrypt|Encrypt", "Encrypt | Decrypt", "12", "0x0000000C"):
        assert registry.mask_from_names(usage, text) == 12
    assert registry.mask_from_names(usage, "MAC Generate|Sign") == 0x81
    with pytest.raises(KeyError):
        registry.mask_from_names(usage, "Encrypt Frobnicate")


def test_attribute_tag() -> None:
    assert registry.attribute_tag("Cryptographic Algorithm", (1, 4)) == Tag.CRYPTOGRAPHIC_ALGORITHM
    assert registry.attribute_tag("x-custom", (1, 4)) is None


@pytest.mark.parametrize(("version", "nearest"), [
    ((0, 4), (1, 4)), ((1, 99), (1, 4)), ((-1, 0), (1, 4)), ((1, -1), (1, 4)),
    ((2, 5), (2, 1)), ((2, -1), (2, 1)), ((3, 0), (2, 1)), ((2**31 - 1, 0), (2, 1)),
    ((2**31 - 1, 2**31 - 1), (2, 1)),
])
def test_any_version_reads_with_the_nearest_tables(version, nearest) -> None:
    """A client may send any protocol version; the header is read before the server decides
    whether it speaks it, so a lookup never fails on the version (issue 11, defect 6)."""
    assert registry.attribute_tag("Cryptographic Algorithm", version) == (
        registry.attribute_tag("Cryptographic Algorithm", nearest))
    assert registry.tag_name(Tag.CRYPTOGRAPHIC_ALGORITHM, version) == "Cryptographic Algorithm"
    assert registry.enum_value(Tag.OBJECT_TYPE, "SymmetricKey", version) == 2
    assert registry.xml_name(0x420001, version) == registry.xml_name(0x420001, nearest)


# -- round trips over the whole tables ----------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_tag_round_trip(version: tuple[int, int]) -> None:
    key = TABLE_KEY[version]
    rows = [r for r in tables.TAGS if key in r[3].split()]
    assert len(rows) > 250
    for tag, spec_name, xml, _ in rows:
        assert registry.tag_name(tag, version) == spec_name
        assert registry.xml_name(tag, version) == xml
        assert registry.tag_from_name(spec_name, version) == tag
        assert registry.tag_from_name(xml, version) == tag
        assert registry.tag_from_name(f"0x{tag:06X}", version) == tag
        assert Tag(tag).value == tag


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_enum_round_trip(version: tuple[int, int]) -> None:
    key = TABLE_KEY[version]
    for tag, enumeration in tables.TAG_ENUMERATIONS[key].items():
        if enumeration == "Tag":
            continue
        rows = [r for r in tables.ENUMERATIONS[enumeration] if key in r[3].split()]
        assert rows or enumeration == "Opaque Data Type", enumeration
        for value, spec_name, xml, _ in rows:
            assert registry.enum_name(tag, value, version) == xml
            assert registry.enum_value(tag, xml, version) == value
            assert registry.enum_value(tag, spec_name, version) == value
            assert registry.enum_value(tag, f"0x{value:08X}", version) == value
    for tag, mask in tables.TAG_MASKS[key].items():
        flags = registry.mask_flags(tag, version)
        assert flags and all(bin(bit).count("1") == 1 for bit in flags.values()), mask
        everything = sum(flags.values())
        assert (
            registry.mask_from_names(tag, registry.mask_to_names(tag, everything, version), version)
            == everything
        )


def test_generator_is_deterministic() -> None:
    generated = gen_registry.generate(vectors_dir())
    for name, source in generated.items():
        written = (gen_registry.OUT_DIR / name).read_text(encoding="utf-8")
        assert written == source, f"{name} is stale"


# -- every OASIS XML test case ------------------------------------------------------------


def _file_version(root: ET.Element) -> tuple[int, int]:
    version = root.find(".//ProtocolVersion")
    assert version is not None
    major = version.find("ProtocolVersionMajor")
    minor = version.find("ProtocolVersionMinor")
    return int(major.get("value")), int(minor.get("value"))  # type: ignore[union-attr,arg-type]


def _check_value(tag: int, element: ET.Element, version: tuple[int, int]) -> None:
    kind, text = element.get("type"), element.get("value", "")
    if kind == "Enumeration":
        registry.enum_value(tag, text, version)
    elif kind == "Integer" and not text.lstrip("-").isdigit() and not text.startswith("$"):
        assert registry.is_mask(tag, version), f"{element.tag}={text!r}"
        registry.mask_from_names(tag, text, version)


def _walk(element: ET.Element, version: tuple[int, int], problems: list[str]) -> None:
    attribute_name = None
    for child in element:
        try:
            tag = registry.tag_from_name(child.tag, version)
            if tag == Tag.ATTRIBUTE_NAME:
                attribute_name = child.get("value")
            if tag == Tag.ATTRIBUTE_VALUE and child.get("type", "Structure") != "Structure":
                # A 1.x Attribute Value is typed by the Attribute Name before it.
                value_tag = registry.attribute_tag(attribute_name or "", version)
                if value_tag is not None:
                    _check_value(value_tag, child, version)
            else:
                _check_value(tag, child, version)
        except (KeyError, AssertionError) as exc:
            problems.append(f"{child.tag} {child.attrib}: {exc!r}")
        _walk(child, version, problems)


@pytest.mark.parametrize("path", _xml_files(), ids=lambda p: p.name)
def test_xml_test_case_resolves(path: Path) -> None:
    root = ET.parse(path).getroot()
    version = _file_version(root)
    problems: list[str] = []
    _walk(root, version, problems)
    assert not problems, "\n".join(problems)


def test_the_malformed_file_is_still_malformed() -> None:
    # If upstream fixes TC-ECDSA-SIGN-1-14.xml, drop it from MALFORMED so it is checked.
    [path] = vectors_dir().rglob("TC-ECDSA-SIGN-1-14.xml")
    with pytest.raises(ET.ParseError):
        ET.parse(path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
