"""The README's "Configuration" and "kcm-gateway" sections name every setting of kcm-core
and kcm-gateway (the fields of their configuration classes), so that a new setting is not
left out of it; and the other way, every setting README.rst and docs/*.md name (with its
table, in a TOML example, in operations.md's tables) is one the loaders read, with the
default the tables give."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path

import pytest

from kcm.client.config import SETTINGS as CLIENT_SETTINGS
from kcm.config_file import TlsFiles
from kcm.core.config import CoreConfig, CoreLimits
from kcm.core.config import load_config as load_core_config
from kcm.gateway.config import GatewayConfig
from kcm.gateway.config import load_config as load_gateway_config
from kcm.kmip_protocol import ConnectionLimits

README = Path(__file__).resolve().parents[2] / "README.rst"

#: Tables of settings, named by their own settings rather than by themselves.
_TABLES = {"tls", "limits"}


def _named() -> set[str]:
    """The setting names in literals (````...````) of the two sections."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\nConfiguration\n=====")
    end = text.index("\nThe ``kcm`` command\n=====")
    literals = re.findall(r"``(.+?)``", text[start:end], re.S)
    return {word for literal in literals for word in re.findall(r"[a-z0-9_.]+", literal)}


@pytest.mark.parametrize(("prefix", "cls"), [
    ("", CoreConfig), ("limits.", CoreLimits), ("tls.", TlsFiles), ("", GatewayConfig)])
def test_the_readme_names_every_setting(prefix: str, cls: type) -> None:
    named = _named()
    missing = [field.name for field in dataclasses.fields(cls)
               if field.name not in _TABLES
               and field.name not in named and prefix + field.name not in named]
    assert missing == []


# The other way, and the other pages: every setting the docs name is one the loaders read,
# spelt as they read it, with the default they have. ----------------------------------------

DOCS = README.parent / "docs"
#: The pages that say what this release does (release-notes.md tells of earlier ones).
PAGES = [README, *sorted(p for p in DOCS.glob("*.md") if p.name != "release-notes.md")]


def _fields(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)} - _TABLES


#: Each table a configuration file may have, and the settings its loader reads.
SECTIONS = {
    "core": _fields(CoreConfig), "core.tls": _fields(TlsFiles), "core.limits": _fields(CoreLimits),
    "gateway": _fields(GatewayConfig), "gateway.tls": _fields(TlsFiles),
    "gateway.limits": _fields(ConnectionLimits), "client": set(CLIENT_SETTINGS),
}


def _literals(page: Path) -> list[str]:
    """The inline literals of ``page`` (its prose: code blocks are read as TOML below)."""
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".rst":
        return [" ".join(literal.split()) for literal in re.findall(r"``(.+?)``", text, re.S)]
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"^```.*?^```", "", text,
                                                         flags=re.S | re.M))


def setting_exists(name: str) -> bool:
    """Whether ``name`` (``core.listen``, ``gateway.tls.crl``, ``limits.max_pending``,
    ``tls.crl``, ``client.timeout``, ``core.tls``) is a setting or a table of one."""
    section, _, rest = name.partition(".")
    if section in ("limits", "tls"):
        section, rest = "core", name
    head, _, tail = rest.partition(".")
    if not rest:
        return section in SECTIONS
    if f"{section}.{head}" in SECTIONS:
        return not tail or tail in SECTIONS[f"{section}.{head}"]
    return not tail and head in SECTIONS.get(section, set())


#: A setting named with its table (``core.listen``, ``[gateway.tls]``, ``limits.idle_timeout``).
_DOTTED = re.compile(r"(?<![\w./-])\[?((?:core|gateway|client|limits|tls)\.[a-z0-9_.]*[a-z0-9_])")
#: Dotted words that are file or host names, not settings.
_NOT_SETTINGS = {"core.kcm.internal", "core.toml", "core.pem", "gateway.pem"}


def test_every_setting_the_docs_name_with_its_table_exists() -> None:
    unknown = sorted({f"{page.name}: {name}" for page in PAGES for literal in _literals(page)
                      for name in _DOTTED.findall(literal)
                      if name not in _NOT_SETTINGS and not setting_exists(name)})
    assert unknown == []


def test_every_toml_example_in_the_docs_names_settings_that_exist() -> None:
    unknown = []
    for page in PAGES:
        for block in re.findall(r"^```toml\n(.*?)^```", page.read_text(encoding="utf-8"),
                                re.S | re.M):
            document = tomllib.loads(block)
            for table, values in document.items():
                if table not in ("core", "gateway", "client"):
                    continue  # (a policy file's, or a bare setting shown alone)
                for key, value in values.items():
                    name = f"{table}.{key}"
                    if isinstance(value, dict):
                        unknown += [f"{page.name}: {name}.{k}" for k in value
                                    if not setting_exists(f"{name}.{k}")]
                    elif not setting_exists(name):
                        unknown.append(f"{page.name}: {name}")
    assert unknown == []


