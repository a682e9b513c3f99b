"""Per-version lookups of KMIP tag, enumeration and mask names (KMIP 1.0-2.1).

Every function takes the protocol ``version`` as ``(major, minor)`` last, default (2, 1).
KMIP 1.0-1.3 use the 1.4 tables (1.x only ever added tags and values, so a tag new in
1.2 also resolves for 1.0); 2.0 and 2.1 have their own; a later 2.x minor uses 2.1. Any
other version uses the nearest tables (1.4 up to 1.x, 2.1 from 3.0), so no protocol version
a client sends fails a lookup.

Names come in three spellings: the spec name ("Cryptographic Algorithm"), the CamelCase
name of the XML encoding (KMIP Profiles 2.1 §5.4.1, "CryptographicAlgorithm") and hex
("0x420028" for a tag, "0x00000003" for a value). Lookups return the XML spelling for
enumeration values and mask flags, since that is what text encodings write.

All tables are built once at import; every function is a few dict lookups.
"""

from __future__ import annotations

from kcm.kmip import _spec_tables as tables
from kcm.kmip.versions import Version

_LATEST: Version = (2, 1)
_TAG_ENUMERATION = "Tag"  # 2.x §11.53: the values of this enumeration are the tags


class _Names:
    """The value <-> name maps of one enumeration or mask in one version."""

    __slots__ = ("spec", "xml", "by_name")

    def __init__(self) -> None:
        self.spec: dict[int, str] = {}
        self.xml: dict[int, str] = {}
        self.by_name: dict[str, int] = {}

    def add(self, value: int, spec_name: str, xml_name: str) -> None:
        self.spec[value] = spec_name
        self.xml[value] = xml_name
        self.by_name.setdefault(xml_name, value)
        self.by_name.setdefault(spec_name, value)


class _VersionTables:
    """Everything known about one table version ("1.4", "2.0" or "2.1")."""

    def __init__(self, key: str) -> None:
        self.tag_name: dict[int, str] = {}
        self.tag_xml: dict[int, str] = {}
        self.tag_by_name: dict[str, int] = {}
        self.tag_by_spec_name: dict[str, int] = {}
        for tag, spec_name, xml_name, versions in tables.TAGS:
            if key in versions.split():
                self.tag_name[tag] = spec_name
                self.tag_xml[tag] = xml_name
                self.tag_by_spec_name[spec_name] = tag
                self.tag_by_name[spec_name] = tag
                self.tag_by_name[xml_name] = tag
        self.enums = self._names(tables.ENUMERATIONS, key)
        self.masks = self._names(tables.MASKS, key)
        for name, aliases in tables.VALUE_ALIASES.items():
            names = self.enums.get(name) or self.masks.get(name)
            if names is not None:
                for alias, value in aliases.items():
                    names.by_name.setdefault(alias, value)
        self.tag_enum = tables.TAG_ENUMERATIONS[key]
        self.tag_mask = {tag: self.masks[name] for tag, name in tables.TAG_MASKS[key].items()}

    @staticmethod
    def _names(source: dict[str, tuple[tuple[int, str, str, str], ...]], key: str) -> dict:
        result: dict[str, _Names] = {}
        for name, rows in source.items():
            names = _Names()
            for value, spec_name, xml_name, versions in rows:
                if key in versions.split():
                    names.add(value, spec_name, xml_name)
            result[name] = names
        return result


_TABLES = {key: _VersionTables(key) for key in tables.VERSIONS}
_BY_VERSION: dict[Version, _VersionTables] = {
    **{(1, minor): _TABLES["1.4"] for minor in range(5)},
    (2, 0): _TABLES["2.0"],
    (2, 1): _TABLES["2.1"],
}


def _tables(version: Version) -> _VersionTables:
    """The tables of ``version``, or of the nearest version that has tables: another 1.x or
    anything older (1.99, 0.4, a negative major) reads as 1.4, another 2.x or anything newer
    (2.5, 3.0, 2**31-1) as 2.1. A request's header is read before the server decides
    whether it speaks the version, so no version a client can send may make a lookup fail."""
    found = _BY_VERSION.get(version)
    if found is not None:
        return found
    return _TABLES["2.1"] if version[0] >= 2 else _TABLES["1.4"]


def has_tables(version: Version) -> bool:
    """Whether ``version`` is a version the tables describe (1.0-1.4, 2.x) rather than one
    they stand in for (:func:`_tables`)."""
    return version in _BY_VERSION or version[0] == 2


def _hex(text: str) -> int | None:
    if text[:2] in ("0x", "0X"):
        try:
            return int(text[2:], 16)
        except ValueError:
            return None
    return None


