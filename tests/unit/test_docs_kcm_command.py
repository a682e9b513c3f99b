"""The ``kcm`` command as README.rst and docs/*.md show it, against its real parser
(:func:`kcm.cli.build_parser`; parsed only, nothing run): every ``kcm ...`` invocation in a
code block or an inline literal parses (or lacks only arguments the text leaves out, as in
"``kcm core tenant add`` makes ..."), and every subcommand and option is named somewhere.
docs/release-notes.md is left out: it tells what earlier releases did."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from kcm.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.rst", *sorted(p for p in (REPO / "docs").glob("*.md")
                                      if p.name != "release-notes.md")]

#: Literals that begin with ``kcm`` and are no command: the labels KCM derives keys with.
NOT_COMMANDS = {"kcm key check value v1", "kcm audit chain key v1"}

#: Errors of an invocation that leaves arguments out (a reference to a command or option,
#: or an example cut at ``...``): what was given is right.
_LEFT_OUT = re.compile(r"the following arguments are required|expected one argument"
                       r"|one of the arguments .* is required")
#: A placeholder (``N``, ``COMMAND``) given where a number or a choice is read.
_PLACEHOLDER = re.compile(r"invalid (?:\w+ value|choice): '[A-Z][A-Z_]*'")


def _literals(page: Path) -> tuple[list[str], list[str]]:
    """The code blocks' lines (continuations joined) and the inline literals of ``page``."""
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".md":
        fence = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
        blocks = fence.findall(text)
        prose = fence.sub("", text)
        inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose)
    else:
        blocks = re.findall(r"::\n\n((?:[ \t]+.*\n|[ \t]*\n)+)", text)
        inline = re.findall(r"``(.+?)``", text, re.S)
    lines = [line for block in blocks
             for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    return lines, [" ".join(literal.split()) for literal in inline]


def _commands(line: str) -> list[str]:
    """The ``kcm`` commands of a shell line: each of its pipelines' commands (``&&``, ``;``,
    ``|``, ``$(...)``) whose program is ``kcm`` (``.venv/bin/kcm`` too), environment
    assignments before it left out; a comment ends the line."""
    line = re.sub(r"(^|\s)#.*", "", line)
    found = []
    for part in re.split(r"&&|\|\||;|\||\$\(|\)|`", line):
        words = part.split()
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
            words.pop(0)
        if words and re.fullmatch(r"(?:\S*/)?kcm", words[0]) and len(words) > 1:
            found.append(" ".join(["kcm", *words[1:]]))
    return found


@functools.cache
def invocations() -> list[tuple[str, str]]:
    """(page, command) of every ``kcm`` invocation the pages show."""
    found = []
    for page in PAGES:
        lines, inline = _literals(page)
        for line in lines:
            found += [(page.name, command) for command in _commands(line.lstrip("$ "))]
        for literal in inline:
            literal = literal.removeprefix("$ ").removeprefix(".venv/bin/")
            if literal.startswith("kcm ") and literal not in NOT_COMMANDS:
                found.append((page.name, literal))
    return found


def _argvs(command: str) -> list[list[str]]:
    """The argument lists ``command`` stands for: its redirections and ``[`` ``]`` left
    out (optional parts are given), ``(A | B)`` as A, ``a|b`` words as each of them, and
    cut at ``...``/``…`` (what follows is not said)."""
    command = command.replace("\\|", "|")  # (a Markdown table's)
    command = re.sub(r"\(([^|()]*)\|[^()]*\)", r"\1", command)
    command = re.sub(r"\s<<<.*|\s(?:\d?>>?|<)\s*\S+", " ", command)
    while re.search(r"\[(?=[-A-Za-z])[^\[\]]*\]", command):  # ([::1]:5698 is no option)
        command = re.sub(r"\[(?=[-A-Za-z])([^\[\]]*)\]", r" \1 ", command)
    try:
        words = shlex.split(command)[1:]
    except ValueError:
        words = command.split()[1:]
    for cut, word in enumerate(words):
        if word in ("...", "…") or word.endswith(("...", "…")):
            words = words[:cut]
            break
    argvs: list[list[str]] = [[]]
    for word in words:
        choices = word.split("|") if "|" in word and not word.startswith("-") else [word]
        argvs = [argv + [choice] for argv in argvs for choice in choices if choice]
    return argvs


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def parse_error(argv: list[str]) -> str | None:
    """What the parser says of ``argv`` (None: it parses, or lacks only what was left
    out)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(argv)
    except SystemExit as e:
        said = err.getvalue().strip()
        if not e.code or _PLACEHOLDER.search(said):
            return None
        if _LEFT_OUT.search(said) and "unrecognized" not in said:
            return None
        return said or f"exit {e.code}"
    return None


def test_the_docs_show_kcm_invocations() -> None:
    # (a guard on the extraction itself)
    shown = invocations()
    assert len(shown) > 150
    assert ("README.rst", "kcm key activate $uid") in shown
    assert any(command.startswith("kcm pki init var/pki") for _, command in shown)


def test_every_kcm_invocation_in_the_docs_parses() -> None:
    wrong = []
    for page, command in invocations():
        if re.match(r"kcm [\w -]*\w: ", command):  # a message the command prints
            continue
        for argv in _argvs(command):
            said = parse_error(argv)
            if said is not None:
                wrong.append(f"{page}: {command}: {said}")
    assert wrong == []


@pytest.mark.parametrize("argv", [["key", "--server", "[::1]:5698", "get", "UID"],
                                  ["core", "tenant", "ad", "demo"],
                                  ["audit", "tail", "--follow-all"]])
def test_a_wrong_invocation_is_caught(argv: list[str]) -> None:
    assert parse_error(argv) is not None


def _tree(parser: argparse.ArgumentParser, path: tuple[str, ...]
          ) -> list[tuple[tuple[str, ...], list[str]]]:
    """(subcommand path, option strings) of every option below ``parser``, and (path, [])
    for every subcommand; options kept out of ``--help`` are left out."""
    found: list[tuple[tuple[str, ...], list[str]]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(((*path, name), []))
                found += _tree(sub, (*path, name))
        elif (action.option_strings and action.help != argparse.SUPPRESS
              and not isinstance(action, argparse._HelpAction)):
            found.append((path, list(action.option_strings)))
    return found


def test_every_subcommand_and_option_is_named_in_the_docs() -> None:
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    text = " ".join(text.replace("``", "`").split())
    said = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    missing = []
    for path, options in _tree(_parser(), ("kcm",)):
        if not options:
            if " ".join(path) not in text:
                missing.append(" ".join(path))
        elif not said.intersection(options):
            missing.append(f"{' '.join(path)} {options[-1]}")
    assert missing == []