def test_the_example_files_are_read_by_the_loaders() -> None:
    core = load_core_config(README.parent / "etc" / "kcm-core.toml")
    gateway = load_gateway_config(README.parent / "etc" / "kcm-gateway.toml")
    assert core.listen and gateway.listen


def test_the_sdk_docs_name_every_client_setting() -> None:
    named = {word for literal in _literals(DOCS / "sdk.md")
             for word in re.findall(r"[a-z_]+", literal)}
    assert sorted(set(CLIENT_SETTINGS) - named) == []


def _documented_value(cell: str) -> object:
    """A default as the tables write it: ``none``, ``empty (off)``, a literal, or a number
    with its unit (``300 s``, ``1 MiB (1048576 bytes)``, ``604,800 s (7 days)``)."""
    cell = cell.strip()
    if cell.startswith("none"):
        return None
    if cell.startswith("empty"):
        return ""
    literal = re.match(r'`"?([^`"]*)"?`', cell)
    if literal:
        return literal.group(1)
    number = re.match(r"([\d,]+(?:\.\d+)?)\s*(MiB|KiB|ms|s\b)?", cell)
    assert number, cell
    unit = {"MiB": 1 << 20, "KiB": 1 << 10, "ms": 0.001}.get(number.group(2) or "", 1)
    return float(number.group(1).replace(",", "")) * unit


def _same(documented: object, value: object) -> bool:
    if isinstance(value, tuple):
        value = ",".join(value)
    if isinstance(value, bool):  # (written as the TOML literal, `true` or `false`)
        value = str(value).lower()
    if isinstance(documented, float) and isinstance(value, int | float):
        return math.isclose(documented, value)
    return documented == value


def _code_default(name: str, *, limits: bool = False) -> object:
    core, gateway = CoreConfig(), GatewayConfig()
    if limits:
        return getattr(core.limits, name)
    if name.startswith("tls."):
        return getattr(core.tls, name[4:])
    return getattr(core, name) if hasattr(core, name) else getattr(gateway, name)


OPERATIONS = DOCS / "operations.md"


def documented_defaults() -> list[tuple[str, object, object]]:
    """(setting, default as documented, the code's) of operations.md's "Configuration"
    table and of its "Limits and hostile clients" table of ``[core.limits]``."""
    text = OPERATIONS.read_text(encoding="utf-8")
    found = []
    settings = text[text.index("| setting | default | meaning |"):text.index("### IPv6")]
    for name, cell in re.findall(r"^\| `([a-z0-9_.]+)`[^|]*\| ([^|]*) \|", settings, re.M):
        if not cell.startswith("`var/pki/"):  # (tls.cert, tls.key, tls.ca together)
            found.append((name, _documented_value(cell), _code_default(name)))
    limits = text[text.index("| bound | setting (`[core.limits]`)"):
                  text.index("**Before any batch item")]
    for name, cell in re.findall(r"^\| [^|]* \| `([a-z0-9_]+)`[^|]*\| ([^|]*) \|", limits, re.M):
        found.append((name, _documented_value(cell), _code_default(name, limits=True)))
    return found


def test_the_documented_defaults_are_the_loaders() -> None:
    rows = documented_defaults()
    assert len(rows) > 40  # (both tables read)
    wrong = [row for row in rows if not _same(row[1], row[2])]
    assert wrong == []


def test_the_tables_name_every_setting_of_kcm_core() -> None:
    named = {name for name, _, _ in documented_defaults()} | {"tls.cert", "tls.key", "tls.ca"}
    missing = sorted(name for name in _fields(CoreConfig) | {f"tls.{n}" for n in _fields(TlsFiles)}
                     if name not in named)
    missing += sorted(name for name in _fields(CoreLimits) if name not in named)
    assert missing == []


def _twistd_options() -> set[str]:
    from twisted.scripts.twistd import ServerOptions

    from kcm.core.tap import Options as CoreOptions
    from kcm.gateway.tap import Options as GatewayOptions

    options = {f"--{option[0]}" for cls in (CoreOptions, GatewayOptions)
               for option in cls.optParameters}
    server = ServerOptions()
    return options | {"--help"} | {f"--{long}" for long, *_ in (*server.optParameters,
                                                             *server.optFlags)}


def test_every_command_line_override_the_settings_docs_name_exists() -> None:
    # The settings' own pages: README's "Configuration" and "kcm-gateway" sections and
    # operations.md's two tables, where a setting's override is given beside it.
    readme = README.read_text(encoding="utf-8")
    readme = readme[readme.index("\nConfiguration\n====="):readme.index("\nThe ``kcm`` command")]
    text = OPERATIONS.read_text(encoding="utf-8")
    tables = text[text.index("| setting | default | meaning |"):text.index("### IPv6")] + text[
        text.index("| bound | setting (`[core.limits]`)"):text.index("**Before any batch item")]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", readme + tables))
    assert len(named) > 20
    assert sorted(named - _twistd_options()) == []
