"""Test shim (tests/clock_step.py): SIGUSR2 steps this process's wall clock (``time.time``)
by ``KCM_CLOCK_STEP`` seconds (default +5), as an NTP step or a resumed virtual machine
would; ``time.monotonic`` is left alone. Python imports it at start-up when this directory
is on the process's PYTHONPATH, before Twisted reads ``time.time``."""

import os
import signal
import time

_real_time = time.time
_offset = [0.0]
_step = float(os.environ.get("KCM_CLOCK_STEP", "5"))


def _time() -> float:
    return _real_time() + _offset[0]


def _jump(signum, frame) -> None:
    _offset[0] += _step


time.time = _time
signal.signal(signal.SIGUSR2, _jump)
