"""kcm._tls_calls refuses what is not a pointer before it calls OpenSSL with it (its calls
themselves are tested over real connections: tests/integration/test_eager_tls.py)."""

from __future__ import annotations

import pytest

from kcm import eager_tls


@pytest.fixture
def calls():
    assert eager_tls._calls is not None, "kcm._tls_calls is not built (make .venv/.installed)"
    return eager_tls._calls


def test_null_pointers_are_refused(calls) -> None:
    with pytest.raises(ValueError, match="null pointer"):
        calls.receive(0, 1, b"")
    with pytest.raises(ValueError, match="null pointer"):
        calls.send(1, 0, b"", -1)
    with pytest.raises(ValueError, match="null pointer"):
        calls.take(0)


def test_what_is_not_an_address_is_refused(calls) -> None:
    with pytest.raises(TypeError):
        calls.take("0x1234")
    with pytest.raises(OverflowError):
        calls.take(-1)
    with pytest.raises(TypeError):
        calls.receive(1, 1, "text")  # received bytes only
