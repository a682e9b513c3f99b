"""When a tenant or service key not due is judged next (:mod:`kcm.core.rotation_schedule`)."""

from __future__ import annotations

from kcm.core.managed import LATEST_DATE
from kcm.core.rotation_schedule import due_at


def test_a_key_is_due_an_interval_after_its_age_began_in_whole_seconds() -> None:
    assert due_at(1_000, 60) == 1_060
    # (an age that began at no date is counted from the sweep's time, a float: never
    # later than the judgement, which compares the float)
    assert due_at(1_000.9, 60) == 1_060
    assert due_at(0, 60) == 60  # (a date of 1970 is a date)


def test_without_an_interval_only_a_write_wakes_it() -> None:
    assert due_at(1_000, 0) is None


def test_a_date_near_the_latest_is_due_at_the_latest() -> None:
    assert due_at(LATEST_DATE - 5, 3600) == LATEST_DATE
