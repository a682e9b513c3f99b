"""Every OASIS XML test case, at the TTLV level: XML → item → TTLV → item → XML → item.

Each request and response message of every ``*.xml`` file under the vectors directory
(profiles 1.4, 2.0, 2.1; test cases 1.4, 2.0, 2.1) is read, encoded to TTLV bytes,
decoded, written back to XML and read again; the last item tree must equal the first.
The one upstream file that is not well-formed XML must be refused, not skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kcm.kmip.xml_encoding import (
    FixedPlaceholders,
    XmlEncodingError,
    item_to_xml,
    items_from_xml,
)
from kcm.ttlv import decode, encode
from tests.vectors import MALFORMED_XML, PLACEHOLDER_NOW, vectors_dir, xml_vector_files

ROOT = vectors_dir()
FILES = xml_vector_files()
WELL_FORMED = [p for p in FILES if p.relative_to(ROOT).as_posix() not in MALFORMED_XML]
MALFORMED = [p for p in FILES if p.relative_to(ROOT).as_posix() in MALFORMED_XML]

#: Messages checked per file, filled in as the per-file tests run.
_checked: dict[Path, int] = {}


def _round_trip_file(path: Path) -> int:
    """Round-trip every message of ``path``; return how many there were."""
    placeholders = FixedPlaceholders(now=PLACEHOLDER_NOW)
    items = items_from_xml(path.read_text(encoding="utf-8"), placeholders=placeholders)
    for index, item in enumerate(items):
        wire = encode(item)
        decoded = decode(wire)
        assert decoded == item, f"message {index}: TTLV decode differs"
        text = item_to_xml(decoded, placeholders=placeholders)
        again = items_from_xml(text, placeholders=placeholders)
        assert again == [item], f"message {index}: XML written back reads differently"
        assert encode(again[0]) == wire
    return len(items)


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_vector_set_is_present() -> None:
    sets = {p.relative_to(ROOT).parts[0] for p in FILES}
    assert sets >= {
        "oasis-kmip-profiles-v1.4-os", "oasis-kmip-profiles-v2.0-csprd01",
        "oasis-kmip-profiles-v2.1-os", "oasis-kmip-testcases-v1.4-cnprd01",
        "oasis-kmip-testcases-v2.0-cnd02", "oasis-kmip-testcases-v2.0-cn01",
        "oasis-kmip-testcases-v2.1-cn01",
    }
    assert len(FILES) == 408


@pytest.mark.parametrize("path", WELL_FORMED, ids=_id)
def test_xml_vector_round_trips(path: Path) -> None:
    count = _round_trip_file(path)
    assert count > 0
    assert count % 2 == 0, "requests and responses come in pairs"
    _checked[path] = count


@pytest.mark.parametrize("path", MALFORMED, ids=_id)
def test_malformed_upstream_file_is_refused(path: Path) -> None:
    with pytest.raises(XmlEncodingError) as caught:
        items_from_xml(path.read_text(encoding="utf-8"),
                       placeholders=FixedPlaceholders(now=PLACEHOLDER_NOW))
    # The duplicated closing </KMIP> near the end of the file.
    assert caught.value.line is not None and caught.value.line > 400
    assert "malformed XML" in str(caught.value)


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this module: completes any file a selection left out, then reports."""
    for path in WELL_FORMED:
        if path not in _checked:
            _checked[path] = _round_trip_file(path)
    messages = sum(_checked[p] for p in WELL_FORMED)
    assert len(MALFORMED) == 1
    assert messages == 5014
    with capsys.disabled():
        print(f"\nXML vectors: {len(WELL_FORMED)} files, {messages} messages checked "
              f"({len(MALFORMED)} malformed upstream file refused)")
