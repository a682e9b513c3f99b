"""The README's "Configuration" and "kcm-gateway" sections name every setting of kcm-core
and kcm-gateway (the fields of their configuration classes), so that a new setting is not
left out of it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kcm.config_file import TlsFiles
from kcm.core.config import CoreConfig, CoreLimits
from kcm.gateway.config import GatewayConfig

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
