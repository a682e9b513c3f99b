"""Real kcm processes whose wall clock a test steps (test support).

A process started inside :func:`wall_clock_shim` has ``tests/clock_shim`` first on its
PYTHONPATH: its ``sitecustomize`` makes SIGUSR2 (:func:`step_wall_clock`) move the process's
``time.time`` forward by :data:`STEP` seconds (two minutes), as an NTP step or a resumed
virtual machine would, and leaves ``time.monotonic`` alone. Processes started outside it are
untouched."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kcm.testing import processes

__all__ = ["SHIM", "STEP", "step_wall_clock", "wall_clock_shim"]

#: The directory of the shim's sitecustomize.py.
SHIM = Path(__file__).parent / "clock_shim"
#: Seconds each SIGUSR2 moves a shimmed process's wall clock by.
STEP = 120.0


@contextmanager
def wall_clock_shim(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Processes started (:mod:`kcm.testing.processes`) within have the shim."""
    original = processes.process_env

    def shimmed_env() -> dict[str, str]:
        env = original()
        env["PYTHONPATH"] = os.pathsep.join([str(SHIM), env["PYTHONPATH"]])
        env["KCM_CLOCK_STEP"] = str(STEP)
        return env

    monkeypatch.setattr(processes, "process_env", shimmed_env)
    try:
        yield
    finally:
        monkeypatch.setattr(processes, "process_env", original)


def step_wall_clock(process: subprocess.Popen | None) -> None:
    """Step the wall clock of ``process`` (started with the shim) by :data:`STEP` s."""
    assert process is not None
    os.kill(process.pid, signal.SIGUSR2)
