"""kcm.gateway.balance: which worker the supervisor hands a connection to."""

from __future__ import annotations

from kcm.gateway.balance import NEAR_SLACK, LeastConnections


def balance(*workers: int) -> LeastConnections:
    chosen = LeastConnections()
    for worker in workers:
        chosen.add(worker)
    return chosen


def hand(chosen: LeastConnections, count: int) -> list[int]:
    """Hand ``count`` connections, each to the first worker ranked; who got them."""
    got = []
    for _ in range(count):
        worker = chosen.ranked()[0]
        chosen.handed(worker)
        got.append(worker)
    return got


def test_ties_go_round_robin() -> None:
    assert hand(balance(1, 2, 3), 7) == [1, 2, 3, 1, 2, 3, 1]


def test_eight_connections_fall_four_and_four() -> None:
    chosen = balance(1, 2)
    assert sorted(hand(chosen, 8)) == [1] * 4 + [2] * 4
    assert (chosen.load(1), chosen.load(2)) == (4, 4)


def test_the_least_loaded_comes_first_by_its_report_plus_what_it_was_handed_since() -> None:
    chosen = balance(1, 2)
    hand(chosen, 8)
    chosen.reported(1, 1, 4)  # worker 1 received its four; three of them have closed
    assert chosen.load(1) == 1 and chosen.ranked() == [1, 2]
    assert hand(chosen, 3) == [1, 1, 1]
    assert chosen.load(1) == 4
    chosen.reported(1, 2, 5)  # a report that crosses two connections in flight...
    assert chosen.load(1) == 4  # ...counts them as handed, not yet received
    assert chosen.ranked() == [2, 1]  # equal: the next after the last handed (1)


def test_a_report_never_counts_more_received_than_handed() -> None:
    chosen = balance(1)
    chosen.reported(1, 0, 3)  # (from before a restart; cannot happen, but harmless)
    assert chosen.load(1) == 0


def test_a_removed_worker_is_not_chosen_and_a_restarted_one_starts_afresh() -> None:
    chosen = balance(1, 2)
    hand(chosen, 4)
    chosen.remove(1)
    assert 1 not in chosen and len(chosen) == 1
    assert chosen.ranked() == [2]
    chosen.reported(1, 9, 9)  # a late report from the worker gone: ignored
    chosen.add(1)
    assert chosen.load(1) == 0 and chosen.ranked() == [1, 2]


def test_no_workers_rank_nothing() -> None:
    assert LeastConnections().ranked() == []


def test_ready_workers_take_the_connections_while_any_is_ready() -> None:
    chosen = balance(1, 2, 3)
    assert hand(chosen, 3) == [1, 2, 3]  # none is ready yet: all take them
    chosen.mark_ready(2)
    chosen.mark_ready(3)
    assert hand(chosen, 4) == [2, 3, 2, 3]  # worker 1 (not ready) gets none
    chosen.add(2)  # worker 2 started again: not ready, its counts afresh
    assert 2 not in chosen.ready
    assert hand(chosen, 2) == [3, 3]
    chosen.remove(3)
    assert hand(chosen, 2) == [2, 1]  # none ready left: the fewest, as before
    chosen.mark_ready(9)  # a worker it does not know: nothing
    assert chosen.ready == set()


def test_a_connection_goes_to_the_workers_near_it_within_the_slack() -> None:
    chosen = balance(1, 2)
    # A burst from the CPU of worker 2: it takes them until it holds NEAR_SLACK more than 1.
    got = []
    for _ in range(NEAR_SLACK + 2):
        worker = chosen.ranked({2})[0]
        chosen.handed(worker)
        got.append(worker)
    assert got == [2] * (NEAR_SLACK + 1) + [1]
    # Then the burst from worker 1's CPU evens them out again.
    assert hand_near(chosen, {1}, NEAR_SLACK) == [1] * NEAR_SLACK
    assert chosen.load(1) == chosen.load(2) == NEAR_SLACK + 1


def test_near_only_reorders_the_ready_workers() -> None:
    chosen = balance(1, 2, 3)
    chosen.mark_ready(1)
    chosen.mark_ready(2)
    assert chosen.ranked({3}) == [1, 2]  # worker 3 is not ready: near or not, it waits
    assert chosen.ranked({2}) == [2, 1]
    assert chosen.ranked(()) == chosen.ranked() == [1, 2]


def hand_near(chosen: LeastConnections, near: set[int], count: int) -> list[int]:
    got = []
    for _ in range(count):
        worker = chosen.ranked(near)[0]
        chosen.handed(worker)
        got.append(worker)
    return got
