"""A refused use of a service key is logged at the gateway with what the request named: a
name the client sent is logged as it is only when it could be part of a principal's name
and is short; anything else as a short escaped marker, in either log format."""

from __future__ import annotations

import io
import json

import pytest
from twisted.logger import capturedLogs

from kcm.gateway.denied_uses import logged_name
from kcm.logging import event_as_json, log_observer
from tests.core_support import service_principal
from tests.unit.test_gateway_core_session import create_l4, linked  # noqa: F401 (fixture)

APP = service_principal("demo", "app")
HOSTILE = "billing\n2026-01-01T00:00:00+0000 [kcm.audit#info] FORGED \x1b[2J\x1b[31mred"


def denials(linked, item) -> list[dict]:  # noqa: F811
    with capturedLogs() as events:
        linked.via_gateway(APP, item)
    return [e for e in events if str(e.get("log_format", "")).startswith("denied ")]


def test_a_hostile_service_name_reaches_no_log_line_raw(linked) -> None:  # noqa: F811
    [denied] = denials(linked, create_l4(HOSTILE))
    assert denied["service"] == logged_name(f"demo/{HOSTILE}")
    assert denied["service"].startswith("'demo/billing\\n2026-01-01T00:00:00+0000 [kcm")
    for log_format in ("text", "json"):
        stream = io.StringIO()
        log_observer(stream, log_format=log_format)(denied)
        line = stream.getvalue()
        assert line.count("\n") == 1 and "\x1b" not in line and "(74 chars)" in line


def test_a_long_service_name_makes_a_short_line(linked) -> None:  # noqa: F811
    [denied] = denials(linked, create_l4("b" * 200_000))
    line = event_as_json(denied)
    assert len(line) < 1024, line
    assert json.loads(line)["service"].endswith(" (200005 chars)")


@pytest.mark.parametrize(("sent", "logged"), [
    (None, None),
    ("demo/app", "demo/app"),
    ("l3-0f8e2b7a-1c4d-4e5f-9a8b-7c6d5e4f3a2b", "l3-0f8e2b7a-1c4d-4e5f-9a8b-7c6d5e4f3a2b"),
    ("demo/..", "'demo/..' (7 chars)"),
    ("demo/a b", "'demo/a b' (8 chars)"),
    ("demo/caf\u00e9", "'demo/caf\\xe9' (9 chars)"),
    ("x" * 65, "'" + "x" * 47 + "... (65 chars)"),
    ("\U0001f600" * 100, "'" + "\\U0001f600" * 4 + "\\U0001f... (100 chars)"),
])
def test_logged_names(sent: str | None, logged: str | None) -> None:
    assert logged_name(sent) == logged
    assert logged is None or len(logged) <= 70
