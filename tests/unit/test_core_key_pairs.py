"""The key pairs made for one request before its group commit (kcm.core.context.KeyPairs):
each handed out once, and a request whose making stopped never makes one on the writer."""

from __future__ import annotations

import pytest

from kcm.core.context import KeyPairs, OperationContext, prepared_key_pairs
from kcm.kernel.batch import BatchStopped
from kcm.kmip.enums import ResultReason


def context() -> OperationContext:
    return OperationContext(session=None, caller=None, version=(2, 1), now=0,  # type: ignore[arg-type]
                            keyring=None, server_info=None,  # type: ignore[arg-type]
                            id_placeholder=None, random_bytes=None)  # type: ignore[arg-type]


def never(length: int) -> object:
    raise AssertionError("a key pair was made inline for a prepared request")


def test_each_pair_is_handed_out_once() -> None:
    pairs = KeyPairs()
    first, second, other = object(), object(), object()
    pairs.add(2048, first)
    pairs.add(2048, second)
    pairs.add(4096, other)
    token = prepared_key_pairs.set(pairs)
    try:
        ctx = context()
    finally:
        prepared_key_pairs.reset(token)
    assert ctx.key_pairs is pairs
    taken = [ctx.new_key_pair(2048, never), ctx.new_key_pair(2048, never)]
    assert sorted(map(id, taken)) == sorted(map(id, (first, second)))
    assert ctx.new_key_pair(4096, never) is other
    with pytest.raises(RuntimeError):
        ctx.new_key_pair(2048, never)


def test_a_pair_not_made_by_the_deadline_stops_the_item() -> None:
    pairs = KeyPairs()
    pairs.add(1024, object())
    pairs.stopped = "request deadline of 10 s exceeded"
    pairs.take(1024)
    with pytest.raises(BatchStopped) as stopped:
        pairs.take(1024)
    assert (stopped.value.reason, stopped.value.message) == (
        ResultReason.GENERAL_FAILURE, "request deadline of 10 s exceeded")


def test_a_failed_making_fails_the_items_left_and_clear_drops_the_rest() -> None:
    pairs = KeyPairs()
    pairs.add(1024, object())
    pairs.failure = ValueError("no entropy")
    with pytest.raises(ValueError, match="no entropy"):
        pairs.take(2048)
    pairs.clear()
    with pytest.raises(ValueError):
        pairs.take(1024)


def test_a_request_answered_in_process_makes_its_pairs_inline() -> None:
    ctx = context()
    assert ctx.key_pairs is None
    assert ctx.new_key_pair(2048, lambda length: ("made", length)) == ("made", 2048)
