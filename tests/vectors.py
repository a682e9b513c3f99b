"""Where the OASIS KMIP vectors live, and readers for them (test helpers only)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kcm.ttlv.types import Item

REPO_ROOT = Path(__file__).resolve().parent.parent
V11_TEXT = "oasis-kmip-testcases-v1.1-text/kmip-testcases-v1.1.txt"


def vectors_dir() -> Path:
    """The read-only vectors directory: $KCM_VECTORS, else ../shared/kmip-vectors.

    Raises when it is missing: the conformance proof must never be skipped silently.
    """
    path = Path(os.environ.get("KCM_VECTORS", REPO_ROOT.parent / "shared" / "kmip-vectors"))
    if not (path / "README.md").is_file():
        raise FileNotFoundError(
            f"KMIP vectors not found at {path}; "
            "set KCM_VECTORS to the shared/kmip-vectors directory"
        )
    return path


_HEX_LINE = re.compile(r"^[0-9A-Fa-f]+$")
_MESSAGE_START = ("42007801", "42007B01")


def iter_v11_hex_messages() -> Iterator[tuple[int, bytes]]:
    """Every complete TTLV message of the KMIP 1.1 test-case text, with its line number.

    A message's hex may wrap onto following lines; it is read up to the length its
    own 8-byte header declares (see the vectors' README on the two odd wraps).
    """
    lines = (vectors_dir() / V11_TEXT).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if _HEX_LINE.match(text) and text.upper().startswith(_MESSAGE_START):
            want = (8 + int(text[8:16], 16)) * 2
            j = i + 1
            while len(text) < want and j < len(lines) and _HEX_LINE.match(lines[j].strip()):
                text += lines[j].strip()
                j += 1
            yield i + 1, bytes.fromhex(text[:want])
            i = j
        else:
            i += 1


#: Upstream XML files that are not well-formed (see the vectors' README): they are
#: proven to be refused, never read as vectors.
MALFORMED_XML = frozenset({"oasis-kmip-testcases-v1.4-cnprd01/TC-ECDSA-SIGN-1-14.xml"})

#: The fixed "now" placeholders resolve to (13 Sep 2020): far from every literal date
#: in the files, so a written-back value is never mistaken for a placeholder.
PLACEHOLDER_NOW = 1_600_000_000


def xml_vector_files() -> list[Path]:
    """Every OASIS XML test-case file under the vectors directory, sorted, malformed ones too."""
    return sorted(vectors_dir().rglob("*.xml"))


def iter_vector_messages() -> Iterator[tuple[Path, int, Item]]:
    """Every request and response message of every well-formed XML test case.

    Yields (file path, index of the message in its file, TTLV item tree), with the
    placeholders of each file resolved by its own ``FixedPlaceholders(PLACEHOLDER_NOW)``.
    """
    from kcm.kmip.xml_encoding import FixedPlaceholders, items_from_xml

    root = vectors_dir()
    for path in xml_vector_files():
        if path.relative_to(root).as_posix() in MALFORMED_XML:
            continue
        placeholders = FixedPlaceholders(now=PLACEHOLDER_NOW)
        items = items_from_xml(path.read_text(encoding="utf-8"), placeholders=placeholders)
        for index, item in enumerate(items):
            yield path, index, item
