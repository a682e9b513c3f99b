"""The writer's time shares: who is served next, and what is remembered."""

from __future__ import annotations

import pytest

from kcm.core import writer_shares
from kcm.core.writer_shares import WriterShares


def test_the_key_that_used_least_goes_first_and_ties_go_in_order_of_arrival() -> None:
    shares = WriterShares()
    for key in ("a", "b", "c"):
        shares.arrive(key)
    assert shares.take() == "a"
    shares.charge("a", 0.010, waits_again=True)
    assert shares.take() == "b"
    shares.charge("b", 0.001, waits_again=True)
    assert shares.take() == "c"  # never served: at the floor, before both
    shares.charge("c", 0.001, waits_again=False)
    assert [shares.take() for _ in range(len(shares))] == ["b", "a"]


def test_a_key_that_begins_to_wait_starts_at_the_floor_or_at_its_own_time() -> None:
    shares = WriterShares()
    shares.arrive("busy")
    for _ in range(10):
        assert shares.take() == "busy"
        shares.charge("busy", 0.01, waits_again=True)
    assert shares.floor == pytest.approx(0.09)
    shares.arrive("new")  # at the floor: it banks none of the 0.1 s it did not use
    assert shares.next_key() == "new"
    shares.take()
    shares.charge("new", 0.02, waits_again=False)  # 0.01 past busy's 0.1
    assert shares.take() == "busy"
    shares.charge("busy", 0.0, waits_again=False)
    shares.arrive("new")  # it sheds nothing by pausing
    shares.arrive("busy")
    assert shares.take() == "busy"


def test_a_long_last_job_is_expected_long() -> None:
    shares = WriterShares(alone_seconds=0.005)
    assert not shares.expected("a")
    shares.arrive("a")
    shares.take()
    shares.charge("a", 0.005, waits_again=False)
    assert shares.expected("a")
    shares.arrive("a")
    shares.take()
    shares.charge("a", 0.0001, waits_again=False)
    assert not shares.expected("a")
    with pytest.raises(ValueError):
        WriterShares(alone_seconds=0)


def test_keys_not_waiting_are_forgotten_past_the_bound_and_waiting_ones_never() -> None:
    shares = WriterShares()
    shares.arrive("waits")
    assert shares.take() == "waits"
    shares.charge("waits", 1.0, waits_again=True)  # far ahead: waits while the others go
    for n in range(writer_shares.REMEMBERED * 3):
        shares.arrive(n)
        assert shares.take() == n
        shares.charge(n, 0.00001, waits_again=False)
        assert len(shares._used) <= writer_shares.REMEMBERED + 1
    assert "waits" in shares._used and shares.take() == "waits"
    shares.clear()
    assert len(shares) == 0 and shares.next_key() is None


def test_keys_waiting_beyond_the_bound_are_not_looked_through_at_each_charge() -> None:
    shares = WriterShares()
    looked: list[int] = []
    forget = shares._forget
    shares._forget = lambda: (looked.append(1), forget())  # type: ignore[method-assign]
    for n in range(writer_shares.REMEMBERED + 1000):  # each ran one job and waits again
        shares.arrive(n)
        assert shares.take() == n
        shares.charge(n, 0.001, waits_again=True)
    for n in range(100):  # keys that come and go meanwhile
        shares.arrive(("once", n))
        shares.take()
        shares.charge(("once", n), 0.0, waits_again=False)
    assert looked == [] and len(shares) == writer_shares.REMEMBERED + 1000
