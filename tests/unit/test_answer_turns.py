"""kcm.core.answer_turns: the answers waiting for a link, taken in turn by tenant."""

from __future__ import annotations

import pytest

from kcm.core.answer_turns import AnswerTurns


def test_each_key_in_turn_each_in_its_order() -> None:
    turns = AnswerTurns()
    for frame in (b"a1", b"a2", b"a3"):
        turns.append("a", frame)
    turns.append("b", b"b1")
    turns.append("c", b"c1")
    turns.append("b", b"b2")
    assert len(turns) == 6
    assert [turns.popleft() for _ in range(6)] == [b"a1", b"b1", b"c1", b"a2", b"b2", b"a3"]
    assert not turns and len(turns) == 0
    with pytest.raises(IndexError):
        turns.popleft()


def test_a_key_that_comes_back_waits_its_turn() -> None:
    turns = AnswerTurns()
    turns.append("a", b"a1")
    turns.append("b", b"b1")
    assert turns.popleft() == b"a1"
    turns.append("a", b"a2")
    assert [turns.popleft(), turns.popleft()] == [b"b1", b"a2"]
    turns.append("c", b"c1")
    turns.clear()
    assert not turns and len(turns) == 0
