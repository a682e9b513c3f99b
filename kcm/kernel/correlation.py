"""Correlation ids: the short name of one request (or one background change) in answers,
audit records and the log, for both planes."""

from __future__ import annotations

import random

__all__ = ["new_correlation_id"]

_bits = random.getrandbits


def new_correlation_id() -> str:
    """A fresh id: 64 random bits as 16 lowercase hex digits (short ASCII, and unlikely to
    repeat across cores and gateways).

    It names a request; it guards nothing, so the bits come from Python's own generator
    (seeded from the operating system's, and seeded afresh in a forked child), not from a
    system call on every answer: nothing secret or unguessable is ever made from them."""
    return f"{_bits(64):016x}"
