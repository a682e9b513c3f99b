"""docs/operations.md's metrics tables ("Metrics and health") and the metrics the code
registers agree, both ways: every family kcm/ registers is a row with its type and labels,
every row is a family kcm/ registers, and every ``kcm_...`` metric the docs and README name
elsewhere exists. The code's families are read from its source (the calls that make them),
so that a family registered only when a feature is on (``tls.crl``, ``busy_poll_us``,
workers) is not missed."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"

#: The classes and functions that make a metric family: where its label names are (the
#: position of the argument, or its keyword) and its type.
_MAKERS = {
    "Counter": ("counter", 2, "labelnames"), "Histogram": ("histogram", 2, "labelnames"),
    "Gauge": ("gauge", 2, "labelnames"), "ReactorCounter": ("counter", 2, "labelnames"),
    "ReactorHistogram": ("histogram", 2, "labelnames"),
    "CallbackGauge": ("gauge", 2, "labelnames"), "CallbackCounter": ("counter", 2, "labelnames"),
    "_CallbackCounter": ("counter", 3, "labels"),
    "CounterMetricFamily": ("counter", None, "labels"),
    "GaugeMetricFamily": ("gauge", None, "labels"),
    "HistogramMetricFamily": ("histogram", None, "labels"),
}
#: The label every sample of a gateway with workers gets from its supervisor
#: (kcm.gateway.worker_metrics), said once in the docs rather than in each row.
_WORKER = "worker"


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _strings(node: ast.AST | None, constants: dict[str, str]) -> tuple[str, ...]:
    """A list or tuple of strings, given as literals or as module constants' names."""
    if not isinstance(node, ast.List | ast.Tuple):
        return ()
    return tuple(e.value if isinstance(e, ast.Constant) else constants[e.id]
                 for e in node.elts if isinstance(e, ast.Constant | ast.Name))


def _constants(trees: list[ast.Module]) -> dict[str, str]:
    """The module-level ``NAME = "string"`` of ``trees``."""
    return {target.id: statement.value.value for tree in trees for statement in tree.body
            if isinstance(statement, ast.Assign)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
            for target in statement.targets if isinstance(target, ast.Name)}


def _prefixes(trees: list[ast.Module]) -> list[str]:
    """The prefixes :func:`kcm.tls_metrics.tls_collectors` is called with."""
    return [call.args[0].value for tree in trees for call in ast.walk(tree)
            if isinstance(call, ast.Call) and _callee(call) == "tls_collectors"
            and call.args and isinstance(call.args[0], ast.Constant)]


#: A module that may make a family (only these are parsed: parsing all of kcm/ takes seconds).
_MAKES = re.compile(r"(?:Counter|Gauge|Histogram|MetricFamily|tls_collectors)\(|WORKER_LABEL =")


@functools.cache
def registered() -> dict[str, tuple[str, frozenset[str]]]:
    """Every family kcm/ makes: its exposed name (a counter's with ``_total``) to its type
    and label names. A family the supervisor of gateway workers makes again with a
    ``worker`` label (its own ``connections_refused``) is given without it."""
    sources = [path.read_text(encoding="utf-8") for path in sorted((REPO / "kcm").rglob("*.py"))]
    trees = [ast.parse(source) for source in sources if _MAKES.search(source)]
    prefixes, constants = _prefixes(trees), _constants(trees)
    made: dict[str, tuple[set[str], list[frozenset[str]]]] = {}
    for tree in trees:
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or _callee(call) not in _MAKERS or not call.args:
                continue
            kind, position, keyword = _MAKERS[_callee(call)]
            first = call.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
            elif (isinstance(first, ast.JoinedStr) and len(first.values) == 2
                  and isinstance(first.values[0], ast.FormattedValue)
                  and isinstance(first.values[1], ast.Constant)):
                names = [prefix + str(first.values[1].value) for prefix in prefixes]
            else:
                continue
            labels = _strings(call.args[position], constants) if (
                position is not None and len(call.args) > position) else ()
            for word in call.keywords:
                if word.arg == keyword:
                    labels = _strings(word.value, constants)
            for name in names:
                kinds, label_sets = made.setdefault(
                    name + "_total" if kind == "counter" else name, (set(), []))
                kinds.add(kind)
                label_sets.append(frozenset(labels))
    found = {}
    for name, (kinds, label_sets) in made.items():
        labels = frozenset().union(*label_sets)
        if any(_WORKER not in each for each in label_sets):
            labels -= {_WORKER}
        found[name] = ("/".join(sorted(kinds)), labels)
    return found


_ROW = re.compile(r"^\s*\|\s*`(kcm_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", re.M)


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """The rows of operations.md's metrics tables: name to type and label names (the
    backquoted words of the labels cell, without the values said in parentheses)."""
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for name, kind, cell in _ROW.findall(OPERATIONS.read_text(encoding="utf-8")):
        labels = re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", cell))
        assert name not in rows, f"{name} has two rows"
        rows[name] = (kind, frozenset(labels))
    return rows


def test_every_registered_metric_has_a_row_with_its_type_and_labels() -> None:
    rows = documented()
    wrong = {name: (made, rows.get(name)) for name, made in registered().items()
             if rows.get(name) != made}
    assert wrong == {}


def test_every_row_is_a_registered_metric() -> None:
    assert sorted(set(documented()) - set(registered())) == []


def test_every_metric_the_docs_name_exists() -> None:
    made = registered()
    pages = [REPO / "README.rst", *sorted((REPO / "docs").glob("*.md"))]
    unknown = sorted({f"{page.name}: {name}" for page in pages
                      for name in re.findall(r"\bkcm_(?:core|gateway)_[a-z0-9_]*[a-z0-9]",
                                             page.read_text(encoding="utf-8"))
                      if name not in made
                      and re.sub(r"_(bucket|sum|count)$", "", name) not in made})
    assert unknown == []


def test_the_extraction_finds_families_of_every_kind() -> None:
    # (a guard on the test itself: a maker renamed would empty the comparison)
    made = registered()
    assert made["kcm_core_requests_total"] == ("counter",
                                               frozenset({"operation", "result"}))
    assert made["kcm_gateway_crl_load_failures_total"] == ("counter", frozenset())
    assert made["kcm_gateway_handoffs_total"] == ("counter", frozenset({"worker", "by"}))
    assert made["kcm_core_request_duration_seconds"][0] == "histogram"
    assert len(made) > 50