def tag_name(tag: int, version: Version = _LATEST) -> str | None:
    """The spec name of ``tag`` in ``version`` ("Cryptographic Algorithm"), or None."""
    return _tables(version).tag_name.get(tag)


def xml_name(tag: int, version: Version = _LATEST) -> str:
    """The XML element name of ``tag``: CamelCase if known in ``version``, else "0x42ABCD"."""
    return _tables(version).tag_xml.get(tag) or f"0x{tag:06X}"


def tag_from_name(name: str, version: Version = _LATEST) -> int:
    """The tag for a spec name, CamelCase XML name or "0x42XXXX"; KeyError when unknown."""
    found = _tables(version).tag_by_name.get(name)
    if found is not None:
        return found
    value = _hex(name)
    if value is None or not 0 <= value <= 0xFFFFFF:
        raise KeyError(name)
    return value


def enumeration_of(tag: int, version: Version = _LATEST) -> str | None:
    """The name of the enumeration an Enumeration-typed ``tag`` takes its values from.

    None when ``tag`` is never an Enumeration in ``version``. A few tags have other
    encodings too (a 2.x Unique Identifier is usually a Text String).
    """
    return _tables(version).tag_enum.get(tag)


def enum_name(tag: int, value: int, version: Version = _LATEST) -> str | None:
    """The CamelCase XML name of enumeration ``value`` of ``tag``, or None if not named."""
    found = _tables(version)
    enumeration = found.tag_enum.get(tag)
    if enumeration is None:
        return None
    if enumeration == _TAG_ENUMERATION:
        return found.tag_xml.get(value)
    return found.enums[enumeration].xml.get(value)


def enum_value(tag: int, name: str, version: Version = _LATEST) -> int:
    """The value of an enumeration name of ``tag`` (CamelCase, spec name or "0x0000000A").

    Raises KeyError when ``name`` is not a value of ``tag``'s enumeration in ``version``;
    hex is accepted for any tag (extension values, unknown enumerations).
    """
    found = _tables(version)
    enumeration = found.tag_enum.get(tag)
    if enumeration == _TAG_ENUMERATION:
        value = found.tag_by_name.get(name)
    elif enumeration is not None:
        value = found.enums[enumeration].by_name.get(name)
    else:
        value = None
    if value is None:
        value = _hex(name)
        if value is None or not 0 <= value <= 0xFFFFFFFF:
            raise KeyError(name)
    return value


def is_mask(tag: int, version: Version = _LATEST) -> bool:
    """Whether ``tag`` is an Integer bit mask (Cryptographic Usage Mask, ...) in ``version``."""
    return tag in _tables(version).tag_mask


def mask_flags(tag: int, version: Version = _LATEST) -> dict[str, int]:
    """CamelCase flag name -> bit for mask ``tag`` (empty if ``tag`` is not a mask)."""
    names = _tables(version).tag_mask.get(tag)
    return {} if names is None else {name: bit for bit, name in names.xml.items()}


def mask_to_names(tag: int, value: int, version: Version = _LATEST) -> str | None:
    """``value`` as space-separated CamelCase flag names ("Encrypt Decrypt"), low bit first.

    None when ``tag`` is not a mask, ``value`` is 0 or has a bit without a name: the
    caller then writes the number.
    """
    names = _tables(version).tag_mask.get(tag)
    if names is None or value <= 0:
        return None
    flags = []
    rest = value
    for bit in sorted(names.xml):
        if value & bit:
            flags.append(names.xml[bit])
            rest &= ~bit
    return None if rest else " ".join(flags)


