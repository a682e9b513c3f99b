"""kcm.busy_poll: after a poll that found events the next wait asks again without sleeping,
giving the CPU away between asks, for up to its window, then sleeps; never past a timeout;
not once other threads have had half the window; an idle process (whose last poll found
nothing) sleeps at once."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kcm.busy_poll import MAX_WINDOW, OTHERS_SHARE, SpinningWait


class _Kernel:
    """A fake ``epoll.poll`` on a fake clock: events ready from a given time on, and a
    sleeping poll that advances the clock to its timeout or to the events."""

    def __init__(self) -> None:
        self.time = 100.0
        self.ready_at: float | None = None
        self.calls: list[float] = []  # each poll's timeout
        self.yields = 0

    def now(self) -> float:
        return self.time

    def give_way(self) -> None:
        self.yields += 1
        self.time += 2e-6  # nobody else wants the CPU: a yield takes 2 µs

    def poll(self, timeout: float, count: int) -> Sequence[tuple[int, int]]:
        self.calls.append(timeout)
        if timeout == 0:
            self.time += 8e-6  # an ask takes 8 µs
        if self.ready_at is not None and self.time >= self.ready_at:
            self.ready_at = None
            return [(3, 1)]
        if timeout == 0:
            return []
        if self.ready_at is not None and (timeout < 0 or self.ready_at <= self.time + timeout):
            self.time = self.ready_at
            self.ready_at = None
            return [(3, 1)]
        if timeout < 0:
            raise AssertionError("a poll would sleep for ever")
        self.time += timeout
        return []


def _wait(window: float, kernel: _Kernel) -> SpinningWait:
    return SpinningWait(window, now=kernel.now, give_way=kernel.give_way)


def _armed(window: float, kernel: _Kernel) -> SpinningWait:
    """A wait whose last poll found events."""
    wait = _wait(window, kernel)
    kernel.ready_at = kernel.time
    assert wait.wait(kernel.poll, None, 8) == [(3, 1)]
    kernel.calls.clear()
    return wait


def test_an_idle_process_sleeps_at_once() -> None:
    kernel = _Kernel()
    wait = _wait(500e-6, kernel)
    kernel.ready_at = kernel.time + 1.0
    assert wait.wait(kernel.poll, None, 8) == [(3, 1)]
    assert kernel.calls == [-1]  # one sleeping poll, no spin
    assert kernel.yields == 0


def test_after_events_it_spins_and_takes_an_event_that_comes_within_the_window() -> None:
    kernel = _Kernel()
    wait = _armed(500e-6, kernel)
    kernel.ready_at = kernel.time + 200e-6
    assert wait.wait(kernel.poll, None, 8) == [(3, 1)]
    assert kernel.calls and all(timeout == 0 for timeout in kernel.calls)  # never slept
    assert 15 <= kernel.yields <= 25  # gave the CPU away between asks (10 µs apart)
    assert wait.spins == {"event": 1, "window": 0, "ceded": 0}
    assert wait.spun == pytest.approx(200e-6, abs=10e-6)
    # It found events: the next wait spins again.
    kernel.calls.clear()
    kernel.ready_at = kernel.time + 100e-6
    assert wait.wait(kernel.poll, 1.0, 8) == [(3, 1)]
    assert all(timeout == 0 for timeout in kernel.calls)


def test_when_the_window_passes_with_nothing_it_sleeps_and_then_sleeps_at_once() -> None:
    kernel = _Kernel()
    wait = _armed(500e-6, kernel)
    started = kernel.time
    kernel.ready_at = started + 0.3
    assert wait.wait(kernel.poll, None, 8) == [(3, 1)]
    assert kernel.calls[:-1] == [0] * (len(kernel.calls) - 1)
    assert kernel.calls[-1] == -1  # then slept until the event
    assert wait.spins == {"event": 0, "window": 1, "ceded": 0}
    assert wait.spun == pytest.approx(500e-6, abs=10e-6)  # not the sleep
    assert kernel.time == pytest.approx(started + 0.3)
    # The next wait after a sleeping poll that found events spins; one that found nothing
    # (a timeout) makes the one after it sleep at once.
    kernel.calls.clear()
    assert wait.wait(kernel.poll, 0.002, 8) == []
    kernel.calls.clear()
    assert wait.wait(kernel.poll, 0.002, 8) == []
    assert kernel.calls == [0.002]


def test_the_sleep_after_a_spin_ends_at_the_timeout_it_was_given() -> None:
    kernel = _Kernel()
    wait = _armed(500e-6, kernel)
    started = kernel.time
    assert wait.wait(kernel.poll, 0.01, 8) == []
    assert kernel.time == pytest.approx(started + 0.01)  # not 0.01 after the spin
    assert kernel.calls[-1] == pytest.approx(0.01 - 500e-6, abs=20e-6)


def test_a_timeout_within_the_window_ends_the_spin_without_a_sleep() -> None:
    kernel = _Kernel()
    wait = _armed(500e-6, kernel)
    started = kernel.time
    assert wait.wait(kernel.poll, 100e-6, 8) == []
    assert all(timeout == 0 for timeout in kernel.calls)
    assert started + 100e-6 <= kernel.time <= started + 130e-6


def test_a_wait_with_no_time_to_wait_asks_once() -> None:
    kernel = _Kernel()
    wait = _armed(500e-6, kernel)
    assert wait.wait(kernel.poll, 0, 8) == []
    assert kernel.calls == [0]
    assert kernel.yields == 0


@pytest.mark.parametrize("window", [0, -1e-6, MAX_WINDOW * 2])
def test_a_window_out_of_bounds_is_refused(window: float) -> None:
    with pytest.raises(ValueError, match="busy-poll window"):
        SpinningWait(window)


def test_once_other_threads_have_had_half_the_window_it_sleeps() -> None:
    kernel = _Kernel()
    wait = _armed(1000e-6, kernel)

    def another_thread_runs() -> None:
        kernel.yields += 1
        kernel.time += 150e-6  # the yield came back only after another thread ran

    wait._give_way = another_thread_runs
    kernel.ready_at = kernel.time + 0.3
    assert wait.wait(kernel.poll, None, 8) == [(3, 1)]
    assert kernel.yields == 4  # 600 µs given away > 500 µs (OTHERS_SHARE): slept
    assert wait.spins == {"event": 0, "window": 0, "ceded": 1}
    assert kernel.calls == [0, 0, 0, 0, -1]
    assert OTHERS_SHARE == 0.5


def test_a_thread_that_runs_briefly_meanwhile_does_not_end_the_spin() -> None:
    kernel = _Kernel()
    wait = _armed(1000e-6, kernel)
    yields = kernel.give_way

    def once_another_thread_runs() -> None:
        yields()
        if kernel.yields == 3:
            kernel.time += 300e-6  # the core's thread, say, ran for 300 µs
    wait._give_way = once_another_thread_runs
    kernel.ready_at = kernel.time + 800e-6
    assert wait.wait(kernel.poll, None, 8) == [(3, 1)]
    assert all(timeout == 0 for timeout in kernel.calls)  # caught without sleeping
