"""The links between the docs resolve: every ``[text](file.md)`` names a file of docs/, and
every ``#anchor`` (``[text](file.md#anchor)``, ``[text](#anchor)``) a heading of that file,
by GitHub's rule for heading anchors. Reads docs/*.md only: no network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
_LINK = re.compile(r"\]\(\s*([^)\s]*)\s*\)")
_LINK_TEXT = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (their lines kept, empty, for line numbers)."""
    return _FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text (a link's text alone), lower case, without
    punctuation but ``-`` and ``_``, spaces as ``-``."""
    text = _LINK_TEXT.sub(r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a document's headings (a repeated one as ``NAME-1``, ``NAME-2`` ...)."""
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(_prose(text)):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(docs: Path) -> list[str]:
    """``file:line: target`` of every link in ``docs``/*.md that does not resolve."""
    pages = {page.name: page.read_text(encoding="utf-8") for page in docs.glob("*.md")}
    headings = {name: anchors(text) for name, text in pages.items()}
    broken = []
    for name, text in sorted(pages.items()):
        prose = _INLINE_CODE.sub("", _prose(text))
        for match in _LINK.finditer(prose):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours
                continue
            path, _, anchor = target.partition("#")
            page = path or name
            if path and not (docs / path).exists():
                problem = "no such file"
            elif anchor and page.endswith(".md") and anchor not in headings.get(page, set()):
                problem = "no such heading"
            else:
                continue
            line = prose.count("\n", 0, match.start()) + 1
            broken.append(f"{name}:{line}: {target} ({problem})")
    return broken


def test_every_link_and_anchor_in_the_docs_resolves() -> None:
    assert DOCS.is_dir()
    assert broken_links(DOCS) == []


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Metrics and health", "metrics-and-health"),
    ("Usage counting across gateways, and the overshoot bound",
     "usage-counting-across-gateways-and-the-overshoot-bound"),
    ("kcm-gateway polling before it sleeps (`busy_poll_us`)",
     "kcm-gateway-polling-before-it-sleeps-busy_poll_us"),
    ("For operators (the audit log, [Audit](operations.md#audit))",
     "for-operators-the-audit-log-audit"),
    ("3. L4 tokens (ARCHITECTURE §3)", "3-l4-tokens-architecture-3"),
])
def test_heading_anchors_follow_githubs_rule(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_anchor_or_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# A page\n\n## Two words\n\n[ok](#two-words), [ok](b.md#b), [ok](b.md)\n"
        "[bad](#three-words)\n[bad](b.md#nowhere)\n[bad](c.md)\n"
        "```\n[in code](#not-checked)\n```\n`[inline](#not-checked)`\n"
        "[web](https://example.com/#x)\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# B\n", encoding="utf-8")
    assert broken_links(tmp_path) == [
        "a.md:6: #three-words (no such heading)",
        "a.md:7: b.md#nowhere (no such heading)",
        "a.md:8: c.md (no such file)",
    ]
