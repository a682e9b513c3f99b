"""Where kcm-gateway's workers run (``pin_workers``), and which of them a new connection is
best handed to: the one pinned to the CPU the connection's packets arrive on.

A gateway runs next to its applications, so a client thread and the worker serving it
share the machine's CPUs. When the client thread, the kernel's TCP work for the connection
and the worker all run on one CPU, a request and its answer hand the CPU from one to the
other; when they run on two, every request and every answer wakes the other CPU, which on
a VM whose idle vCPUs halt costs tens of microseconds each time. Linux reports the CPU
that last processed a socket's incoming packets (``SO_INCOMING_CPU``): for a client on the
same machine, the CPU its thread ran on; for one across a network, the CPU that takes the
network card's queue for that flow. With each worker pinned to a CPU of its own, the
supervisor hands a connection to the worker on that CPU (:mod:`kcm.gateway.acceptor`,
within :data:`kcm.gateway.balance.NEAR_SLACK` connections of the least loaded worker).

``pin_workers``:

* ``auto`` (the default): pinned when there is one worker per CPU this process may run on
  (``workers = 0``, or as many as there are), each to a CPU of its own; not pinned
  otherwise.
* ``always``: pinned, worker *i* to the *i*-th usable CPU (round robin when there are more
  workers than CPUs).
* ``never``: the kernel places the workers; connections go by count only.

Nothing is pinned when this process may use fewer than two CPUs. No I/O here but the
kernel calls named as such (:func:`usable_cpus`, :func:`incoming_cpu`, :func:`pin`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
from contextlib import suppress

__all__ = ["PIN_MODES", "incoming_cpu", "pin", "usable_cpus", "worker_cpus", "workers_by_cpu"]

#: The values of ``pin_workers``.
PIN_MODES = ("auto", "always", "never")
#: Linux's SO_INCOMING_CPU (socket.SO_INCOMING_CPU from Python 3.11 on Linux).
_SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)


def worker_cpus(count: int, mode: str, usable: Collection[int]) -> dict[int, int]:
    """The CPU each of ``count`` workers (indexes 1 to ``count``) is pinned to under
    ``pin_workers = mode``, given the CPUs this process may run on; empty when they are
    not pinned."""
    if mode not in PIN_MODES:
        raise ValueError(f"pin_workers must be one of {', '.join(PIN_MODES)}, not {mode!r}")
    cpus = sorted(usable)
    if mode == "never" or len(cpus) < 2 or (mode == "auto" and count != len(cpus)):
        return {}
    return {index: cpus[(index - 1) % len(cpus)] for index in range(1, count + 1)}


def workers_by_cpu(pinned: Mapping[int, int]) -> dict[int, frozenset[int]]:
    """The workers pinned to each CPU, from :func:`worker_cpus`'s answer."""
    by_cpu: dict[int, set[int]] = {}
    for index, cpu in pinned.items():
        by_cpu.setdefault(cpu, set()).add(index)
    return {cpu: frozenset(indexes) for cpu, indexes in by_cpu.items()}


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))  # pragma: no cover - Linux has sched_getaffinity


def incoming_cpu(connection: socket.socket) -> int | None:
    """The CPU that last processed ``connection``'s incoming packets, or None where the
    kernel does not say (not Linux, not yet known)."""
    try:
        cpu = connection.getsockopt(socket.SOL_SOCKET, _SO_INCOMING_CPU)
    except OSError:
        return None
    return cpu if cpu >= 0 else None


def pin(cpu: int) -> None:
    """Run this process on ``cpu`` only: each of its threads (a thread inherits its
    creator's CPUs, so those started later too). Raises OSError when the kernel refuses (the
    CPU is offline or not allowed here)."""
    if not hasattr(os, "sched_setaffinity"):  # pragma: no cover - Linux has it
        raise OSError("this platform cannot pin a process to a CPU")
    os.sched_setaffinity(0, {cpu})  # this thread first: a refusal changes nothing
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # pragma: no cover - no /proc: this thread only
        return
    for tid in threads:
        with suppress(ProcessLookupError):  # it ended meanwhile
            os.sched_setaffinity(tid, {cpu})