def mask_from_names(tag: int, text: str, version: Version = _LATEST) -> int:
    """Parse a mask: flag names split by spaces or "|", decimal, or "0x..." hex.

    With "|" separators, spec names ("MAC Generate") are accepted too. Raises KeyError
    for an unknown flag, ValueError for an empty text.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty mask")
    number = _hex(text)
    if number is not None:
        return number
    if text.isdigit():
        return int(text)
    names = _tables(version).tag_mask.get(tag)
    if names is None:
        raise KeyError(text)
    parts = text.split("|") if "|" in text else text.split()
    value = 0
    for part in parts:
        value |= names.by_name[part.strip()]
    return value


def attribute_tag(attribute_name: str, version: Version = _LATEST) -> int | None:
    """The tag that describes a KMIP 1.x Attribute Value named ``attribute_name``.

    ``attribute_name`` is the Attribute Name text ("Cryptographic Algorithm"); custom
    names ("x-...", "y-...") and anything else unknown give None.
    """
    return _tables(version).tag_by_spec_name.get(attribute_name)


# -- what each version defines -------------------------------------------------------
#
# The lookups above are lenient: they read KMIP 1.0-1.3 with the 1.4 tables, so that a
# request naming a later tag or value is still understood. What a server may *send* in a
# version is stricter: only what that version defines. KMIP 1.0-1.3 are the 1.4 tables
# less what later 1.x versions added (``V1_*`` in the generated tables).

_V1_KEYS = ("1.0", "1.1", "1.2", "1.3", "1.4")


class Definitions:
    """The tags, enumeration values, mask bits and attributes one version defines.

    ``values_of_tag`` maps each Enumeration-typed tag to the values the version defines for
    it (a tag whose values are tags maps to :attr:`tags`); ``mask_bits`` each mask tag to
    its named bits; ``attributes`` holds the attribute tags (1.x: KMIP 1.x §3)."""

    __slots__ = ("tags", "values", "mask_bits", "attributes", "values_of_tag")

    def __init__(self, key: str) -> None:
        self._build(key)
        lookup = _TABLES["1.4" if key.startswith("1.") else key]
        # Only enumerations with values: one the tables name no values of judges nothing.
        self.values_of_tag: dict[int, frozenset[int]] = {
            tag: (self.tags if name == _TAG_ENUMERATION else self.values[name])
            for tag, name in lookup.tag_enum.items()
            if name == _TAG_ENUMERATION or (name in lookup.enums and lookup.enums[name].spec)}

    def _build(self, key: str) -> None:
        if key in _TABLES:
            source = _TABLES[key]
            self.tags = frozenset(source.tag_name)
            self.values = {name: frozenset(names.spec) for name, names in source.enums.items()}
            self.mask_bits = {tag: sum(names.spec) for tag, names in source.tag_mask.items()}
        else:
            self._cut_v1(key)
        if key.startswith("1."):
            self.attributes = frozenset(
                _TABLES["1.4"].tag_by_spec_name[name]
                for minor in _V1_KEYS[:_V1_KEYS.index(key) + 1]
                for name in tables.V1_ADDED_ATTRIBUTES[minor])
        else:
            self.attributes = self.tags

    def _cut_v1(self, key: str) -> None:
        later = _V1_KEYS[_V1_KEYS.index(key) + 1:]
        limit = tables.V1_FIRST_TAG[later[0]]
        source = _TABLES["1.4"]
        self.tags = frozenset(tag for tag in source.tag_name if tag < limit)
        self.values = {}
        for name, names in source.enums.items():
            added = tables.V1_ADDED_VALUES.get(name, {})
            ranges = [added[minor] for minor in later if minor in added]
            self.values[name] = frozenset(
                value for value in names.spec
                if not any(first <= value <= last for first, last in ranges))
        self.mask_bits = {tag: sum(names.spec) for tag, names in source.tag_mask.items()}


_DEFINITIONS = {key: Definitions(key) for key in (*_V1_KEYS, "2.0", "2.1")}


def definitions(version: Version) -> Definitions:
    """What ``version`` defines; a version without tables of its own reads as its nearest
    (as :func:`_tables`)."""
    if version[0] == 1 and 0 <= version[1] <= 4:
        return _DEFINITIONS[f"1.{version[1]}"]
    if version == (2, 0):
        return _DEFINITIONS["2.0"]
    return _DEFINITIONS["2.1"] if version[0] >= 2 else _DEFINITIONS["1.4"]


def defines_tag(tag: int, version: Version = _LATEST) -> bool:
    """Whether ``version`` defines ``tag`` (vendor extension tags, 0x54xxxx, count as
    defined: a version cannot forbid them)."""
    return tag in definitions(version).tags or tag >= 0x540000


def defines_value(tag: int, value: int, version: Version = _LATEST) -> bool:
    """Whether ``value`` of the Enumeration-typed ``tag`` is defined in ``version``:
    True too for an extension value (high bit set) and for a tag with no enumeration
    table in ``version`` (nothing to judge by)."""
    if value >= 0x80000000:
        return True
    found = definitions(version).values_of_tag.get(tag)
    return found is None or value in found or (found is definitions(version).tags
                                                 and value >= 0x540000)


def defined_mask_bits(tag: int, version: Version = _LATEST) -> int | None:
    """The bits of mask ``tag`` that ``version`` names, or None if ``tag`` is no mask."""
    return definitions(version).mask_bits.get(tag)


def is_attribute(tag: int, version: Version = _LATEST) -> bool:
    """Whether ``tag`` is an attribute in ``version`` (KMIP 1.x §3 lists them; in 2.x,
    attributes are tagged values and any tag of its tables may be one)."""
    return tag in definitions(version).attributes
