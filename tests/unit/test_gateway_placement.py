"""kcm.gateway.placement: which CPU each worker is pinned to, and the kernel calls behind it
(the CPU a connection's packets arrive on; pinning a process with all its threads)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from kcm.gateway.placement import (
    PIN_MODES,
    incoming_cpu,
    usable_cpus,
    worker_cpus,
    workers_by_cpu,
)


@pytest.mark.parametrize(("count", "mode", "usable", "pinned"), [
    (2, "auto", [0, 1], {1: 0, 2: 1}),
    (4, "auto", [3, 1, 0, 2], {1: 0, 2: 1, 3: 2, 4: 3}),
    (3, "auto", [0, 1], {}),  # not one per CPU
    (2, "auto", [0, 1, 2, 3], {}),
    (3, "always", [4, 6], {1: 4, 2: 6, 3: 4}),  # round robin over the usable CPUs
    (1, "always", [0, 1], {1: 0}),
    (2, "never", [0, 1], {}),
    (2, "always", [7], {}),  # one CPU: nothing to choose
    (1, "auto", [7], {}),
])
def test_worker_cpus(count: int, mode: str, usable: list[int], pinned: dict[int, int]) -> None:
    assert worker_cpus(count, mode, usable) == pinned


def test_an_unknown_mode_is_refused() -> None:
    assert PIN_MODES == ("auto", "always", "never")
    with pytest.raises(ValueError, match="pin_workers"):
        worker_cpus(2, "sometimes", [0, 1])


def test_workers_by_cpu() -> None:
    assert workers_by_cpu({1: 4, 2: 6, 3: 4}) == {4: {1, 3}, 6: {2}}
    assert workers_by_cpu({}) == {}


def test_usable_cpus_are_this_process_affinity_in_order() -> None:
    assert usable_cpus() == sorted(os.sched_getaffinity(0))


def test_the_cpu_a_connection_arrives_on_is_the_client_thread_on_this_machine() -> None:
    """Over loopback the kernel processes a client's packets on the CPU its thread sends
    from: a client pinned to each usable CPU in turn is seen arriving on that CPU."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        for cpu in usable_cpus()[:4]:
            clients: list[socket.socket] = []

            def connect(on: int = cpu, clients: list[socket.socket] = clients) -> None:
                os.sched_setaffinity(0, {on})  # this thread only
                clients.append(socket.create_connection(listening.getsockname(), timeout=5))
                clients[-1].sendall(b"x")

            thread = threading.Thread(target=connect)
            thread.start()
            thread.join()
            accepted, _ = listening.accept()
            with accepted, clients[0]:
                assert accepted.recv(1) == b"x"
                assert incoming_cpu(accepted) == cpu


def test_a_socket_the_kernel_cannot_answer_for_has_no_cpu() -> None:
    sock = socket.socket()
    sock.close()
    assert incoming_cpu(sock) is None


_PINNED = """
import os, sys, threading, time
from kcm.gateway.placement import pin
cpu = int(sys.argv[1])
done = threading.Event()
before = threading.Thread(target=done.wait)
before.start()
pin(cpu)
after = threading.Thread(target=done.wait)
after.start()
allowed = {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")}
done.set()
print(len(allowed), all(cpus == {cpu} for cpus in allowed.values()))
try:
    pin(100000)
except OSError:
    print("refused", os.sched_getaffinity(0) == {cpu})
"""


def test_pinning_moves_every_thread_of_the_process_and_a_refusal_changes_nothing() -> None:
    cpu = usable_cpus()[-1]
    out = subprocess.run([sys.executable, "-c", _PINNED, str(cpu)], capture_output=True,
                         text=True, check=True, timeout=30).stdout.split("\n")
    assert out[0] == "3 True"  # the main thread, one started before, one after
    assert out[1] == "refused True"
