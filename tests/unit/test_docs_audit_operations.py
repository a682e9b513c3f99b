"""The audit records' operation names docs/operations.md tells operators to look for (and
``kcm audit export --operation`` to filter on) are the ones kcm/ writes, both ways: each
operation kcm-core or the ``kcm`` command records besides the KMIP operations is named there,
and each name the docs give an audit record is one of them. Read from the source: a module
constant ``..._OPERATION = "Name"`` or an ``operation="Name"`` argument."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"

_NAME = r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+"


@functools.cache
def recorded() -> set[str]:
    """The non-KMIP operation names kcm/ writes in audit records."""
    names = set()
    for path in (REPO / "kcm").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        if 'OPERATION = "' not in source and 'operation="' not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and (
                    isinstance(node.value.value, str)):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                if any(t.endswith("OPERATION") for t in targets):
                    names.add(node.value.value)
            elif isinstance(node, ast.keyword) and node.arg == "operation" and isinstance(
                    node.value, ast.Constant) and isinstance(node.value.value, str):
                names.add(node.value.value)
    return {name for name in names if re.fullmatch(_NAME, name)}


def documented() -> set[str]:
    """The names operations.md gives audit records: ``audited `Name```, ``audited as
    `Name```, ``the audit record `Name```, ```Name` audit record``, ``--operation Name``."""
    text = " ".join(OPERATIONS.read_text(encoding="utf-8").split())
    before = re.findall(rf"(?:audited(?: as)?|audit record|records?) `({_NAME})`", text)
    after = re.findall(rf"`({_NAME})` (?:audit )?records?", text)
    option = re.findall(rf"--operation[ =]({_NAME})", text)
    return {*before, *after, *option}


def test_the_extraction_finds_both_sides() -> None:
    assert {"AddTenant", "AutoRotate", "PurgeDestroyed"} <= recorded()
    assert {"AddTenant", "AutoRotate", "SetAccessPolicy"} <= documented()


def test_every_operation_kcm_records_is_in_operations_md() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert sorted(name for name in recorded() if f"`{name}`" not in text) == []


def test_every_audit_operation_operations_md_names_is_recorded() -> None:
    assert sorted(documented() - recorded()) == []
