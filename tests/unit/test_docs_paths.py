"""The ``make`` targets and the checkout's files README.rst and docs/*.md name exist: every
``make TARGET`` is a rule of the Makefile, and every path in the checkout (``kcm/...``,
``etc/...``, a module named alone) is a file or directory of it. docs/release-notes.md and
docs/benchmarks.md are left out of the paths: they tell of earlier releases and runs."""

from __future__ import annotations

import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.rst", *sorted(p for p in (REPO / "docs").glob("*.md")
                                      if p.name not in ("release-notes.md", "benchmarks.md"))]
#: The checkout's top directories a path the docs name may start with.
_TOP = ("kcm", "tests", "docs", "etc", "tools", "benchmarks", "twisted", "examples")
#: Files named that are not the checkout's: made when it runs, or of other projects.
NOT_OURS = {
    "twisted/plugins/dropin.cache",  # Twisted's cache of the plugins, written at a start
    "server_tap.py",  # architecture.md: the Magic Wormhole transit relay's, for comparison
    "alembic.ini", "journald.conf", "core.toml",  # not needed / the system's / an example's
    "postgresql.service",  # the system's
}


def _literals(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".rst":
        return [" ".join(literal.split()) for literal in re.findall(r"``(.+?)``", text, re.S)]
    return re.findall(r"`([^`\n]+)`", text) + re.findall(r"^```[^\n]*\n(.*?)^```", text,
                                                        re.S | re.M)


@functools.cache
def _files() -> frozenset[str]:
    """The names of the checkout's files (not of the virtualenv or the build)."""
    return frozenset({path.name for top in _TOP for path in (REPO / top).rglob("*")
                      if "__pycache__" not in path.parts}
                     | {path.name for path in REPO.iterdir() if path.is_file()})


def _targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))


def test_every_make_target_the_docs_name_is_a_rule() -> None:
    pages = [REPO / "README.rst", *sorted((REPO / "docs").glob("*.md"))]
    named = {(page.name, target) for page in pages for literal in _literals(page)
             for target in re.findall(r"(?:^|[\s;&(])make ([a-z][a-z0-9-]*)", literal)}
    assert len(named) > 10
    assert sorted(f"{page}: make {t}" for page, t in named if t not in _targets()) == []


def named_paths() -> set[tuple[str, str]]:
    """(page, path) of each file of the checkout the pages name: a path under one of its
    top directories, or a file name alone (``config.py``, ``kcm-core.toml``)."""
    found = set()
    top = "|".join(_TOP)
    for page in PAGES:
        for literal in _literals(page):
            for word in re.split(r"[\s,;()=\"'`]+", literal):
                word = word.strip(".:*")
                if any(c in word for c in "*{}[]…$<>") or "://" in word:
                    continue
                if re.fullmatch(rf"(?:{top})/[\w./-]+", word) or re.fullmatch(
                        r"[\w-]+\.(?:py|c|toml|md|txt|cfg|conf|ini|service|sh)", word):
                    found.add((page.name, word.rstrip("/")))
    return found


def test_every_file_the_docs_name_exists() -> None:
    named = named_paths()
    assert ("README.rst", "etc/kcm-core.toml") in named
    missing = sorted(f"{page}: {path}" for page, path in named
                     if path not in NOT_OURS and not (
                         (REPO / path).exists() if "/" in path else path in _files()))
    assert missing == []
