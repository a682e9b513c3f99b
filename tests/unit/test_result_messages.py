"""Every Result Message the server sends is short printable ASCII (kcm.kernel.result_messages),
whatever an error said; and the messages kcm writes are ASCII at their source."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kcm.kernel.missing import object_not_found
from kcm.kernel.responses import fail_with, failed_item
from kcm.kernel.result_messages import MAX_LENGTH, result_message
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.messages import ResponseBatchItem
from kcm.l4.token import TokenError

KCM = Path(__file__).resolve().parents[2] / "kcm"


def _is_short_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable() and len(text) <= MAX_LENGTH


@given(st.text(max_size=2000))
def test_any_message_becomes_short_printable_ascii(text: str) -> None:
    assert _is_short_ascii(result_message(text))


@given(st.text(max_size=2000))
def test_every_failed_item_carries_short_printable_ascii(text: str) -> None:
    item = failed_item(Operation.GET, None, (1, 2), ResultReason.ITEM_NOT_FOUND, text)
    assert _is_short_ascii(item.result_message)
    response = ResponseBatchItem(operation=Operation.GET, result_status=ResultStatus.SUCCESS)
    fail_with(response, (2, 1), object_not_found(text))
    assert _is_short_ascii(response.result_message)


def test_short_ascii_messages_are_kept_as_they_are() -> None:
    assert result_message("no object 1234") == "no object 1234"


def test_typographic_characters_are_spelled_in_ascii_and_long_ones_cut() -> None:
    assert result_message("no L4 \u2018l4.1.AAAA\u2019\u2026") == "no L4 'l4.1.AAAA'..."
    cut = result_message("x" * 10_000)
    assert len(cut) == MAX_LENGTH and cut.endswith("...")


def test_a_client_identifier_is_named_by_a_short_label() -> None:
    message = object_not_found("l4.1." + "A" * 5000 + "\u2026\xff").message
    assert _is_short_ascii(message) and len(message) < 40


def _string_parts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant)]
    if isinstance(node, ast.BinOp):
        return _string_parts(node.left) + _string_parts(node.right)
    return []


def test_every_message_kcm_writes_is_ascii_at_its_source() -> None:
    """The literal text of every error kcm raises or builds (KmipError and its subclasses,
    TokenError and the other ValueErrors that become messages) is printable ASCII."""
    error_names = {"KmipError", "ServiceKeyUseDenied", TokenError.__name__, "ValueError",
                   "CryptoRefused", "BatchStopped"}
    offenders = []
    for path in KCM.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in error_names:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for text in _string_parts(arg):
                    if not (text.isascii() and (text.isprintable() or text == "")):
                        offenders.append(f"{path.relative_to(KCM)}:{node.lineno}: {text!r}")
    assert offenders == []
